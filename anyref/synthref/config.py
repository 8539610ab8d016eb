"""SynthRef's settings, validated once when made and never changed afterwards."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SynthRefConfig"]


@dataclass(frozen=True)
class SynthRefConfig:
    # square image side in pixels; object sizes and margins scale with it
    image_size: int = 128
    # world seed: changes every stream and split at once
    seed: int = 0
    # objects per query scene (tasks that need two shape kinds draw at least 2)
    min_objects: int = 2
    max_objects: int = 5
    # an object must keep at least this fraction of its silhouette visible, or it is not drawn
    min_visible_fraction: float = 0.5
    # chance that a further object copies the shape or colour of an earlier one (hard distractors)
    share_attribute_prob: float = 0.6
    # chance that a text / no-target prompt is relational ("the square left of the blue star") when one exists
    relational_prob: float = 0.35
    # box-centre offset, as a fraction of the image side, needed for "left of" / "above" / ... to hold
    relation_margin: float = 0.08
    # largest std of the Gaussian pixel noise on the 0-255 scale (0: none)
    pixel_noise: float = 8.0
    # box references: each side moves by up to this fraction of the box's width / height
    box_jitter: float = 0.08
    # mask groups: at most this many non-object candidate masks (background patches) among the candidates
    max_distractor_candidates: int = 2
    # how a no-target prompt is answered: "refusal" (NO_TARGET_ANSWER, no <obj>) or "nowhere" (the expression and
    # an <obj> whose target mask is empty, for models whose location map has a nowhere place: obj_nowhere)
    no_target_answer: str = "refusal"
    # the phrase a relational text (and "nowhere" no-target) answer names its object by: "as_asked" (the expression,
    # "the blue diamond below the small diamond <obj>.") or "landmark_first" (restated so that the object's own
    # description comes last, right before the <obj> whose state draws it: "below the small diamond is the blue
    # diamond <obj>."); the prompt is the same either way
    relational_answer: str = "as_asked"
    # how a mask-group sample is posed: "candidates" (task "select": the candidates in the prompt, the group in
    # ``selected``) or "obj" (task "segment": the same prompt answered "<obj>." with the union of the group as its
    # mask, empty for an empty group; for models that decide groups by an <obj>: AnyRefConfig.group_by_obj), or
    # "said" (as "obj", the rule first restated by what it selects: "everything the same colour as" a red object's
    # mask is answered "all other red objects <obj>."; for AnyRefConfig.group_obj_answer "generated")
    group_answer: str = "candidates"
    # how a "verify" sample is answered: "plain" ("yes." / "no.") or "caption" (the boxed object's caption first:
    # "the small red circle: no."), so that the judgement compares two texts rather than features with a text
    verify_answer: str = "caption"
    # audio references
    sample_rate: int = 16000
    audio_seconds: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.image_size, int) and self.image_size >= 48, "image_size must be an int >= 48"),
            (isinstance(self.seed, int) and self.seed >= 0, "seed must be an int >= 0"),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (2 <= self.max_objects <= 8, "max_objects must be in 2..8 (more do not fit a scene)"),
            (0.2 <= self.min_visible_fraction <= 1.0, "min_visible_fraction must be in [0.2, 1]"),
            (0.0 <= self.share_attribute_prob <= 1.0, "share_attribute_prob must be in [0, 1]"),
            (0.0 <= self.relational_prob <= 1.0, "relational_prob must be in [0, 1]"),
            (0.0 < self.relation_margin < 0.5, "relation_margin must be in (0, 0.5)"),
            (0.0 <= self.pixel_noise <= 64.0, "pixel_noise must be in [0, 64]"),
            (0.0 <= self.box_jitter <= 0.3, "box_jitter must be in [0, 0.3]"),
            (0 <= self.max_distractor_candidates <= 4, "max_distractor_candidates must be in 0..4"),
            (self.no_target_answer in ("refusal", "nowhere"), 'no_target_answer must be "refusal" or "nowhere"'),
            (self.relational_answer in ("as_asked", "landmark_first"),
             'relational_answer must be "as_asked" or "landmark_first"'),
            (self.group_answer in ("candidates", "obj", "said"), 'group_answer must be "candidates", "obj" or "said"'),
            (self.verify_answer in ("plain", "caption"), 'verify_answer must be "plain" or "caption"'),
            (self.sample_rate >= 8000, "sample_rate must be >= 8000 (the sounds reach 5.5 kHz)"),
            (0.5 <= self.audio_seconds <= 30.0, "audio_seconds must be in [0.5, 30]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SynthRefConfig: {message}; got {self!r}")
