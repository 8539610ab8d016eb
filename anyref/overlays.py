"""Overlay pictures for looking at what the model did: the image, a line saying what was referred to, the predicted mask
filled in red, the ground truth outlined in green (and a box reference drawn in yellow)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from anyref.references import Audio, Box, ExampleImage, MaskRef

__all__ = ["describe_references", "render_overlay"]

_PRED = np.array([230, 40, 40], dtype=np.float32)
# further predicted masks of one answer (red first, then these in turn), apart from the ground truth's green
_MORE_PREDS = np.array([[40, 110, 240], [240, 140, 20], [180, 60, 220], [20, 200, 200]], dtype=np.float32)
_GT = (40, 220, 60)
_BOX = (250, 220, 0)
_LINE_HEIGHT = 12


def describe_references(references: Sequence) -> str:
    """A short human-readable line for a prompt's references, e.g. '"the red cup"' or 'box (10, 5, 60, 70)'."""
    parts = []
    for ref in references:
        if isinstance(ref, str):
            parts.append(f'"{ref}"')
        elif isinstance(ref, Box):
            parts.append("box (" + ", ".join(f"{v:.0f}" for v in ref.as_tuple()) + ")")
        elif isinstance(ref, ExampleImage):
            parts.append("example image" + (" (masked)" if ref.mask is not None else ""))
        elif isinstance(ref, Audio):
            parts.append(f"audio {Path(ref.source).name}" if isinstance(ref.source, (str, Path)) else "audio")
        elif isinstance(ref, MaskRef):
            parts.append("mask")
        else:
            parts.append(type(ref).__name__)
    return " + ".join(parts)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def render_overlay(image: np.ndarray, text: str, pred: Optional[np.ndarray] = None,
                   gt: Optional[np.ndarray] = None, boxes: Sequence[Box] = (),
                   reference_masks: Sequence[np.ndarray] = ()) -> Image.Image:
    """image: H x W x 3 uint8; pred: H x W bool, or K x H x W for an answer with several masks (the first filled in
    red, the others each in a colour of its own), or None; gt: H x W bool or None; boxes and reference masks (H x W
    bool, outlined in the box colour) of the prompt. Returns the picture with a text band on top."""
    canvas = image.astype(np.float32)
    preds = [] if pred is None else np.asarray(pred, dtype=bool).reshape(-1, *image.shape[:2])
    for k, mask in enumerate(preds):
        colour = _PRED if k == 0 else _MORE_PREDS[(k - 1) % len(_MORE_PREDS)]
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * colour
    pixels = canvas.round().clip(0, 255).astype(np.uint8)
    if gt is not None and gt.any():
        pixels[_outline(gt)] = _GT
    for mask in reference_masks:
        pixels[_outline(np.asarray(mask, dtype=bool))] = _BOX
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle(box.as_tuple(), outline=_BOX, width=2)
    width = picture.width
    lines = textwrap.wrap(text, max(12, width // 6)) or [""]
    band = len(lines) * _LINE_HEIGHT + 4
    sheet = Image.new("RGB", (width, picture.height + band), (0, 0, 0))
    sheet.paste(picture, (0, band))
    text_draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        text_draw.text((2, 2 + i * _LINE_HEIGHT), line, fill=(255, 255, 255))
    return sheet
