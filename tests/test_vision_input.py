"""The vision tower's input equals what the upstream preprocessing makes of the same photo: CLIPImageProcessor's
shortest-edge resize and centre crop ("crop", LLaVA-v1 / LISA), and LLaVA-1.5's pad to a square with the mean
colour before it ("pad")."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from anyref.config import CLIP_MEAN, CLIP_STD
from anyref.images import vision_input


@pytest.fixture
def photo():
    return (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)


def _assert_same_pixels(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal up to a grey level in a few pixels (bicubic rounding); a pixel off in size, crop offset or padding
    colour moves far more of them."""
    level = 1.0 / 255.0 / min(CLIP_STD)
    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs()
    assert float(difference.max()) <= level + 1e-4 and float((difference > 1e-4).float().mean()) < 0.01


def _clip_processor(size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


@pytest.mark.parametrize("shape", [(45, 70, 3), (70, 45, 3), (31, 31, 3)])
def test_crop_is_clip_image_processor(shape):
    image = (np.random.default_rng(1).random(shape) * 255).astype(np.uint8)
    ours, transform = vision_input(image, 28, "crop", CLIP_MEAN, CLIP_STD)
    theirs = _clip_processor(28)(images=Image.fromarray(image), return_tensors="pt").pixel_values[0]
    _assert_same_pixels(ours, theirs)
    assert transform.scale_x == pytest.approx(transform.scale_y, rel=0.03)  # aspect kept, up to truncation


def test_pad_is_llava_expand2square_then_clip(photo):
    ours, transform = vision_input(photo, 28, "pad", CLIP_MEAN, CLIP_STD)
    # LLaVA-1.5 (llava/mm_utils.py expand2square): paste centred on a square of int(mean * 255)
    side = max(photo.shape[:2])
    square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
    square.paste(Image.fromarray(photo), ((side - photo.shape[1]) // 2, (side - photo.shape[0]) // 2))
    theirs = _clip_processor(28)(images=square, return_tensors="pt").pixel_values[0]
    _assert_same_pixels(ours, theirs)
    assert transform.box((0, 0, photo.shape[1], photo.shape[0]))[1] > 0  # the photo sits below the top padding
