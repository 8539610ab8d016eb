"""A contact sheet of samples for a person to look at: image, answer masks, references and texts."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anyref.references import Audio, Box, ExampleImage, MaskRef
from anyref.samples import OBJ, ReferringSample

__all__ = ["render_overview"]

_MASK_COLOURS = np.array([[255, 0, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0]], dtype=np.float32)
_LINE = 12
_TEXT_LINES = 6


def _edge(mask: np.ndarray) -> np.ndarray:
    """H x W bool: pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _reference_text(ref) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, Box):
        return "<box>"
    if isinstance(ref, ExampleImage):
        return "<example+mask>" if ref.mask is not None else "<example>"
    if isinstance(ref, Audio):
        return f"<audio {np.asarray(ref.source).shape[-1] / ref.sample_rate:.1f}s>"
    if isinstance(ref, MaskRef):
        return "<mask>"
    return f"<{type(ref).__name__}>"


def _answer_text(sample: ReferringSample) -> str:
    if sample.task == "select":
        return f"selected {int(sample.selected.sum())} of {len(sample.selected)} candidates"
    return "".join("<obj>" if part is OBJ else part for part in sample.answer)


def _example_thumbnail(ref: ExampleImage, side: int) -> Image.Image:
    image = np.asarray(ref.image, dtype=np.float32).copy()
    if ref.mask is not None:
        mask = np.asarray(ref.mask, dtype=bool)
        image[_edge(mask)] = (255, 255, 255)
        image[~mask] *= 0.4
    return Image.fromarray(image.astype(np.uint8)).resize((side, side), Image.NEAREST)


def _tile(sample: ReferringSample, scale: int, font) -> Image.Image:
    h, w = sample.image.shape[:2]
    image = sample.image.astype(np.float32)
    masks = sample.candidates[sample.selected] if sample.task == "select" else sample.masks
    for k, mask in enumerate(masks):
        colour = _MASK_COLOURS[k % len(_MASK_COLOURS)]
        image[mask] = 0.45 * image[mask] + 0.55 * colour
        image[_edge(mask)] = colour
    for ref in sample.references:
        if isinstance(ref, MaskRef):
            image[_edge(np.asarray(ref.mask, dtype=bool))] = (255, 255, 255)
    panel = _LINE * _TEXT_LINES + 8  # text (and the example thumbnail) below the image
    tile = Image.new("RGB", (w * scale, h * scale + panel), (24, 24, 24))
    tile.paste(Image.fromarray(image.astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(tile)
    text_width = w * scale
    for ref in sample.references:
        if isinstance(ref, Box):
            draw.rectangle([c * scale for c in ref.as_tuple()], outline=(255, 255, 255), width=2)
        if isinstance(ref, ExampleImage):
            side = panel - 6
            tile.paste(_example_thumbnail(ref, side), (w * scale - side - 3, h * scale + 3))
            text_width = w * scale - side - 6
    prompt = " ".join(_reference_text(r) for r in sample.references)
    text = f"[{sample.source or sample.task}] {prompt}\n-> {_answer_text(sample)}"
    lines = [line for para in text.split("\n") for line in textwrap.wrap(para, width=max(text_width // 6, 10))]
    for i, line in enumerate(lines[:_TEXT_LINES]):
        draw.text((3, h * scale + 3 + i * _LINE), line, fill=(235, 235, 235), font=font)
    return tile


def render_overview(samples: list[ReferringSample], path: str | Path, columns: int = 4, scale: int = 2) -> Path:
    """Write a PNG grid of ``samples`` to ``path``: each tile shows the image with its answer masks (for mask groups,
    the selected candidates) tinted, Box references as white rectangles, MaskRef references outlined in white,
    then the prompt and the answer, and example images as a thumbnail beside them. Returns the path."""
    if not samples:
        raise ValueError("render_overview needs at least one sample")
    font = ImageFont.load_default()
    tiles = [_tile(s, scale, font) for s in samples]
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tw + 4), rows * (th + 4)), (0, 0, 0))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (tw + 4), (i // columns) * (th + 4)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
