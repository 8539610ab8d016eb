"""AnyRef's configuration: validated once when built, never rewritten afterwards, saved as JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from anyref.mask_crf import MaskCRF
from encoders.imagebind_audio import ImageBindAudioConfig
from encoders.sam import SamConfig

__all__ = ["AnyRefConfig", "REFERENCE_KINDS", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_RESIZE_MODES = ("resize", "crop", "pad")
# how a group_by_obj model answers a group prompt: "<obj>" given, or its own generated answer
GROUP_OBJ_ANSWERS = ("given", "generated")
# how the location map reads the image (anyref.image_reread): once, or also after the answer, added or alone
IMAGE_REREADS = ("off", "added", "alone")
# "mask" covers both uses of mask tokens: MaskRef references and the candidates of mask-group selection
REFERENCE_KINDS = ("text", "box", "example", "audio", "mask")
MASK_FEATURE_SOURCES = ("vision", "position", "sam")  # plus "timm:NAME" entries


@dataclass(frozen=True)
class AnyRefConfig:
    """Everything needed to rebuild an AnyRef model (weights aside).

    llava: ``LlavaConfig.to_dict()`` of the LLM + vision tower.
    sam: sizes of the SAM (``SamConfig``).
    audio: sizes of the ImageBind audio encoder, or None for a model without audio references.
    vision_resize: how a query image becomes the vision tower's square input: "resize" (stretch, nothing lost),
        "crop" (shortest side then centre crop, LLaVA-v1 / LISA) or "pad" (pad to square, LLaVA-1.5).
    system_prompt: text before "USER:" (LLaVA-v1's long system prompt for real checkpoints; empty for tiny ones).
    image_wrap: put LISA's ``<im_start>``/``<im_end>`` around the image tokens.
    obj_token: text of the mask token (``[SEG]`` for converted LISA checkpoints).
    join_prompt_text: encode each run of prompt text between special ids with ONE tokenizer call, as LLaVA and
        LISA did ("\nCan you segment the dog in this image? ASSISTANT:" at once). Off, every template piece and
        text reference is encoded alone, which with LLaMA's sentencepiece adds a "▁" piece at each start; the
        tiny SynthRef models were trained that way, converted and real-weight models set it on.
    strip_special_whitespace: strip the whitespace at both ends of each run of text encoded between special ids,
        prompt and answer, as LISA's tokenizer (transformers 4.31, slow) did around its added tokens: LISA saw
        "USER:" <im_start> ... <im_end> "Can you ..." (no "▁" piece before <im_start>, the "\n" after <im_end>
        gone) and "Sure, it is" [SEG] "." (the answer's first word right after "ASSISTANT:"). Set by the LISA
        converter; off, text is encoded as written (LLaVA-1.5, the SynthRef models).
    image_token_merge: merge each k x k block of image tokens into one before the LLM (1: off, LLaVA's own
        layout). The tiny SynthRef model's LLM spends most of its time on its 256 image tokens; with k = 2 it reads
        64 (:class:`anyref.image_tokens.ImageTokenMerger`). References still pool the full patch grid.
    image_positions: add a learned 2-D position map to the image tokens the LLM reads and, RoIAligned with each
        box, to box references' tokens (:class:`anyref.image_tokens.ImageTokenPositions`; off: LLaVA's layout).
        On SynthRef it was learned but changed no target figure in one 2-hour run (docs/training-experiments.md).
    obj_location_prompt: give SAM, next to each ``<obj>``'s projection, a dense prompt: that ``<obj>``'s location
        map over the image tokens the LLM read (:class:`anyref.heads.ObjLocator`, embedded by SAM's prompt encoder as
        a mask input). Off: the paper (SAM's no-mask embedding). It opens a spatial path for the mask loss into the
        image tokens' states; the trainer's pointer loss, when on, supervises the same map. On in the shipped tiny
        SynthRef model: against the same preset without it, text cIoU 0.531 -> 0.599, box 0.500 -> 0.630 in one
        2-hour run (docs/training-experiments.md).
    obj_nowhere: the location map gets one more place, "nowhere" (:class:`anyref.heads.ObjLocator`); an ``<obj>``
        that puts more than half its map there is answered without a mask (``<nowhere>`` in the answer's text).
        Trained on ``<obj>`` whose target mask is empty (SynthRef's ``no_target_answer="nowhere"``). Needs
        ``obj_location_prompt``. Off: the paper (a no-target answer is text without ``<obj>``).
    image_reread: "off" (LLaVA's layout: the image once, before the question), or a sequence holds the image's
        tokens a second time, after the answer, so that they attend to the question and the answer, and the location
        map and the group head's cell map read, with "added", the first read's states plus a learned map of the
        second's (zero at the start), with "alone", the second read's states alone
        (:class:`anyref.image_reread.ImageReread`). Needs ``obj_location_prompt`` (what reads those states).
    region_pool: side of the RoIAlign / example pooling grid (4 -> 16 tokens per box or example).
    box_zoom: a box's tokens are read from the box's own crop, resampled to the vision tower's input size and
        encoded again (then pooled to region_pool x region_pool, as an example image is), instead of RoIAligned
        from the whole image's patch grid: a small object fills the tower's input rather than two or three of its
        patches. Off: the paper (RoIAlign). The crop says nothing of the box's size or place; region_geometry
        does.
    region_geometry: add to each box token and each mask token a code of the region's centre, width, height and
        area in the image (:class:`anyref.region_geometry.RegionGeometry`), which RoIAlign and mask pooling lose.
        Off: the paper and RAS. It starts at zero, so a finished model given it answers as before until it trains.
    refocus_lambda: weight of the attention-weighted answer states added to h_obj (paper: 0.1).
    refocus_learnable: make lambda a trained parameter (the paper found it unstable).
    refocus_answer_grad: scale of the gradient the mask loss sends into the answer tokens' states through
        refocusing (1.0: the paper; 0.0: detached). The forward value is unchanged; it only matters in training.
    ce_weight, bce_weight, dice_weight: loss weights (paper: 1.0, 2.0, 0.5).
    max_new_tokens: generation limit for answers.
    mask_features: the feature maps mask tokens pool, concatenated in this order ("vision" first and always;
        "position", "sam", "timm:NAME"; see :mod:`anyref.mask_tokens`).
    mask_position_grid, mask_position_channels: side and channels of the sinusoidal position map (RAS: 32 x 32).
    group_weight: weight of the group classifier's BCE in the training loss; group_pos_weight: its positive-class
        weight (RAS: 5.0).
    group_head_reads_token: the group classifier reads each candidate's own mask token next to its last-layer
        state (RAS reads the state alone). On the shipped tiny SynthRef model a linear probe finds a candidate's
        colour in 97% of its mask tokens but in 34% of its last-layer states: the LLM's output keeps what the
        prompt asks and loses what the candidate is (``python -m eval.group_probe``, docs/mask-groups.md).
    group_head_attends_prompt: the group classifier compares each candidate (its state and mask token) with the
        prompt's positions through an attention of its own (:class:`anyref.group_heads.PromptGroupHead`) instead
        of reading the candidate alone. RAS's head learned nothing in the tiny SynthRef runs: a candidate slot's
        state there hardly depends on the prompt (docs/mask-groups.md).
    group_head_reads_geometry: the prompt-attending group classifier also reads each candidate's place and size
        against the prompt's reference mask (``PromptGroupHead(geometry=True)``): the positional rules ("everything
        left of" a mask), which the head without it did not learn on the tiny SynthRef model. Needs
        ``group_head_attends_prompt``.
    group_head_maps_image: the group is a map over the image tokens the LLM read, queried by the last prompt
        position's state (:class:`anyref.group_heads.GroupMapHead`); each candidate scores its cells' mean, and the
        map is also trained per cell against the group's cover (weighted ``group_weight`` like the candidates' BCE).
        Needs "vision" among the mask features (always there), whose pooling weights give each candidate's cells.
        In a tiny SynthRef run stopped at step 8,000 it had not learned groups either (docs/mask-groups.md).
    group_by_obj: ``select`` decides the group by an ``<obj>`` instead of the group head: the prompt is asked as
        in ``segment`` with the answer "<obj>" given (one teacher-forced LLM forward, no candidates in the prompt),
        and a candidate's score is the mean mask probability of that ``<obj>``'s mask over the candidate's pixels;
        an ``<obj>`` placed nowhere selects nothing. Trained on SynthRef's ``group_answer="obj"``. Needs
        ``obj_nowhere`` (an empty group is an ``<obj>`` placed nowhere). Off: RAS's candidate classifier. As a
        2,500-step third stage of the shipped SynthRef model: empty groups answered 9% -> 42%, attribute groups
        ("all circles") mostly right, groups by a mask reference not; group cIoU unchanged (docs/mask-groups.md).
    group_obj_answer: how ``group_by_obj`` answers: "given" (the answer "<obj>" teacher-forced, as above) or
        "generated" (the model writes its answer, e.g. "all other red objects <obj>." for "everything the same colour as"
        a mask, and its first ``<obj>``'s mask decides the group; ``GroupResult.text`` keeps the answer). Trained on
        SynthRef's ``group_answer="said"``, which restates each rule by the attribute it selects, so that a rule
        that points at a mask becomes one that names an attribute before the ``<obj>`` is placed.
    mask_token_norm: if > 0, every mask token (candidates and ``MaskRef``) is rescaled to this L2 norm (off: 0).
        The tiny SynthRef model's mask tokens are 150-350x the norm of its text embeddings, and a candidate slot's
        last-layer state is nearly the same whatever the prompt; rescaling them to 1.0 (a 1,000-step continuation,
        docs/mask-groups.md) did not change that, so it is an option to measure with, not a fix.
    mask_refinements: at inference, how many more times SAM's mask decoder draws each ``<obj>``'s mask, each time
        with the previous mask's own coverage of the image-token grid as its location map (the map a perfect
        locator would give for that mask) instead of the ``<obj>``'s map; 0: one pass, the training forward's.
        Needs obj_location_prompt and the "resize" vision mode (where the grid covers the whole image).
    mask_crf: at inference, each mask's edges are snapped to the image's own by a local dense CRF over its logits
        (anyref/mask_crf.py): a dict of ``MaskCRF``'s settings (iterations, radius, position_sigma, colour_sigma,
        weight; missing ones take MaskCRF's defaults), or None: off. Applied last, to every ``<obj>`` mask at the
        image's size, after the answer checks (which judge the decoder's own masks). Nothing is trained. It assumes an object's pixels are
        alike in colour near its edge, which SynthRef's flat-coloured shapes are to an extreme: on the tiny SynthRef
        model it lifts text cIoU 0.587 -> 0.645 and box -> mask 0.864 -> 0.966 (test split;
        docs/training-experiments.md, "A local dense CRF"). About 20 ms a mask on 2 CPU cores at 128 px.
    describe_box_prior: in ``describe``, a prompt that quotes exactly one ``Box`` asks about that box's region, so
        the answer's first ``<obj>`` (the region itself) is drawn with the box's coverage of the image-token grid
        as SAM's dense prompt in place of the ``<obj>``'s own location map (its projection stays SAM's sparse
        prompt; whether it is placed nowhere is still the map's call). Off: the paper (the ``<obj>`` alone says
        where). Inference only; needs what mask_refinements needs. On the tiny SynthRef model it lifts box -> mask
        cIoU from 0.64 to 0.82 (docs/training-experiments.md).
    describe_box_margin: in ``describe``, with exactly one ``Box`` in the prompt, the answer's first ``<obj>`` mask
        is kept within the box grown on every side by this fraction of its width or height (the region a caption
        is about lies in its box, up to how loosely the box was drawn); its logits outside are capped at
        ``anyref.api.CLIPPED_LOGIT``. None: not clipped. Inference only.
    example_self_mask: an ``ExampleImage`` given without a mask is first segmented by the model itself on its own
        image (the example as its own reference: "find similar object of <example> in this image"), and the union
        of that answer's masks becomes the example's mask, so the example is read from its object's crop as an
        example with a mask is; an answer without a mask leaves it as given. Inference only; one more answer per
        such example. On the tiny SynthRef model it lifts example cIoU 0.66 -> 0.71 (docs/training-experiments.md).
    group_threshold: ``select`` keeps the candidates whose membership probability exceeds this (unless the call
        gives its own ``threshold``). The RAS head is trained with its positives weighted ``group_pos_weight`` w,
        which lifts its probabilities: a true probability of 0.5 reads as w / (w + 1). Inference only; 0.5 by
        default.
    group_empty_threshold: ``select`` answers with an empty group unless some candidate's membership probability
        exceeds this; when one does, the group is the candidates over ``group_threshold``
        (:func:`anyref.group_heads.group_members`). None: ``group_threshold`` decides both. Inference only. The
        shipped tiny SynthRef model takes 0.85 and a ``group_threshold`` of 0.7, chosen on the val split
        (docs/mask-groups.md).
    verify_answers: each mask answered to a prompt of text alone is checked by asking the model whether the mask's
        bounding box is what the text describes ("Is <box> {text} in this image?", task "verify", scored by the
        log-likelihoods of the answers "yes." and "no." - ``AnyRef.verify``); a mask whose probability of "yes" is
        below this threshold is dropped and its ``<obj>`` written ``<rejected>``. None: off. Inference only; one
        more forward pass per mask; for models trained on "verify" samples.
    check_by_group_head: each mask answered to a prompt of text alone is checked by the group head: the same text
        is asked as a ``select`` prompt with that mask as its one candidate, and a mask whose membership
        probability is below this threshold is dropped and its ``<obj>`` written ``<rejected>``. A text that
        describes one object is a group of at most one, so a group head fitted on such prompts (SynthRef task
        "text_select", ``anyref fit-group-head --text-samples N``) can tell the described object from a wrong one,
        or from one that is not there. With ``text_check_head`` the model's text check head answers instead of
        its group head. None: off. Inference only; one more forward pass per image (its masks in one batch); needs
        candidate selection (not group_by_obj). The shipped tiny SynthRef model checked with its text check head at
        0.85, chosen on the val split (docs/mask-groups.md, "The check head fitted on the model's own answers"),
        until it ranked its text answers instead (``rank_text_answers``); the check is off, its head still there.
    text_check_head: the model holds a second head of its group head's kind (``AnyRefModel.text_check_head``),
        fitted alone (``anyref fit-group-head --check-head``: on "text_select" samples, or on the model's own
        answers to text and no-target prompts, as the shipped one is), which
        ``check_by_group_head`` reads instead of the group head: the group head stays fitted on groups alone, and
        each head learns one question. Its weights are part of the model's.
    text_rank_head: the model holds a :class:`anyref.group_heads.RelationGroupHead` (``AnyRefModel.text_rank_head``)
        that ``rank_text_answers`` reads, fitted alone (``anyref fit-group-head --rank-head``). Its weights are part
        of the model's.
    text_rank_head_reads_pixels: the text rank head also reads each candidate's own pixels
        (:func:`anyref.candidate_crops.candidate_crops`, a small CNN in the head; ``anyref fit-group-head --rank-head
        --reads-pixels``). Needs ``text_rank_head``.
    rank_text_answers: the answer to a prompt of text alone whose answer has one ``<obj>`` is chosen again among
        candidates the model draws from that ``<obj>``'s location map, one at each of its peaks
        (``AnyRefModel.location_peak_masks``): the text is asked as a ``select`` prompt over them, the text rank
        head scores them, and the answer is the best one when its probability exceeds this threshold, else no mask
        (the ``<obj>`` written ``<rejected>``). The map often peaks on the right object where the ``<obj>``'s own
        mask is a lookalike, and the head compares the candidates with each other ("left of the blue star"). None:
        off. Inference only; needs ``obj_location_prompt`` and ``text_rank_head``; one decoder call for the peaks
        and one more forward pass per such prompt. Runs before ``check_by_group_head``, which then checks the
        chosen mask. The shipped tiny SynthRef model ranked at 0.9, with its check off (docs/training-experiments.md,
        "Text answers ranked among their location map's peaks"); with its answer verifier on, at 0.54.
    location_peaks, location_peak_spacing: how many candidates ``rank_text_answers`` draws from a location map (at
        most; its highest cells) and how many cells apart their peaks lie at least (``AnyRefModel.location_peak_masks``).
        A text rank head is fitted on the candidates of its model's setting (``AnyRef.location_candidates``). The
        defaults, 6 peaks 2 cells apart, suit SynthRef: a scene holds 2-6 objects, and 2 cells of the tiny model's
        8 x 8 map are about one object apart.
    rank_redraw_window: the candidate ``rank_text_answers`` chose is drawn again at its peak with the location map
        kept within this many cells of it (a (2 w + 1)^2 window; the candidates' own is 3 x 3, w = 1), and the
        redraw is the answer when it keeps at least 90% of the candidate's pixels
        (:data:`anyref.candidates.REDRAW_COVER`). Why: an object larger than 3 x 3 cells comes out of its window cut
        by a straight edge, while the ranking stays on the candidates its head was fitted on. None: off; an int >= 2.
        One more decoder call for all of a call's ranked prompts. The shipped tiny SynthRef model redraws at 2
        (docs/training-experiments.md, "A ranked text answer drawn again with a wider window").
    answer_verifier: the model holds an :class:`anyref.answer_verifier.AnswerVerifier`
        (``AnyRefModel.answer_verifier``), a small network that reads a mask's own pixels and the prompt's words,
        fitted alone (``anyref fit-verifier``). Its weights are part of the model's.
    verify_by_pixels: each mask answered to a prompt of text alone is checked by the answer verifier, and a mask
        whose probability is below this threshold is dropped and its ``<obj>`` written ``<rejected>``. It catches
        the lookalikes one attribute away that the LLM answers with full confidence ("the small star": the large
        star). None: off. Inference only; needs ``answer_verifier``; one small forward pass per image (its masks in
        one batch). Runs after ``rank_text_answers``, the model's own checks and ``mask_crf``: it reads the masks as
        answered. The shipped tiny SynthRef model checks at 0.02, its rank threshold 0.54, the pair chosen on the val
        split (docs/training-experiments.md, "An answer verifier that reads the mask's pixels").
    untrained_references: reference kinds whose encoders were never trained (e.g. after a LISA conversion);
        the model refuses them unless the caller insists.
    """

    llava: dict
    sam: SamConfig = SamConfig()
    audio: ImageBindAudioConfig | None = None
    vision_resize: str = "resize"
    vision_mean: tuple[float, float, float] = CLIP_MEAN
    vision_std: tuple[float, float, float] = CLIP_STD
    system_prompt: str = ""
    image_wrap: bool = False
    obj_token: str = "<obj>"
    join_prompt_text: bool = False
    strip_special_whitespace: bool = False
    image_token_merge: int = 1
    image_positions: bool = False
    obj_location_prompt: bool = False
    obj_nowhere: bool = False
    image_reread: str = "off"
    region_pool: int = 4
    box_zoom: bool = False
    region_geometry: bool = False
    refocus_lambda: float = 0.1
    refocus_learnable: bool = False
    refocus_answer_grad: float = 1.0
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    max_new_tokens: int = 32
    mask_features: tuple[str, ...] = ("vision", "position")
    mask_position_grid: int = 32
    mask_position_channels: int = 32
    group_weight: float = 1.0
    group_pos_weight: float = 5.0
    group_head_reads_token: bool = False
    group_head_attends_prompt: bool = False
    group_head_reads_geometry: bool = False
    group_head_maps_image: bool = False
    group_by_obj: bool = False
    group_obj_answer: str = "given"
    mask_token_norm: float = 0.0
    mask_refinements: int = 0
    mask_crf: dict | None = None
    describe_box_prior: bool = False
    describe_box_margin: float | None = None
    example_self_mask: bool = False
    group_threshold: float = 0.5
    group_empty_threshold: float | None = None
    verify_answers: float | None = None
    check_by_group_head: float | None = None
    text_check_head: bool = False
    text_rank_head: bool = False
    text_rank_head_reads_pixels: bool = False
    rank_text_answers: float | None = None
    location_peaks: int = 6
    location_peak_spacing: int = 2
    rank_redraw_window: int | None = None
    answer_verifier: bool = False
    verify_by_pixels: float | None = None
    untrained_references: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.vision_resize not in VISION_RESIZE_MODES:
            raise ValueError(f"vision_resize must be one of {VISION_RESIZE_MODES}, got {self.vision_resize!r}")
        if self.image_token_merge < 1:
            raise ValueError(f"image_token_merge must be >= 1 (1: off), got {self.image_token_merge}")
        if self.region_pool < 1:
            raise ValueError(f"region_pool must be >= 1, got {self.region_pool}")
        if self.obj_nowhere and not self.obj_location_prompt:
            raise ValueError("obj_nowhere adds a place to the location map: it needs obj_location_prompt")
        if self.image_reread not in IMAGE_REREADS:
            raise ValueError(f"image_reread must be one of {IMAGE_REREADS}, got {self.image_reread!r}")
        if self.image_reread != "off" and not self.obj_location_prompt:
            raise ValueError("image_reread gives the location map query-aware image states: it needs "
                             "obj_location_prompt")
        if self.group_by_obj and not self.obj_nowhere:
            raise ValueError("group_by_obj answers an empty group with an <obj> placed nowhere: it needs obj_nowhere")
        if self.group_obj_answer not in GROUP_OBJ_ANSWERS:
            raise ValueError(f"group_obj_answer must be one of {GROUP_OBJ_ANSWERS}, got {self.group_obj_answer!r}")
        if self.group_obj_answer != "given" and not self.group_by_obj:
            raise ValueError("group_obj_answer says how group_by_obj answers a group: it needs group_by_obj")
        if self.mask_refinements < 0:
            raise ValueError(f"mask_refinements must be >= 0 (0: off), got {self.mask_refinements}")
        if self.mask_crf is not None:
            if not isinstance(self.mask_crf, dict):
                raise ValueError(f"mask_crf must be None (off) or a dict of MaskCRF settings, got {self.mask_crf!r}")
            MaskCRF.from_dict(self.mask_crf)  # its own checks say what is wrong
        # settings that give SAM a region's coverage of the image-token grid as its location map
        coverage = [name for name in ("mask_refinements", "describe_box_prior") if getattr(self, name)]
        if coverage and not (self.obj_location_prompt and self.vision_resize == "resize"):
            raise ValueError(f"{coverage[0]} draws masks from a region's coverage of the image-token grid: it needs "
                             'obj_location_prompt and vision_resize "resize" (where the grid covers the whole image)')
        if self.describe_box_margin is not None and not 0.0 <= self.describe_box_margin <= 1.0:
            raise ValueError(f"describe_box_margin must be None (off) or a fraction of the box's sides in [0, 1], "
                             f"got {self.describe_box_margin}")
        if not 0.0 < self.group_threshold < 1.0:
            raise ValueError(f"group_threshold must be a probability in (0, 1), got {self.group_threshold}")
        if self.group_empty_threshold is not None and not 0.0 < self.group_empty_threshold < 1.0:
            raise ValueError(f"group_empty_threshold must be None (group_threshold decides) or a probability in "
                             f"(0, 1), got {self.group_empty_threshold}")
        if self.verify_answers is not None and not 0.0 < self.verify_answers < 1.0:
            raise ValueError(f"verify_answers must be None (off) or a probability threshold in (0, 1), "
                             f"got {self.verify_answers}")
        if self.check_by_group_head is not None and not 0.0 < self.check_by_group_head < 1.0:
            raise ValueError(f"check_by_group_head must be None (off) or a probability threshold in (0, 1), "
                             f"got {self.check_by_group_head}")
        if self.check_by_group_head is not None and self.group_by_obj:
            raise ValueError("check_by_group_head asks the group head about a candidate mask: it needs candidate "
                             "selection, not group_by_obj")
        if self.text_rank_head_reads_pixels and not self.text_rank_head:
            raise ValueError("text_rank_head_reads_pixels is a kind of text rank head: it needs text_rank_head")
        if self.rank_text_answers is not None:
            if not 0.0 < self.rank_text_answers < 1.0:
                raise ValueError(f"rank_text_answers must be None (off) or a probability threshold in (0, 1), "
                                 f"got {self.rank_text_answers}")
            if not (self.text_rank_head and self.obj_location_prompt):
                raise ValueError("rank_text_answers draws candidates at the peaks of an <obj>'s location map and "
                                 "scores them with the text rank head: it needs obj_location_prompt and "
                                 "text_rank_head (fit one with `anyref fit-group-head --rank-head`)")
        if self.location_peaks < 1 or self.location_peak_spacing < 1:
            raise ValueError(f"location_peaks and location_peak_spacing must be at least 1, got "
                             f"{self.location_peaks} and {self.location_peak_spacing}")
        if self.rank_redraw_window is not None and not (
                isinstance(self.rank_redraw_window, int) and self.rank_redraw_window >= 2):
            raise ValueError(f"rank_redraw_window must be None (off) or an int >= 2 (cells around the chosen peak; the "
                             f"candidates' own window is 1), got {self.rank_redraw_window!r}")
        if self.verify_by_pixels is not None:
            if not 0.0 < self.verify_by_pixels < 1.0:
                raise ValueError(f"verify_by_pixels must be None (off) or a probability threshold in (0, 1), "
                                 f"got {self.verify_by_pixels}")
            if not self.answer_verifier:
                raise ValueError("verify_by_pixels asks the answer verifier: it needs answer_verifier (fit one with "
                                 "`anyref fit-verifier`)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.mask_features or self.mask_features[0] != "vision":
            raise ValueError(f"mask_features must start with 'vision', got {self.mask_features}")
        odd = [m for m in self.mask_features if m not in MASK_FEATURE_SOURCES and not m.startswith("timm:")]
        if odd or len(set(self.mask_features)) != len(self.mask_features):
            raise ValueError(f"mask_features must be distinct entries of {MASK_FEATURE_SOURCES} or 'timm:NAME', "
                             f"got {self.mask_features}")
        if self.mask_position_grid < 1 or self.mask_position_channels < 4 or self.mask_position_channels % 4:
            raise ValueError("mask_position_grid must be >= 1 and mask_position_channels a multiple of 4")
        if self.group_head_attends_prompt and self.group_head_reads_token:
            raise ValueError("group_head_attends_prompt already reads each candidate's mask token: leave "
                             "group_head_reads_token off")
        if self.group_head_reads_geometry and not self.group_head_attends_prompt:
            raise ValueError("group_head_reads_geometry adds to the prompt-attending group head: it needs "
                             "group_head_attends_prompt")
        if self.group_head_maps_image and (self.group_head_attends_prompt or self.group_head_reads_token):
            raise ValueError("group_head_maps_image is a group head of its own: leave group_head_attends_prompt and "
                             "group_head_reads_token off")
        if self.mask_token_norm < 0:
            raise ValueError(f"mask_token_norm must be >= 0 (0: off), got {self.mask_token_norm}")
        if not 0.0 <= self.refocus_answer_grad <= 1.0:
            raise ValueError(f"refocus_answer_grad must be in [0, 1], got {self.refocus_answer_grad}")
        for name in ("ce_weight", "bce_weight", "dice_weight", "group_weight", "group_pos_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = set(self.untrained_references) - set(REFERENCE_KINDS)
        if unknown:
            raise ValueError(f"untrained_references has unknown kinds {sorted(unknown)}; known: {REFERENCE_KINDS}")
        if not isinstance(self.llava, dict) or "text_config" not in self.llava or "vision_config" not in self.llava:
            raise ValueError("llava must be a LlavaConfig.to_dict() with text_config and vision_config")

    @property
    def crf(self) -> MaskCRF | None:
        """``mask_crf`` as a MaskCRF (its defaults filled in), or None when it is off."""
        return None if self.mask_crf is None else MaskCRF.from_dict(self.mask_crf)

    @property
    def region_tokens(self) -> int:
        """Tokens per box or example-image reference (4 x 4 = 16 in the paper)."""
        return self.region_pool * self.region_pool

    @property
    def audio_tokens(self) -> int:
        """Tokens per audio reference: one per ImageBind clip (3)."""
        return 3

    def replace(self, **changes) -> "AnyRefConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["sam"] = self.sam.to_dict()
        data["audio"] = None if self.audio is None else dataclasses.asdict(self.audio)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AnyRefConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}; was it written by a newer AnyRef?")
        data["sam"] = SamConfig.from_dict(data["sam"])
        if data.get("audio") is not None:
            data["audio"] = ImageBindAudioConfig(**data["audio"])
        for name in ("vision_mean", "vision_std", "untrained_references", "mask_features"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)
