"""The region geometry code of box and mask tokens (``region_geometry``): the numbers it reads from a box and from a
mask's pooling weights, where the model adds it, its zero start, its training, and adding it to a finished model."""
import numpy as np
import pytest
import torch

from anyref import OBJ, AnyRef, Box, MaskRef, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.mask_tokens import pooling_weights
from anyref.region_geometry import RegionGeometry, box_geometry, mask_geometry
from train.config import TrainConfig
from train.model_factory import build_model
from train.trainable import parameter_groups
from tests.conftest import rect_mask, scene

GEOMETRY = {"region_geometry": True}


def test_a_boxs_geometry_is_its_centre_sides_and_the_root_of_its_area():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [32.0, 96.0, 64.0, 128.0]])
    expected = torch.tensor([[0.25, 0.125, 0.5, 0.25, 0.125 ** 0.5], [0.375, 0.875, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(box_geometry(boxes, 128), expected)


def test_a_masks_geometry_from_its_pooling_weights_matches_its_box():
    """A rectangle aligned to the 8 px cells of a 16 x 16 grid over 128 px: its centroid, sides and area are the
    box's exactly; an ellipse's area is its own, not its box's."""
    frame = {"vision": ((1.0, 1.0), (0.0, 0.0), 128, 16)}
    rectangle = rect_mask((128, 128), 16, 64, 40, 72)  # rows 16-64, columns 40-72
    weights = pooling_weights(rectangle, frame)["vision"][None]
    expected = box_geometry(torch.tensor([[40.0, 16.0, 72.0, 64.0]]), 128)
    torch.testing.assert_close(mask_geometry(weights), expected, atol=1e-5, rtol=0)
    y, x = np.mgrid[:128, :128]
    ellipse = ((x - 60) / 30.0) ** 2 + ((y - 70) / 15.0) ** 2 <= 1
    geometry = mask_geometry(pooling_weights(ellipse, frame)["vision"][None])[0]
    assert geometry[4] == pytest.approx((ellipse.sum() / 128 ** 2) ** 0.5, rel=1e-5)
    assert geometry[0] == pytest.approx(60.5 / 128, abs=0.01) and geometry[1] == pytest.approx(70.5 / 128, abs=0.01)
    assert float(geometry[2]) == pytest.approx(2 * float(geometry[3]), rel=0.05)  # twice as wide as tall, as the ellipse
    torch.testing.assert_close(mask_geometry(torch.zeros(1, 16, 16)), torch.zeros(1, 5))


def test_the_code_starts_at_zero_and_refuses_other_widths():
    code = RegionGeometry(hidden=12)
    assert torch.equal(code(torch.rand(3, 5)), torch.zeros(3, 12))
    with pytest.raises(ValueError, match="5 numbers per region"):
        code(torch.rand(3, 4))


def test_a_model_with_the_code_starts_as_one_without_it():
    """The code is drawn aside from the random stream: every other weight is the plain model's."""
    plain, coded = build_tiny(seed=4).state_dict(), build_tiny(seed=4, config_overrides=GEOMETRY).state_dict()
    assert sorted(set(coded) - set(plain)) == sorted(k for k in coded if k.startswith("region_geometry."))
    assert all(torch.equal(plain[k], coded[k]) for k in plain)


def _box_and_mask_sample(image: np.ndarray, box: Box, mask: np.ndarray) -> ReferringSample:
    target = rect_mask(image.shape[:2], 20, 60, 10, 50)[None]
    return ReferringSample(image, ["the thing in", box, "like", MaskRef(mask)], "segment", ["it ", OBJ, "."], target)


def test_the_code_reaches_box_and_mask_tokens_and_trains_and_survives_save_and_load(tmp_path):
    image = scene(5)
    mask = rect_mask(image.shape[:2], 30, 70, 60, 90)
    sample = _box_and_mask_sample(image, Box(10, 20, 50, 60), mask)
    model = build_tiny(seed=6, config_overrides=GEOMETRY).train()
    batch = collate([prepare(sample, model.builder)], model.ids.pad)
    model(batch).loss.backward()
    assert model.region_geometry.mlp[2].weight.grad.abs().sum() > 0
    assert any(p is model.region_geometry.mlp[2].weight for p in parameter_groups(model)["heads"])
    with torch.no_grad():
        model.region_geometry.mlp[2].bias.normal_()
        model.region_geometry.mlp[2].weight.normal_()
        base = model.input_embeddings(batch)
        moved = collate([prepare(_box_and_mask_sample(image, Box(10, 20, 90, 80), mask), model.builder)],
                        model.ids.pad)
        changed = (model.input_embeddings(moved) - base).abs().sum(-1)[0] > 0
    slots = batch.input_ids[0] == model.ids.ref_feature
    # a larger box changes its 16 tokens and nothing else (the mask token after them keeps its code)
    assert changed.nonzero().flatten().tolist() == slots.nonzero().flatten()[:16].tolist()
    loaded = AnyRef.from_pretrained(model.eval().save_pretrained(tmp_path / "coded"))
    assert loaded.config.region_geometry
    torch.testing.assert_close(loaded.input_embeddings(batch), base)


def test_a_training_config_adds_the_code_to_a_finished_model(tmp_path):
    """Added to a finished model, the zero code changes no answer; it cannot be added twice, nor to a "tiny"
    model through the continuation key."""
    finished = build_tiny(seed=1)
    directory = finished.save_pretrained(tmp_path / "finished")
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    config = TrainConfig.from_dict({"model": {"init_from": str(directory), "add_region_geometry": True},
                                    "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})
    model = build_model(config).eval()
    assert model.config.region_geometry and model.builder.config.region_geometry
    image = scene(2)
    prompt = ["the thing in", Box(10, 20, 50, 60), "like", MaskRef(rect_mask(image.shape[:2], 30, 70, 60, 90))]
    before, after = finished.eval().segment(image, prompt), model.segment(image, prompt)
    assert before.text == after.text and np.array_equal(before.masks, after.masks)
    with pytest.raises(ValueError, match="already has"):
        model.add_region_geometry()
    with pytest.raises(ValueError, match='"add_region_geometry"'):
        TrainConfig.from_dict({"model": {"tiny": {}, "add_region_geometry": True},
                               "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})
