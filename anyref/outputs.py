"""Typed results: what training and inference return."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["AnyRefOutput", "SegmentResult", "masks_and_scores", "Generation", "GroupResult", "NOWHERE", "REJECTED",
           "LITERAL_MARK", "escape_answer_markers", "mark_nowhere"]


@dataclass
class AnyRefOutput:
    """The training forward's result. loss = ce_weight * ce + bce_weight * bce + dice_weight * dice.

    mask_logits: per sample, K x H x W logits at the original image size (K = the sample's ``<obj>`` count).
    terms: further detached loss terms by name (e.g. the group head's BCE), for logs.
    hidden: B x L x H last-layer states; obj_rows: N, the sample of each ``<obj>`` (in order); obj_states: N x H,
    their refocused states; obj_locations: N x T, their location logits over the T image tokens (models with
    ``obj_location_prompt``, else None); sam_embeddings: B x C x g x g, SAM's image embeddings of the batch (the
    last four for auxiliary objectives of a trainer).
    """

    loss: torch.Tensor
    ce: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    n_masks: int
    mask_logits: list[torch.Tensor] = field(default_factory=list)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    obj_rows: torch.Tensor | None = None
    obj_states: torch.Tensor | None = None
    obj_locations: torch.Tensor | None = None
    sam_embeddings: torch.Tensor | None = None


@dataclass
class Generation:
    """One generated answer: token ids (eos excluded), the refocused ``<obj>`` states (K x H), the text, and the
    last-layer states of the image tokens of its prompt (T x H; kept only for models whose SAM prompt needs them,
    ``obj_location_prompt``). The text holds ``<obj>`` exactly where the answer has an ``<obj>`` token: one spelled
    out in ordinary text pieces (and a spelled <nowhere> or <rejected>) is written with LITERAL_MARK after its
    first character."""

    token_ids: list[int]
    obj_states: torch.Tensor
    text: str
    image_states: torch.Tensor | None = None


NOWHERE = "<nowhere>"
REJECTED = "<rejected>"
# written after the first character of an ``<obj>`` (or a ``<nowhere>``, ``<rejected>``) that the model spelled out
# as ordinary text: it shows the same, but only real ``<obj>`` tokens then read as one (mark_nowhere, counting masks
# by splitting the answer) and only the library's own markers as markers (SegmentResult.note)
LITERAL_MARK = "\u2060"  # WORD JOINER: invisible, no width


def escape_answer_markers(text: str, obj_token: str) -> str:
    """Plain answer text (no ``<obj>`` token in it) with each literal ``obj_token``, NOWHERE and REJECTED broken by
    LITERAL_MARK."""
    if len(obj_token) < 2:  # a mark after its only character would not break it
        raise ValueError(f"obj_token {obj_token!r} must be at least 2 characters long")
    for marker in (obj_token, NOWHERE, REJECTED):
        escaped = marker[:1] + LITERAL_MARK + marker[1:]
        while marker in text:  # a loop: one pass could leave a marker that overlaps the one it broke
            text = text.replace(marker, escaped)
    return text


def mark_nowhere(text: str, obj_token: str, placed: list[bool], mark: str = NOWHERE) -> str:
    """``text`` with each ``<obj>`` (``obj_token``) that ``placed`` marks False (one flag per ``<obj>``, in order)
    written as ``mark``: ``<nowhere>`` where the model emitted it but put it nowhere (``obj_nowhere``),
    ``<rejected>`` where the model's own check of the mask said no (``verify_answers``); either way, no mask."""
    pieces = text.split(obj_token)
    if len(pieces) - 1 != len(placed):
        raise ValueError(f"the answer has {len(pieces) - 1} {obj_token} but {len(placed)} placement flags")
    marks = [obj_token if p else mark for p in placed]
    return pieces[0] + "".join(shown + piece for shown, piece in zip(marks, pieces[1:]))


@dataclass
class SegmentResult:
    """The answer to ``AnyRef.segment``.

    masks: K x H x W bool at the image's own size, one per ``<obj>`` in the answer (K may be 0).
    scores: K float, the mean foreground probability inside each mask (0 for an empty mask).
    text: the answer, with ``<obj>`` where each mask was emitted (and ``<nowhere>`` where a model with
        ``obj_nowhere`` emitted an ``<obj>`` but placed it nowhere, ``<rejected>`` where ``verify_answers`` dropped
        its mask: no mask). An ``<obj>`` the model wrote as ordinary text carries LITERAL_MARK (see Generation).
    logits: K x H x W float32 mask logits (masks = logits > 0), for metrics that threshold probabilities.
    answer: the answer with its markers when ``text`` holds something else (``describe``'s caption); None when
        ``text`` is the answer.
    """

    masks: np.ndarray
    scores: np.ndarray
    text: str
    logits: np.ndarray | None = None
    answer: str | None = None

    @property
    def found(self) -> bool:
        """Whether the model answered with at least one mask."""
        return len(self.masks) > 0

    @property
    def note(self) -> str:
        if self.found:
            return f"{len(self.masks)} mask(s)"
        answer = self.text if self.answer is None else self.answer
        if NOWHERE in answer:
            return "no mask: the answer's <obj> was placed nowhere (the model found no such object)"
        if REJECTED in answer:
            return "no mask: the model's check of its own answer said it is not the described object"
        return "no mask: the answer contains no <obj> token (the model found no such object)"

    def __repr__(self) -> str:
        return f"SegmentResult(text={self.text!r}, {self.note}, size={self.masks.shape[1:] or None})"


def masks_and_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A SegmentResult's masks K x H x W (logits > 0) and scores K float32 from its logits K x H x W: the mean
    foreground probability inside each mask, 0 for an empty one."""
    masks = logits > 0
    area = masks.flatten(1).sum(1)
    return masks, ((logits.sigmoid() * masks).flatten(1).sum(1) / area.clamp_min(1)).float()


@dataclass
class GroupResult:
    """The answer to ``AnyRef.select``: the group of candidate masks the prompt refers to (maybe empty).

    masks: K x H x W bool, the selected candidates at the image's own size; scores: K membership probabilities;
    indices: K, their positions among the candidates; candidates: N x H x W bool, every candidate considered;
    candidate_scores: N membership probabilities (a candidate is selected when its probability exceeds the
    threshold ``select`` was given); source: "caller" or "sam" (SAM's automatic mask generator); text: the answer
    the group was decided by, for a model that writes one (``group_obj_answer="generated"``: "all red objects
    <obj>."), else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    candidates: np.ndarray
    candidate_scores: np.ndarray
    source: str = "caller"
    text: str | None = None

    @property
    def found(self) -> bool:
        """Whether the group has at least one member (False: a no-target answer)."""
        return len(self.indices) > 0

    @property
    def union(self) -> np.ndarray:
        """H x W bool: the union of the selected masks (all False for an empty group)."""
        return self.masks.any(0) if self.found else np.zeros(self.candidates.shape[1:], dtype=bool)

    def __repr__(self) -> str:
        return (f"GroupResult({len(self.indices)} of {len(self.candidates)} {self.source} candidates selected: "
                f"{self.indices.tolist()})")
