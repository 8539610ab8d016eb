"""From samples to model inputs: ``prepare`` one sample (CPU work a DataLoader worker can do), ``collate`` many.

Training, evaluation and ``AnyRef.segment`` all go through these two functions, so a model sees the same inputs
whichever way it is called.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from anyref.candidates import check_candidates
from anyref.config import AnyRefConfig
from anyref.images import VisionTransform, load_image, load_mask, vision_input
from anyref.mask_tokens import pooling_weights
from anyref.prompts import IGNORE_INDEX, PromptBuilder, reference_kind
from anyref.references import Audio, Box, ExampleImage, MaskRef
from anyref.samples import ReferringSample
from encoders.audio import audio_clips, read_audio
from encoders.sam import sam_preprocess

__all__ = ["PreparedSample", "Batch", "prepare", "collate", "example_crop"]


@dataclass
class PreparedSample:
    """One sample as tensors. Shapes: S = vision input side, Ss = SAM input side, H x W = original image.

    input_ids, labels: L long. clip_pixels: 3 x S x S. sam_pixels: 3 x Ss x Ss; sam_size: resized (h, w) inside it.
    references: (kind, value) in prompt order - box: 4 (x0, y0, x1, y1 in vision-input pixels), example:
    3 x S x S, audio: 3 x 1 x 128 x 204, mask: {source: g x g pooling weights}. masks: K x H x W bool targets.
    candidates: N x H x W bool (task "select"); candidate_weights: {source: N x g x g}; selected: N bool;
    candidate_slots: the answer positions of the candidates. mask_grids: {source: g}, the grid of every mask-token
    source (for empty batches). extra_pixels: {timm source: 3 x s x s} inputs of further mask-token encoders.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    answer_start: int
    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    sam_size: tuple[int, int]
    image_size: tuple[int, int]
    references: list[tuple[str, torch.Tensor]]
    masks: torch.Tensor
    task: str = "segment"
    candidates: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    candidate_weights: dict[str, torch.Tensor] | None = None
    candidate_slots: list[int] = field(default_factory=list)
    mask_grids: dict[str, int] = field(default_factory=dict)
    extra_pixels: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """B prepared samples, padded to one length L.

    input_ids, labels, attention_mask: B x L. answer_starts: B (index in the padded row). clip_pixels:
    B x 3 x S x S. sam_pixels: B x 3 x Ss x Ss. boxes: Nb x 5 (sample index, x0, y0, x1, y1). examples:
    Ne x 3 x S x S. audio: Na x 3 x 1 x 128 x 204. Mask tokens (MaskRef references, then candidates, sample by
    sample): mask_weights {source: M x g x g}, mask_owners M (sample index). reference_order: per sample,
    (kind, index into that kind's tensor) in prompt order. masks: per sample K x H x W. candidate_spans: per sample
    (first mask token, count) of its candidates; candidate_slots: B x L bool, the answer positions classified;
    selected: per sample N bool targets (or None). extra_pixels: {timm source: B x 3 x s x s}.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    answer_starts: torch.Tensor
    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    sam_sizes: list[tuple[int, int]]
    image_sizes: list[tuple[int, int]]
    boxes: torch.Tensor
    examples: torch.Tensor
    audio: torch.Tensor
    mask_weights: dict[str, torch.Tensor]
    mask_owners: torch.Tensor
    reference_order: list[list[tuple[str, int]]]
    masks: list[torch.Tensor]
    candidate_spans: list[tuple[int, int]]
    candidate_slots: torch.Tensor
    tasks: list[str] = field(default_factory=list)
    candidates: list[torch.Tensor | None] = field(default_factory=list)
    selected: list[torch.Tensor | None] = field(default_factory=list)
    extra_pixels: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """The batch on ``device``; float tensors (pixels, audio) cast to ``dtype`` when given."""
        def move(t):
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)
        changes = {k: move(getattr(self, k)) for k in
                   ("input_ids", "labels", "attention_mask", "answer_starts", "clip_pixels", "sam_pixels",
                    "examples", "audio", "mask_owners", "candidate_slots")}
        changes["boxes"] = self.boxes.to(device)  # pixel coordinates: bfloat16 would round 223.9 to 224
        changes["masks"] = [m.to(device) for m in self.masks]
        changes["mask_weights"] = {k: move(v) for k, v in self.mask_weights.items()}
        changes["extra_pixels"] = {k: move(v) for k, v in self.extra_pixels.items()}
        changes["selected"] = [move(s) for s in self.selected]
        return Batch(**{**self.__dict__, **changes})


def example_crop(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """An example image as the vision tower sees it: with a mask, cropped to the mask's box, background black."""
    if mask is None:
        return image
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return (image * mask[:, :, None])[y0:y1, x0:x1]


