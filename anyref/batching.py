"""From samples to model inputs: ``prepare`` one sample (CPU work a DataLoader worker can do), ``collate`` many.

Training, evaluation and ``AnyRef.segment`` all go through these two functions, so a model sees the same inputs
whichever way it is called.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from anyref.config import AnyRefConfig
from anyref.images import load_image, load_mask, vision_input
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
    references: (kind, tensor) in prompt order - box: 4 (x0, y0, x1, y1 in vision-input pixels), example:
    3 x S x S, audio: 3 x 1 x 128 x 204, mask: H x W bool. masks: K x H x W bool targets.
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


@dataclass
class Batch:
    """B prepared samples, padded to one length L.

    input_ids, labels, attention_mask: B x L. answer_starts: B (index in the padded row). clip_pixels:
    B x 3 x S x S. sam_pixels: B x 3 x Ss x Ss. boxes: Nb x 5 (sample index, x0, y0, x1, y1). examples:
    Ne x 3 x S x S. audio: Na x 3 x 1 x 128 x 204. mask_refs: list of (sample index, H x W bool).
    reference_order: per sample, (kind, index into that kind's tensor) in prompt order. masks: per sample K x H x W.
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
    mask_refs: list[tuple[int, torch.Tensor]]
    reference_order: list[list[tuple[str, int]]]
    masks: list[torch.Tensor]
    tasks: list[str] = field(default_factory=list)
    candidates: list[torch.Tensor | None] = field(default_factory=list)
    selected: list[torch.Tensor | None] = field(default_factory=list)

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
                    "boxes", "examples", "audio")}
        changes["masks"] = [m.to(device) for m in self.masks]
        changes["mask_refs"] = [(i, m.to(device)) for i, m in self.mask_refs]
        return Batch(**{**self.__dict__, **changes})


def example_crop(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """An example image as the vision tower sees it: with a mask, cropped to the mask's box, background black."""
    if mask is None:
        return image
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return (image * mask[:, :, None])[y0:y1, x0:x1]


def _reference_tensor(ref, image_size: tuple[int, int], transform, config: AnyRefConfig, vision_side: int):
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
        return kind, torch.from_numpy(load_mask(ref.mask, height, width, what="reference mask"))
    raise TypeError(f"unsupported reference {type(ref).__name__}")


def prepare(sample: ReferringSample, builder: PromptBuilder, with_answer: bool = True) -> PreparedSample:
    """Tensors for one sample. ``with_answer=False`` gives a prompt to generate from (no answer tokens)."""
    config = builder.config
    vision_side = config.llava["vision_config"]["image_size"]
    image = sample.image
    pixels, transform = vision_input(image, vision_side, config.vision_resize, config.vision_mean, config.vision_std)
    sam_pixels, sam_size = sam_preprocess(image, config.sam.image_size)
    encoded = builder.encode(sample.task, sample.references, sample.answer if with_answer else None)
    size = (image.shape[0], image.shape[1])
    references = [_reference_tensor(r, size, transform, config, vision_side) for r in encoded.references]
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
    boxes, examples, audio, mask_refs, order = [], [], [], [], []
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        start = length - n if padding_side == "left" else 0
        input_ids[row, start:start + n] = sample.input_ids
        labels[row, start:start + n] = sample.labels
        attention[row, start:start + n] = 1
        answer_starts[row] = start + sample.answer_start
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
                sample_order.append((kind, len(mask_refs)))
                mask_refs.append((row, tensor))
        order.append(sample_order)
    side = samples[0].clip_pixels.shape[-1]
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
        mask_refs=mask_refs,
        reference_order=order,
        masks=[s.masks for s in samples],
        tasks=[s.task for s in samples],
        candidates=[s.candidates for s in samples],
        selected=[s.selected for s in samples],
    )
