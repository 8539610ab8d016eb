"""``box_zoom``: a box's tokens read from the box's own crop, encoded again by the vision tower, instead of
RoIAligned from the whole image's patch grid."""
import pytest
import torch
import torch.nn.functional as F

from anyref import OBJ, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from encoders.llava import vision_patch_grid
from train.config import TrainConfig
from train.model_factory import build_model
from tests.conftest import rect_mask, scene


@pytest.fixture(scope="module")
def zoomed():
    model = build_tiny(seed=2).eval()
    model.set_box_zoom(True)
    return model


def _batch(model, image, box: Box):
    sample = ReferringSample(image, ["the thing in", box], "segment", ["it ", OBJ, "."],
                             rect_mask(image.shape[:2], 10, 30, 10, 30)[None])
    return collate([prepare(sample, model.builder)], model.ids.pad)


def test_a_whole_image_box_reads_the_images_own_pooled_grid(zoomed):
    image = scene(3, 128)[:, :128]  # square: the vision frame is the image
    batch = _batch(zoomed, image, Box(0, 0, 128, 128))
    with torch.no_grad():
        grids = vision_patch_grid(zoomed.llava, batch.clip_pixels)
        regions = zoomed.box_regions(batch, grids)
    pool = zoomed.config.region_pool
    torch.testing.assert_close(regions, F.adaptive_avg_pool2d(grids, pool), atol=1e-5, rtol=1e-5)


def test_a_zoomed_box_reads_only_its_crop(zoomed):
    """Pixels more than a pixel outside the box change nothing (the crop's edge samples blend with the pixel next
    to it); pixels inside do; RoIAlign on the grid would see the patches around a small box too."""
    image = scene(4, 128)[:, :128]
    box = Box(40, 48, 72, 80)
    with torch.no_grad():
        before = zoomed.box_regions(batch := _batch(zoomed, image, box), vision_patch_grid(zoomed.llava,
                                                                                            batch.clip_pixels))
        outside = image.copy()
        outside[:46] = 0
        outside[82:] = 255
        outside[:, :38] = 17
        moved = _batch(zoomed, outside, box)
        after = zoomed.box_regions(moved, vision_patch_grid(zoomed.llava, moved.clip_pixels))
        inside = image.copy()
        inside[50:78, 42:70] = 255 - inside[50:78, 42:70]
        changed = _batch(zoomed, inside, box)
        again = zoomed.box_regions(changed, vision_patch_grid(zoomed.llava, changed.clip_pixels))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert (again - before).abs().max() > 1e-3


def test_a_training_config_switches_a_finished_model_to_zoomed_boxes(tmp_path):
    directory = build_tiny(seed=1).save_pretrained(tmp_path / "finished")
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    model = build_model(TrainConfig.from_dict({"model": {"init_from": str(directory), "box_zoom": True},
                                               "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages}))
    assert model.config.box_zoom and model.builder.config.box_zoom
    with pytest.raises(ValueError, match='"box_zoom"'):
        TrainConfig.from_dict({"model": {"tiny": {}, "box_zoom": True}, "mixture": {"synthref": {"ratio": 1.0}},
                               "stages": stages})
