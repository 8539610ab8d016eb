"""The local dense CRF (``AnyRefConfig.mask_crf``, anyref/mask_crf.py): it moves a mask's edge onto the object's
colour edge, leaves empty masks and pixels far from the mask alone, refuses settings it cannot use, and ``segment``
applies it to every mask it answers with; the command line reads and writes the setting."""
import argparse

import numpy as np
import pytest
import torch

from anyref.config import AnyRefConfig
from anyref.mask_crf import MaskCRF, crf_refine_found, crf_refine_logits
from anyref.model_args import add_inference_settings, inference_setting_words

from tests.conftest import rect_mask


def _square_scene() -> tuple[np.ndarray, np.ndarray]:
    """A flat red 30 x 30 square on a noisy grey-blue background, 128 x 128: (image, the square's mask)."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal((90, 100, 140), 12, (128, 128, 3)), 0, 255).astype(np.uint8)
    square = rect_mask((128, 128), 40, 70, 50, 80)
    image[square] = (200, 40, 40)
    return image, square


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_blurred_shifted_mask_is_snapped_to_the_objects_edge():
    image, square = _square_scene()
    # a coarse guess: the square shifted 3 px down-right, its edge a 6-px ramp (as a 4x upsampled low-res mask is)
    guess = torch.from_numpy(np.roll(square, (3, 3), axis=(0, 1)).astype(np.float32))
    ramp = torch.nn.functional.avg_pool2d(guess[None, None], 7, stride=1, padding=3)[0]
    logits = 8.0 * (ramp - 0.5)
    before = _iou(logits[0].numpy() > 0, square)
    after = crf_refine_logits(image, logits, MaskCRF())
    assert after.shape == logits.shape and after.dtype == torch.float32
    assert before < 0.75 and _iou(after[0].numpy() > 0, square) > 0.95


def test_empty_masks_and_pixels_far_from_a_mask_are_left_as_they_are():
    image, square = _square_scene()
    crf = MaskCRF(radius=4)
    logits = torch.full((2, 128, 128), -10.0)
    logits[1, 45:65, 55:75] = 5.0  # inside the square
    refined = crf_refine_logits(image, logits, crf)
    assert torch.equal(refined[0], logits[0])
    far = torch.ones(128, 128, dtype=torch.bool)
    far[45 - 4:65 + 4, 55 - 4:75 + 4] = False  # the mask's box grown by the radius: the only pixels computed
    assert torch.equal(refined[1][far], logits[1][far]) and not torch.equal(refined[1], logits[1])


def test_a_mask_the_crf_would_erase_keeps_its_logits():
    image, square = _square_scene()
    guess = torch.from_numpy(np.roll(square, (3, 3), axis=(0, 1)).astype(np.float32))
    logits = torch.full((2, 128, 128), -10.0)
    logits[0] = 8.0 * (torch.nn.functional.avg_pool2d(guess[None, None], 7, stride=1, padding=3)[0, 0] - 0.5)
    logits[1, 100:103, 10:13] = 0.05  # a faint speck on the noisy background
    crf = MaskCRF()
    assert not (crf_refine_logits(image, logits[1:], crf) > 0).any()  # the CRF alone erases the speck
    refined = crf_refine_found(image, logits, crf)
    assert torch.equal(refined[1], logits[1])  # kept as given: the checks after the CRF still see its pixels
    assert _iou(refined[0].numpy() > 0, square) > 0.95  # the other mask is refined as before


def test_settings_it_cannot_use_are_refused_by_name():
    with pytest.raises(ValueError, match="radius must be an int >= 1"):
        MaskCRF(radius=0)
    with pytest.raises(ValueError, match="colour_sigma must be a number > 0"):
        MaskCRF(colour_sigma=-1.0)
    with pytest.raises(ValueError, match=r"unknown settings \['radious'\]; known: .*'radius'"):
        MaskCRF.from_dict({"radious": 3})
    config = AnyRefConfig(llava={"text_config": {}, "vision_config": {}})
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        config.replace(mask_crf={"iterations": 0})
    with pytest.raises(ValueError, match="a dict of MaskCRF settings"):
        config.replace(mask_crf=[10, 7])
    kept = config.replace(mask_crf={"radius": 3})
    assert AnyRefConfig.from_dict(kept.to_dict()).mask_crf == {"radius": 3}
    with pytest.raises(ValueError, match="image of the masks' size"):
        crf_refine_logits(np.zeros((64, 64, 3), np.uint8), torch.zeros(1, 128, 128), MaskCRF())


def test_the_command_line_reads_and_writes_the_setting():
    parser = argparse.ArgumentParser()
    add_inference_settings(parser)
    assert parser.parse_args(["--mask-crf", "on"]).set_mask_crf == MaskCRF().as_dict()
    assert parser.parse_args(["--mask-crf", "off"]).set_mask_crf is None
    args = parser.parse_args(["--mask-crf", "iterations=3,radius=2"])
    assert args.set_mask_crf == {**MaskCRF().as_dict(), "iterations": 3, "radius": 2}
    words = inference_setting_words(args)
    assert parser.parse_args(words).set_mask_crf == args.set_mask_crf
    for bad in ("iterations", "radius=two", "radius=0", "sigma=3"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--mask-crf", bad])


def test_segment_answers_with_every_mask_refined_after_the_check(overfit_model, monkeypatch):
    model, image, two = overfit_model
    plain = model.segment(image, two.references)
    assert len(plain.masks) == 2
    settings = {"iterations": 10, "radius": 7, "colour_sigma": 500.0, "weight": 10.0}  # strong enough to move edges
    judged = []
    check = model._group_check_probabilities

    def recording(image, questions, allow_untrained):
        judged.extend(mask for mask, _ in questions)
        return check(image, questions, allow_untrained)

    monkeypatch.setattr(model, "_group_check_probabilities", recording)
    try:
        model.set_mask_crf(settings)
        model.set_check_by_group_head(1e-9)  # every mask passes; what matters is which masks it was shown
        refined = model.segment(image, two.references)
        unanswered = model.segment(image, ["the purple moon"])
    finally:
        model.set_mask_crf(None)  # the fixture is shared
        model.set_check_by_group_head(None)
    assert len(judged) == 2 and all(np.array_equal(a, b) for a, b in zip(judged, plain.masks))
    expected = crf_refine_logits(image, torch.from_numpy(plain.logits), MaskCRF.from_dict(settings)).numpy()
    np.testing.assert_allclose(refined.logits, expected, atol=1e-5)
    assert np.array_equal(refined.masks, expected > 0) and refined.text == plain.text
    assert not np.array_equal(refined.masks, plain.masks)  # so the check saw the masks before the CRF
    assert len(unanswered.masks) == 0 and unanswered.text == "there is no such object."
