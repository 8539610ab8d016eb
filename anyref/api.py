"""The public model: ``AnyRef.from_pretrained(dir)``, ``segment(image, ref)``, ``describe(image, box)``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anyref.batching import collate, prepare
from anyref.checkpoint import load_directory, save_directory
from anyref.heads import decode_masks, upscale_masks
from anyref.images import load_image
from anyref.model import AnyRefModel
from anyref.outputs import Generation, SegmentResult
from anyref.prompts import reference_kind
from anyref.references import Audio, MaskRef, as_reference_list
from anyref.samples import ReferringSample

__all__ = ["AnyRef"]


class AnyRef(AnyRefModel):
    """AnyRef with its user-facing methods. Build with :mod:`anyref.builders` or ``from_pretrained``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> "AnyRef":
        """Load a directory written by ``save_pretrained``, or a shipped model by name ("synthref-tiny")."""
        return load_directory(cls, name_or_path, device)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, safetensors weights, the tokenizer (and ``adapter/`` with LoRA on), atomically."""
        return save_directory(self, directory)

    # ---------------------------------------------------------------------------------------- validation
    def check_references(self, refs: list, allow_untrained: bool = False) -> None:
        """Refuse references this model cannot encode, with a message that says why."""
        for ref in refs:
            kind = reference_kind(ref)
            if isinstance(ref, Audio) and self.audio_encoder is None:
                raise ValueError("this model was built without an audio encoder, so it cannot take Audio "
                                 "references; load a model with audio support (config.audio set)")
            if isinstance(ref, MaskRef):
                raise ValueError("this model has no mask-reference encoder, so it cannot take MaskRef references")
            if kind in self.config.untrained_references and not allow_untrained:
                raise ValueError(f"this model's {kind} reference encoder was never trained (config "
                                 f"untrained_references={self.config.untrained_references}); fine-tune it first, "
                                 "or pass allow_untrained=True to run it anyway")

    def _generate_for(self, image: np.ndarray, refs: list, task: str) -> tuple[Generation, object]:
        sample = ReferringSample(image=image, references=refs, task=task)
        prepared = prepare(sample, self.builder, with_answer=False)
        limit = self.llava.config.text_config.max_position_embeddings
        needed = len(prepared.input_ids) + self.config.max_new_tokens
        if needed > limit:
            raise ValueError(f"prompt takes {len(prepared.input_ids)} tokens + {self.config.max_new_tokens} for "
                             f"the answer, more than this model's context of {limit} tokens; shorten the text")
        batch = collate([prepared], self.ids.pad, padding_side="left").to(self.device, self.dtype)
        return self.generate(batch)[0], batch

    # ---------------------------------------------------------------------------------------------- API
    @torch.no_grad()
    def segment(self, image, ref, allow_untrained: bool = False) -> SegmentResult:
        """Masks for what ``ref`` points at in ``image``.

        image: a path, PIL image or H x W x 3 uint8 array (grayscale, RGBA and 16-bit are converted).
        ref: a str, Box, ExampleImage, Audio, or a list of these read left to right as one expression.
        Returns masks K x H x W bool at the image's size (K = the number of ``<obj>`` in the answer, maybe 0).
        """
        pixels = load_image(image)
        refs = as_reference_list(ref)
        self.check_references(refs, allow_untrained)
        generation, batch = self._generate_for(pixels, refs, "segment")
        return self._masks_for(generation, batch)

    @torch.no_grad()
    def describe(self, image, ref, allow_untrained: bool = False, with_masks: bool = False) -> str | SegmentResult:
        """A caption of the referred region, e.g. ``describe(image, Box(10, 20, 60, 80))``.

        with_masks: return a SegmentResult instead, whose ``text`` is the caption and whose ``masks`` come from the
        ``<obj>`` tokens of the same answer (AnyRef answers a region caption with the region's mask).
        """
        pixels = load_image(image)
        refs = as_reference_list(ref)
        self.check_references(refs, allow_untrained)
        generation, batch = self._generate_for(pixels, refs, "describe")
        caption = " ".join(generation.text.replace(self.config.obj_token, " ").split()).replace(" .", ".")
        if not with_masks:
            return caption
        result = self._masks_for(generation, batch)
        result.text = caption
        return result

    def _masks_for(self, generation: Generation, batch) -> SegmentResult:
        height, width = batch.image_sizes[0]
        if len(generation.obj_states) == 0:
            return SegmentResult(np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32),
                                 generation.text, np.zeros((0, height, width), dtype=np.float32))
        embedding = self.sam_embeddings(batch.sam_pixels)
        prompts = self.obj_projection(generation.obj_states)
        low = decode_masks(self.sam, embedding, prompts)
        logits = upscale_masks(self.sam, low, batch.sam_sizes[0], batch.image_sizes[0]).float()
        masks = logits > 0
        probs = logits.sigmoid()
        area = masks.flatten(1).sum(1)
        scores = (probs * masks).flatten(1).sum(1) / area.clamp_min(1)  # 0 for an empty mask
        return SegmentResult(masks.cpu().numpy(), scores.cpu().numpy().astype(np.float32), generation.text,
                             logits.cpu().numpy())
