"""Bad input gets a clear error naming what to fix; odd-but-valid input is converted."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from anyref import Audio, Box, ExampleImage, MaskRef
from anyref.builders import build_tiny
from anyref.candidates import check_candidates
from anyref.images import load_image, load_mask
from anyref.model_args import resolve_device
from tests.conftest import scene


def test_missing_and_corrupt_image_files(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tiny_model.segment(tmp_path / "nope.png", "x")
    broken = tmp_path / "broken.png"
    Image.fromarray(scene(0)).save(broken)
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(ValueError, match="could not read image"):
        tiny_model.segment(broken, "x")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="could not read image"):
        load_image(tmp_path / "text.jpg")


def test_zero_size_and_wrong_shape_images():
    with pytest.raises(ValueError, match="zero size"):
        load_image(np.zeros((0, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="H x W x 3"):
        load_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(TypeError, match="unsupported image type"):
        load_image(12)


def test_grayscale_rgba_and_16_bit_are_converted(tmp_path):
    gray = load_image(np.full((5, 6), 7, dtype=np.uint8))
    assert gray.shape == (5, 6, 3) and (gray == 7).all()
    rgba = load_image(Image.new("RGBA", (6, 5), (1, 2, 3, 4)))
    assert rgba.shape == (5, 6, 3) and tuple(rgba[0, 0]) == (1, 2, 3)
    deep = np.full((5, 6), 65535, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 6, 3) and (loaded == 255).all()
    assert load_image(Image.new("P", (6, 5))).shape == (5, 6, 3)


def test_photos_are_read_upright_and_normalised_arrays_refused(tmp_path):
    photo = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # EXIF orientation: the camera was turned; viewers show the photo rotated 90 degrees
    photo.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").shape == (20, 10, 3)
    with Image.open(tmp_path / "phone.jpg") as opened:
        assert load_image(opened).shape == (20, 10, 3)
    with pytest.raises(ValueError, match="negative values"):
        load_image(np.full((4, 4, 3), -0.5, np.float32))
    with pytest.raises(ValueError, match="values up to 300"):
        load_image(np.full((4, 4, 3), 300, np.int32))


def test_masks_must_be_binary():
    soft = np.zeros((6, 6), np.float32)
    soft[1:4, 1:4] = 0.8
    soft[2, 2] = 0.3
    with pytest.raises(ValueError, match="not a binary mask"):
        load_mask(soft, 6, 6, "reference mask")
    with pytest.raises(ValueError, match="not a binary mask"):
        check_candidates(np.stack([soft, soft > 0.5]), 6, 6)
    labels = np.zeros((6, 6), np.uint8)
    labels[:2], labels[4:] = 1, 2
    with pytest.raises(ValueError, match="labels == k"):
        load_mask(labels, 6, 6, "reference mask")
    assert load_mask((labels == 2) * 255, 6, 6, "reference mask").sum() == 12
    assert load_mask(soft > 0.5, 6, 6, "reference mask").sum() == 8


def test_devices_are_checked():
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"


def test_boxes(tiny_model):
    with pytest.raises(ValueError, match="x1 > x0"):
        Box(10, 10, 5, 20)
    with pytest.raises(ValueError, match="x1 > x0"):
        Box(0, 10, 5, 10)
    with pytest.raises(ValueError, match="finite"):
        Box(0, 0, float("nan"), 4)
    assert Box(-5, -5, 500, 30).clipped(100, 50).as_tuple() == (0, 0, 100, 30)
    assert tiny_model.segment(scene(0), Box(-20, -20, 1000, 1000)).masks.shape[1:] == scene(0).shape[:2]
    with pytest.raises(ValueError, match="entirely outside"):
        tiny_model.segment(scene(0), Box(500, 500, 600, 600))


def test_audio_inputs(tiny_model):
    image = scene(0)
    bad = np.ones(16000, dtype=np.float32)
    bad[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny_model.segment(image, Audio(bad, sample_rate=16000))
    bad[5] = np.inf
    with pytest.raises(ValueError, match="inf"):
        tiny_model.segment(image, Audio(bad, sample_rate=16000))
    with pytest.raises(ValueError, match="sample_rate"):
        Audio(np.ones(10, dtype=np.float32))
    short = np.random.default_rng(0).standard_normal(5000).astype(np.float32)  # 0.6 s at 8 kHz
    assert tiny_model.segment(image, Audio(short, sample_rate=8000)).masks.shape[1:] == image.shape[:2]
    six_channels = np.random.default_rng(1).standard_normal((6, 48000)).astype(np.float32)
    assert tiny_model.segment(image, Audio(six_channels, sample_rate=48000)).masks.ndim == 3


def test_text_and_prompt_length(tiny_model):
    with pytest.raises(ValueError, match="empty text"):
        tiny_model.segment(scene(0), "   ")
    with pytest.raises(ValueError, match="empty list"):
        tiny_model.segment(scene(0), [])
    with pytest.raises(TypeError, match="unsupported reference"):
        tiny_model.segment(scene(0), 3.5)
    limit = tiny_model.llava.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"context of {limit} tokens"):
        tiny_model.segment(scene(0), "red " * 2000)


def test_reference_types_the_model_lacks():
    model = build_tiny(audio=False)
    with pytest.raises(ValueError, match="without an audio encoder"):
        model.segment(scene(0), Audio(np.zeros(16000, dtype=np.float32), sample_rate=16000))
    untrained = build_tiny(audio=False)
    untrained.config = untrained.config.replace(untrained_references=("box", "mask"))
    with pytest.raises(ValueError, match="never trained"):
        untrained.segment(scene(0), Box(1, 1, 9, 9))
    with pytest.raises(ValueError, match="mask reference encoder was never trained"):
        untrained.segment(scene(0), MaskRef(np.ones((96, 112), dtype=bool)))
    assert untrained.segment(scene(0), Box(1, 1, 9, 9), allow_untrained=True).masks.ndim == 3


def test_example_mask_problems(tiny_model):
    example = scene(5, size=32)
    with pytest.raises(ValueError, match="example mask has shape"):
        tiny_model.segment(scene(0), ExampleImage(example, mask=np.ones((3, 3), dtype=bool)))
    with pytest.raises(ValueError, match="empty"):
        tiny_model.segment(scene(0), ExampleImage(example, mask=np.zeros(example.shape[:2], dtype=bool)))


@pytest.mark.parametrize("dtype", [np.complex64, "datetime64[s]", object, "<U1"])
def test_image_arrays_without_pixel_values_are_refused(dtype):
    with pytest.raises(TypeError, match=re.escape(f"image array has dtype {np.dtype(dtype)};")):
        load_image(np.zeros((4, 4, 3), dtype=dtype))


def test_decompression_bombs_are_unreadable_images(tmp_path, monkeypatch):
    Image.fromarray(scene(0)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the scene's pixels then count as a decompression bomb
    with pytest.raises(ValueError, match="could not read image .*huge.png"):
        load_image(tmp_path / "huge.png")