def mask_frames(builder: PromptBuilder, image_size: tuple[int, int], transform: VisionTransform,
                sam_size: tuple[int, int]) -> dict[str, tuple]:
    """How an image of ``image_size`` was carried into each mask-token source's input: source -> (scale, offset,
    input side, grid side), as :func:`anyref.mask_tokens.pooling_weights` takes it."""
    height, width = image_size
    frames = {}
    for name, source in builder.mask_sources.items():
        if name in ("vision", "position"):
            scale, offset = (transform.scale_x, transform.scale_y), (transform.offset_x, transform.offset_y)
        elif name == "sam":  # resized longest side, padded right and bottom
            scale, offset = (sam_size[1] / width, sam_size[0] / height), (0.0, 0.0)
        else:  # timm encoders see the whole image stretched to their square
            scale, offset = (source.side / width, source.side / height), (0.0, 0.0)
        frames[name] = (scale, offset, source.side, source.grid)
    return frames


def _reference_tensor(ref, image_size: tuple[int, int], transform, config: AnyRefConfig, vision_side: int,
                      frames: dict):
    kind = reference_kind(ref)
    height, width = image_size
    if isinstance(ref, Box):
        return kind, torch.tensor(transform.box(ref.clipped(width, height).as_tuple()), dtype=torch.float32)
    if isinstance(ref, ExampleImage):
        example = load_image(ref.image)
        mask = None if ref.mask is None else load_mask(ref.mask, *example.shape[:2], what="example mask")
        pixels, _ = vision_input(example_crop(example, mask), vision_side, config.vision_resize,
                                 config.vision_mean, config.vision_std)
        return kind, pixels
    if isinstance(ref, Audio):
        if isinstance(ref.source, (str, os.PathLike)):
            waveform, rate = read_audio(ref.source)
        else:
            waveform, rate = ref.source, ref.sample_rate
        return kind, audio_clips(waveform, rate)
    if isinstance(ref, MaskRef):
        return kind, pooling_weights(load_mask(ref.mask, height, width, what="reference mask"), frames)
    raise TypeError(f"unsupported reference {type(ref).__name__}")


def _candidate_weights(candidates: np.ndarray, frames: dict) -> dict[str, torch.Tensor]:
    """{source: N x g x g} pooling weights of N x H x W bool candidate masks; refuses empty ones."""
    per_mask = [pooling_weights(m, frames) for m in check_candidates(candidates, *candidates.shape[1:])]
    return {name: torch.stack([w[name] for w in per_mask]) for name in frames}


def prepare(sample: ReferringSample, builder: PromptBuilder, with_answer: bool = True) -> PreparedSample:
    """Tensors for one sample. ``with_answer=False`` gives a prompt to generate from (no answer tokens)."""
    config = builder.config
    vision_side = config.llava["vision_config"]["image_size"]
    image = sample.image
    pixels, transform = vision_input(image, vision_side, config.vision_resize, config.vision_mean, config.vision_std)
    sam_pixels, sam_size = sam_preprocess(image, config.sam.image_size)
    candidates = 0 if sample.candidates is None else len(sample.candidates)
    encoded = builder.encode(sample.task, sample.references, sample.answer if with_answer else None, candidates)
    size = (image.shape[0], image.shape[1])
    frames = mask_frames(builder, size, transform, sam_size)
    references = [_reference_tensor(r, size, transform, config, vision_side, frames) for r in encoded.references]
    has_masks = candidates > 0 or any(kind == "mask" for kind, _ in references)
    extra_pixels = {name: source.preprocess(image) for name, source in builder.mask_sources.items()
                    if source.preprocess is not None and has_masks}
    return PreparedSample(
        input_ids=torch.tensor(encoded.input_ids, dtype=torch.long),
        labels=torch.tensor(encoded.labels, dtype=torch.long),
        answer_start=encoded.answer_start,
        clip_pixels=pixels,
        sam_pixels=sam_pixels,
        sam_size=sam_size,
        image_size=size,
        references=references,
        masks=torch.from_numpy(np.ascontiguousarray(sample.masks)),
        task=sample.task,
        candidates=None if sample.candidates is None else torch.from_numpy(sample.candidates),
        selected=None if sample.selected is None else torch.from_numpy(sample.selected),
        candidate_weights=None if not candidates else _candidate_weights(sample.candidates, frames),
        candidate_slots=encoded.candidate_slots,
        mask_grids={name: source.grid for name, source in builder.mask_sources.items()},
        extra_pixels=extra_pixels,
    )


