"""Reading user images, and the geometry of turning them into the vision tower's square input."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["binary_mask", "load_image", "load_mask", "VisionTransform", "vision_input", "UNREADABLE_IMAGE_ERRORS"]

# what PIL raises for a file it cannot read: OSError (UnidentifiedImageError, truncated data), SyntaxError (broken
# PNG chunks), ValueError (a truncated PNG header), and DecompressionBombError (an image too large to decode
# safely, which is none of those)
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(image: object, upright: bool = True) -> np.ndarray:
    """An RGB H x W x 3 uint8 array from a path, a PIL image or an array.

    Grayscale, RGBA/LA, palette and 16-bit images are converted (alpha dropped, 16-bit scaled to 8). With
    ``upright``, files and PIL images are turned by their EXIF orientation, as image viewers show them (so boxes and
    masks drawn on the displayed photo line up); dataset readers pass False, since annotations index the pixels as
    stored. Raises FileNotFoundError / ValueError / TypeError naming what to fix; never
    returns a partial image.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except UNREADABLE_IMAGE_ERRORS as error:
            raise ValueError(f"could not read image {path}: {error} (is it a complete PNG/JPEG file?)") from error
    if isinstance(image, Image.Image):
        image = _pil_to_array(ImageOps.exif_transpose(image) if upright else image)
    if isinstance(image, torch.Tensor):
        raise TypeError("pass images as a path, PIL image or H x W x 3 uint8 numpy array, not a torch tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image or numpy array")
    return _normalise_array(image)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit files open as 16- or 32-bit integers: read as uint16, scaled to 8 bits by _normalise_array
        return np.asarray(image).clip(0, 65535).astype(np.uint16)
    if image.mode not in ("RGB", "L", "RGBA", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
    return np.asarray(image)


def _normalise_array(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":  # complex, dates, objects, strings: no pixel values to read
        raise TypeError(f"image array has dtype {array.dtype}; give pixel values as uint8 (0-255), uint16, or "
                        "floats in 0-1 or 0-255")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ValueError(f"image array must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has zero size {array.shape[:2]}")
    if array.dtype.kind in "if" and array.min(initial=0) < 0:
        raise ValueError(f"image array has negative values (min {array.min()}); give raw pixel values (0-255, or "
                         "0-1 floats), not a normalised tensor")
    if array.dtype.kind in "iu" and array.dtype != np.uint16 and array.max(initial=0) > 255:
        raise ValueError(f"image array has values up to {array.max()}; give 8-bit values 0-255 (or a uint16 "
                         "array for a 16-bit image)")
    if array.dtype == np.uint16:
        array = (array.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("float image contains NaN or inf")
        if array.max(initial=0.0) > 255.0:
            raise ValueError(f"float image has values up to {array.max():.4g}; give 0-1 or 0-255 pixel values")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = (array * scale).round().clip(0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    else:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def binary_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """A mask array of any shape as bool: bool as it is, numbers when they hold 0 and at most one positive value
    (0/1, 0/255). Anything else - soft probabilities, a label map, JPEG noise, logits - is refused with what to do,
    rather than every non-zero pixel silently counting as the object."""
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "iuf":
        raise TypeError(f"{what} has dtype {mask.dtype}; give a bool or 0/1 (0/255) numeric mask")
    values = mask[mask != 0]
    if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.min() != values.max()):
        raise ValueError(f"{what} is not a binary mask: its non-zero values range over [{values.min()}, "
                         f"{values.max()}] (soft probabilities, logits, a label map or a lossy JPEG?); give 0 and one "
                         "positive value, e.g. probabilities > 0.5, labels == k, or a PNG of 0 and 255")
    return mask != 0


def load_mask(mask: object, height: int, width: int, what: str) -> np.ndarray:
    """An H x W bool mask of exactly the given size; ``what`` names it in errors."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != (height, width):
        raise ValueError(f"{what} has shape {mask.shape}, but its image is {height} x {width}; give an H x W mask")
    mask = binary_mask(mask, what)
    if not mask.any():
        raise ValueError(f"{what} is empty (no pixel set); give a mask covering the object")
    return mask


@dataclass(frozen=True)
class VisionTransform:
    """Maps original-image pixels into the vision tower's input: x' = x * scale_x + offset_x (same for y)."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return (
            x0 * self.scale_x + self.offset_x, y0 * self.scale_y + self.offset_y,
            x1 * self.scale_x + self.offset_x, y1 * self.scale_y + self.offset_y,
        )


def vision_input(
    image: np.ndarray, size: int, mode: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, VisionTransform]:
    """The vision tower's input for an H x W x 3 uint8 image: 3 x size x size float, plus the coordinate map.

    mode "resize" stretches the whole image to the square; "crop" resizes the shortest side then centre-crops
    (LLaVA-v1, LISA); "pad" pads to a square with the mean colour first (LLaVA-1.5).
    """
    height, width = image.shape[:2]
    pil = Image.fromarray(image)
    if mode == "resize":
        resized = pil.resize((size, size), Image.BICUBIC)
        transform = VisionTransform(size / width, size / height)
    elif mode == "crop":
        # CLIPImageProcessor's shortest-edge resize: the short side to size, the long one truncated
        short = min(height, width)
        new_w, new_h = (size, int(size * height / short)) if width == short else (int(size * width / short), size)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        resized = pil.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size, top + size))
        transform = VisionTransform(new_w / width, new_h / height, -left, -top)
    elif mode == "pad":
        side = max(height, width)
        fill = tuple(int(m * 255) for m in mean)  # LLaVA-1.5's expand2square background, truncated as it does
        canvas = Image.new("RGB", (side, side), fill)
        left, top = (side - width) // 2, (side - height) // 2
        canvas.paste(pil, (left, top))
        resized = canvas.resize((size, size), Image.BICUBIC)
        scale = size / side
        transform = VisionTransform(scale, scale, left * scale, top * scale)
    else:
        raise ValueError(f"unknown vision resize mode {mode!r}")
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    pixels = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return pixels.contiguous(), transform
