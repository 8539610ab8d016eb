"""``describe_box_prior``: a region caption's first ``<obj>`` drawn from the prompt's one box (its coverage of the
image-token grid as SAM's dense prompt), only where the prompt quotes exactly one box, and refused where that
coverage would mean nothing; a training stage's box_prior_weight trains that same drawing; describe_box_margin keeps
that mask within its box, grown by the margin."""
import numpy as np
import pytest
import torch

from anyref import OBJ, Box, ReferringSample
from anyref.api import CLIPPED_LOGIT
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.heads import upscale_masks
from anyref.losses import mask_bce, mask_dice
from anyref.synthref import SynthRef
from train.config import Stage
from train.objectives import TrainingObjective
from tests.conftest import fit, rect_mask, scene, shipped_training_step

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True}
BOX = Box(12.5, 20.0, 50.0, 61.2)


def test_a_boxs_mask_is_every_pixel_it_touches_clipped_to_the_image():
    mask = Box(1.5, 2.0, 4.2, 3.0).mask(5, 6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[2:3, 1:5] = True
    np.testing.assert_array_equal(mask, expected)
    assert Box(-3, -3, 100, 2).mask(4, 4).sum() == 8  # two full rows of a 4 x 4 image


@pytest.fixture(scope="module")
def captioner():
    """A tiny located model taught to caption one box with a mask: "the square <obj>."."""
    torch.manual_seed(0)
    model = build_tiny(seed=3, config_overrides=LOCATED).train()
    image = scene(4)
    sample = ReferringSample(image, [BOX], "describe", ["the square ", OBJ, "."],
                             rect_mask(image.shape[:2], 20, 60, 12, 50)[None])
    fit(model, collate([prepare(sample, model.builder)], model.ids.pad), 60, lr=2e-3, clip=1.0)
    return model.eval(), image


def test_the_first_obj_of_a_box_caption_is_drawn_from_the_box(captioner):
    model, image = captioner
    plain = model.describe(image, BOX, with_masks=True)
    assert plain.text == "the square." and len(plain.masks) == 1
    model.set_describe_box_prior(True)
    try:
        boxed = model.describe(image, BOX, with_masks=True)
        generations, batch, _ = model._run(image, [[BOX]], "describe", False)
        with torch.no_grad():
            embeddings = model.sam_embeddings(batch.sam_pixels)
            prompt = model.obj_projection(generations[0].obj_states[:1])
            region = torch.from_numpy(BOX.mask(*image.shape[:2]))
            low = model.redraw_obj_masks(embeddings, prompt, [region])
            expected = upscale_masks(model.sam, low, batch.sam_sizes[0], batch.image_sizes[0])[0].float()
        assert boxed.text == plain.text
        np.testing.assert_allclose(boxed.logits[0], expected.numpy(), atol=1e-4)
        assert not np.allclose(boxed.logits[0], plain.logits[0], atol=1e-3)  # the box, not the <obj>'s map
        # two boxes: which is the region is not said, so the <obj>'s own map draws it
        two = model.describe(image, [BOX, "and", Box(60, 10, 90, 40)], with_masks=True)
        model.set_describe_box_prior(False)
        again = model.describe(image, [BOX, "and", Box(60, 10, 90, 40)], with_masks=True)
        np.testing.assert_array_equal(two.logits, again.logits)
    finally:
        model.set_describe_box_prior(False)


def test_a_box_grows_by_a_fraction_of_its_sides():
    assert Box(10, 20, 30, 60).grown(0.1).as_tuple() == (8.0, 16.0, 32.0, 64.0)
    assert Box(10, 20, 30, 60).grown(0.0).as_tuple() == (10.0, 20.0, 30.0, 60.0)
    with pytest.raises(ValueError, match="fraction >= 0"):
        Box(10, 20, 30, 60).grown(-0.1)


def test_the_margin_keeps_a_box_captions_mask_within_its_grown_box(captioner):
    model, image = captioner
    model.set_describe_box_prior(True)
    try:
        free = model.describe(image, BOX, with_masks=True)
        model.set_describe_box_margin(0.0)
        kept = model.describe(image, BOX, with_masks=True)
        two = model.describe(image, [BOX, "and", Box(60, 10, 90, 40)], with_masks=True)
        model.set_describe_box_margin(None)
        two_free = model.describe(image, [BOX, "and", Box(60, 10, 90, 40)], with_masks=True)
    finally:
        model.set_describe_box_prior(False)
        model.set_describe_box_margin(None)
    inside = BOX.mask(*image.shape[:2])
    assert (free.logits[0][~inside] > CLIPPED_LOGIT).any()  # there was something to cut
    np.testing.assert_array_equal(kept.logits[0][inside], free.logits[0][inside])
    np.testing.assert_array_equal(kept.logits[0][~inside], np.minimum(free.logits[0][~inside], CLIPPED_LOGIT))
    np.testing.assert_array_equal(kept.masks, kept.logits > 0)
    assert not kept.masks[0][~inside].any() and kept.text == free.text
    np.testing.assert_array_equal(two.logits, two_free.logits)  # two boxes: no one region to keep to


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="needs obj_location_prompt"):
        build_tiny(seed=0).set_describe_box_prior(True)
    located = build_tiny(seed=0, config_overrides=LOCATED).config
    with pytest.raises(ValueError, match='vision_resize "resize"'):
        located.replace(describe_box_prior=True, vision_resize="pad")
    for margin in (-0.1, 1.5):
        with pytest.raises(ValueError, match="describe_box_margin"):
            located.replace(describe_box_margin=margin)


def test_the_training_pass_is_the_inference_pass():
    """box_prior_weight's loss is the mask loss of the mask describe draws from the box at inference, over the
    one-box captions of the batch only, and it trains SAM's mask decoder."""
    samples = SynthRef().split("val", "box", 2) + SynthRef().split("val", "text", 1)
    model, batch, output = shipped_training_step(samples, box_prior_weight=1.0)
    bce = dice = 0.0
    with torch.no_grad():
        for row, sample in enumerate(samples[:2]):
            first = int((output.obj_rows == row).nonzero()[0, 0])
            region = torch.from_numpy(sample.references[0].mask(*sample.image.shape[:2]))
            low = model.redraw_obj_masks(output.sam_embeddings[row:row + 1],
                                         model.obj_projection(output.obj_states[first:first + 1]), [region])
            full = upscale_masks(model.sam, low, batch.sam_sizes[row], batch.image_sizes[row])
            bce, dice = bce + mask_bce(full, batch.masks[row][:1]), dice + mask_dice(full, batch.masks[row][:1])
    assert all(isinstance(s.references[0], Box) for s in samples[:2])
    assert output.terms["box_prior_bce"].item() == pytest.approx(bce.item() / 2, rel=1e-4)
    assert output.terms["box_prior_dice"].item() == pytest.approx(dice.item() / 2, rel=1e-4)
    # without a one-box caption in the batch the loss is a zero that still reaches the decoder's graph
    text = collate([prepare(samples[2], model.builder)], model.ids.pad)
    assert TrainingObjective(model)(text, box_prior_weight=1.0).terms["box_prior_bce"].item() == 0.0


def test_box_prior_weight_needs_a_stage_that_trains_the_decoder():
    with pytest.raises(ValueError, match="box_prior_weight"):
        Stage(name="x", steps=1, trainable="mask_projector", box_prior_weight=1.0)
    with pytest.raises(ValueError, match="box_prior_weight"):
        Stage(name="x", steps=1, trainable="all", box_prior_weight=-1.0)