def collate(samples: list[PreparedSample], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad and stack. Training pads on the right; batched generation on the left (so every row ends together)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(samples), length), dtype=torch.long)
    answer_starts = torch.zeros(len(samples), dtype=torch.long)
    slots = torch.zeros((len(samples), length), dtype=torch.bool)
    grids = samples[0].mask_grids
    boxes, examples, audio, order, spans = [], [], [], [], []
    mask_weights: dict[str, list[torch.Tensor]] = {name: [] for name in grids}
    owners: list[int] = []

    def add_masks(weights: dict[str, torch.Tensor], row: int) -> int:
        """Append mask tokens ({source: M x g x g}) of sample ``row``; returns the index of the first."""
        first = len(owners)
        for name in grids:
            mask_weights[name].append(weights[name])
        owners.extend([row] * len(weights[next(iter(grids))]))
        return first

    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        start = length - n if padding_side == "left" else 0
        input_ids[row, start:start + n] = sample.input_ids
        labels[row, start:start + n] = sample.labels
        attention[row, start:start + n] = 1
        answer_starts[row] = start + sample.answer_start
        slots[row, [start + p for p in sample.candidate_slots]] = True
        sample_order = []
        for kind, tensor in sample.references:
            if kind == "box":
                sample_order.append((kind, len(boxes)))
                boxes.append(torch.cat([torch.tensor([float(row)]), tensor]))
            elif kind == "example":
                sample_order.append((kind, len(examples)))
                examples.append(tensor)
            elif kind == "audio":
                sample_order.append((kind, len(audio)))
                audio.append(tensor)
            else:
                sample_order.append((kind, add_masks({k: v[None] for k, v in tensor.items()}, row)))
        order.append(sample_order)
        count = 0 if sample.candidate_weights is None else len(sample.candidates)
        spans.append((add_masks(sample.candidate_weights, row) if count else len(owners), count))
    side = samples[0].clip_pixels.shape[-1]
    extra = {name: torch.stack([s.extra_pixels[name] if name in s.extra_pixels else torch.zeros_like(pixels)
                                for s in samples])
             for name, pixels in next((s.extra_pixels for s in samples if s.extra_pixels), {}).items()}
    return Batch(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention,
        answer_starts=answer_starts,
        clip_pixels=torch.stack([s.clip_pixels for s in samples]),
        sam_pixels=torch.stack([s.sam_pixels for s in samples]),
        sam_sizes=[s.sam_size for s in samples],
        image_sizes=[s.image_size for s in samples],
        boxes=torch.stack(boxes) if boxes else torch.zeros((0, 5)),
        examples=torch.stack(examples) if examples else torch.zeros((0, 3, side, side)),
        audio=torch.stack(audio) if audio else torch.zeros((0, 3, 1, 128, 204)),
        mask_weights={name: torch.cat(parts) if parts else torch.zeros((0, grids[name], grids[name]))
                      for name, parts in mask_weights.items()},
        mask_owners=torch.tensor(owners, dtype=torch.long),
        reference_order=order,
        masks=[s.masks for s in samples],
        candidate_spans=spans,
        candidate_slots=slots,
        tasks=[s.task for s in samples],
        candidates=[s.candidates for s in samples],
        selected=[s.selected for s in samples],
        extra_pixels=extra,
    )
