"""``describe_box_prior``: a region caption's first ``<obj>`` drawn from the prompt's one box (its coverage of the
image-token grid as SAM's dense prompt), only where the prompt quotes exactly one box, and refused where that
coverage would mean nothing."""
import numpy as np
import pytest
import torch

from anyref import OBJ, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.heads import upscale_masks
from tests.conftest import fit, rect_mask, scene

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


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="needs obj_location_prompt"):
        build_tiny(seed=0).set_describe_box_prior(True)
    located = build_tiny(seed=0, config_overrides=LOCATED).config
    with pytest.raises(ValueError, match='vision_resize "resize"'):
        located.replace(describe_box_prior=True, vision_resize="pad")
