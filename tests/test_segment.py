"""Every reference type end to end through ``segment``, on the tiny configuration of the real classes."""
import numpy as np
import pytest
import soundfile
from PIL import Image

from anyref import Audio, Box, ExampleImage
from tests.conftest import rect_mask, scene


def _check(result, image):
    assert result.masks.dtype == bool and result.masks.shape[1:] == image.shape[:2]
    assert result.scores.shape == (len(result.masks),)
    assert isinstance(result.text, str)


@pytest.mark.parametrize("ref", [
    "the red circle",
    Box(10, 5, 60, 70),
    ExampleImage(scene(7, size=64)),
    ExampleImage(scene(7, size=64), mask=rect_mask((64, 80), 10, 40, 10, 50)),
    Audio(np.random.default_rng(0).standard_normal((2, 44100 * 3)).astype(np.float32), sample_rate=44100),
    ["the object that sounds like", Audio(np.ones(8000, dtype=np.float32) * 0.1, sample_rate=8000),
     "left of", Box(0, 0, 40, 40)],
], ids=["text", "box", "example", "example-mask", "audio", "composite"])
def test_each_reference_type_runs(tiny_model, ref):
    image = scene(0)
    _check(tiny_model.segment(image, ref), image)


def test_audio_from_file_and_image_from_path(tiny_model, tmp_path):
    wav = tmp_path / "sound.wav"
    soundfile.write(wav, np.random.default_rng(1).standard_normal((22050 * 2, 2)).astype(np.float32) * 0.1, 22050)
    path = tmp_path / "image.png"
    Image.fromarray(scene(2)).save(path)
    _check(tiny_model.segment(path, Audio(wav)), scene(2))


def test_multi_obj_answer_gives_one_mask_per_obj(overfit_model):
    model, image, two = overfit_model
    result = model.segment(image, "the two squares")
    assert result.text == "left square <obj> and right square <obj>."
    assert result.masks.shape == (2, *image.shape[:2])
    # each mask found its own square (the model was trained on them): IoU well above chance
    for predicted, target in zip(result.masks, two.masks):
        iou = (predicted & target).sum() / max((predicted | target).sum(), 1)
        assert iou > 0.5
    assert (result.scores > 0.5).all()


def test_no_obj_answer_gives_zero_masks_and_says_so(overfit_model):
    model, image, _ = overfit_model
    result = model.segment(image, "the purple moon")
    assert result.text == "there is no such object."
    assert result.masks.shape == (0, *image.shape[:2]) and not result.found
    assert "no <obj>" in result.note


def test_describe_returns_text(tiny_model):
    assert isinstance(tiny_model.describe(scene(0), Box(1, 1, 30, 30)), str)
