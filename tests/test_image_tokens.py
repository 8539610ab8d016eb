"""Merging image tokens before the LLM: which patches each merged token holds, its average-pooling start, and a
model built with it (prompt length, training gradients, save/load). The learned position map: where image and box
tokens read it, its no-op start, and a model built with it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyref import OBJ, AnyRef, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.image_tokens import ImageTokenMerger, ImageTokenPositions
from tests.conftest import rect_mask, scene

MERGE = {"image_token_merge": 2}


@pytest.fixture(scope="module")
def merged_model():
    return build_tiny(seed=3, config_overrides=MERGE).eval()


def test_each_merged_token_reads_exactly_its_block():
    merger = ImageTokenMerger(2, hidden=8)
    torch.nn.init.normal_(merger.linear.weight)  # away from the mean start, so any patch it reads shows
    base = merger(torch.zeros(1, 36, 8))
    for row, col in ((0, 0), (1, 4), (5, 5), (3, 2)):
        tokens = torch.zeros(1, 36, 8)
        tokens[0, row * 6 + col] = 1.0
        changed = (merger(tokens) - base).abs().sum(-1)[0] > 0  # over the 3 x 3 merged grid
        assert changed.nonzero().flatten().tolist() == [(row // 2) * 3 + col // 2]


def test_an_untrained_merger_is_block_average_pooling():
    tokens = torch.randn(2, 64, 5)
    grid = tokens.transpose(1, 2).reshape(2, 5, 8, 8)
    pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # 2 x 16 x 5
    assert torch.allclose(ImageTokenMerger(2, hidden=5)(tokens), pooled, atol=1e-6)


def test_merge_must_divide_the_patch_grid():
    with pytest.raises(ValueError, match="does not divide"):
        build_tiny(config_overrides={"image_token_merge": 3})  # the default tiny grid is 8 x 8
    with pytest.raises(ValueError, match="image_token_merge must be >= 1"):
        build_tiny(config_overrides={"image_token_merge": 0})
    with pytest.raises(ValueError, match="multiple of 2"):
        ImageTokenMerger(2, hidden=4)(torch.zeros(1, 9, 4))


def test_the_prompt_quotes_the_merged_grid_and_training_reaches_the_merger(merged_model):
    assert merged_model.llm_grid * 2 == merged_model.grid
    image = scene(1)
    sample_mask = rect_mask(image.shape[:2], 20, 60, 10, 50)
    sample = ReferringSample(image, ["the box", Box(10, 20, 50, 60)], "segment", ["it ", OBJ, "."],
                             sample_mask[None])
    batch = collate([prepare(sample, merged_model.builder)], merged_model.ids.pad)
    assert int((batch.input_ids == merged_model.ids.image).sum()) == merged_model.llm_grid ** 2
    model = build_tiny(seed=3, config_overrides=MERGE).train()
    model(batch).loss.backward()
    assert model.image_merger.linear.weight.grad.abs().sum() > 0
    assert model.llava.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_a_merged_model_survives_save_and_load(tmp_path):
    model = build_tiny(seed=4, config_overrides=MERGE)
    with torch.no_grad():
        model.image_merger.linear.weight.mul_(1.5)  # not the start value, so loading must restore it
    loaded = AnyRef.from_pretrained(model.save_pretrained(tmp_path / "merged"))
    assert loaded.config.image_token_merge == 2 and loaded.llm_grid == model.llm_grid
    assert torch.equal(loaded.image_merger.linear.weight, model.image_merger.linear.weight)
    image = scene(2)
    first, again = model.segment(image, "the square"), loaded.segment(image, "the square")
    assert first.text == again.text and np.array_equal(first.masks, again.masks)


def test_each_image_token_gets_its_cells_position():
    positions = ImageTokenPositions(grid=3, hidden=4, cell=16)
    torch.nn.init.normal_(positions.table)
    tokens = torch.randn(2, 9, 4)
    added = positions.add_to_image(tokens) - tokens
    for row in range(3):
        for col in range(3):
            assert torch.allclose(added[:, row * 3 + col], positions.table[:, row, col].expand(2, 4))
    with pytest.raises(ValueError, match="position map"):
        positions.add_to_image(torch.zeros(1, 16, 4))


def test_a_boxs_tokens_read_the_map_where_the_box_lies():
    """With a map linear in x and y (which bilinear sampling keeps exact), a box token's position is the map's
    value at its sample points: box tokens on the left read smaller x than on the right, and their mean is the
    value at the box's centre."""
    grid, cell = 8, 16
    positions = ImageTokenPositions(grid=grid, hidden=2, cell=cell)
    with torch.no_grad():
        centres = torch.arange(grid, dtype=torch.float32)  # cell i's centre lies at (i + 0.5) * cell pixels
        positions.table[0] = centres[None, :].expand(grid, grid)  # channel 0: x in cells
        positions.table[1] = centres[:, None].expand(grid, grid)  # channel 1: y in cells
    boxes = torch.tensor([[0.0, 16.0, 24.0, 48.0, 72.0], [1.0, 80.0, 40.0, 112.0, 56.0]])
    with torch.no_grad():
        sampled = positions.at_boxes(boxes, pool=4)  # 2 x 16 x 2
    assert sampled.shape == (2, 16, 2)
    for box, tokens in zip(boxes, sampled):
        x_centre, y_centre = (box[1] + box[3]) / 2 / cell - 0.5, (box[2] + box[4]) / 2 / cell - 0.5
        assert tokens[:, 0].mean() == pytest.approx(float(x_centre), abs=1e-4)
        assert tokens[:, 1].mean() == pytest.approx(float(y_centre), abs=1e-4)
        grid_x = tokens[:, 0].view(4, 4)  # the tokens' raster order: x grows along each row
        assert (grid_x[:, 1:] > grid_x[:, :-1]).all()


def test_a_position_map_starts_as_a_no_op_and_trains_and_survives_save_and_load(tmp_path):
    image = scene(5)
    sample = ReferringSample(image, ["the thing in", Box(10, 20, 50, 60)], "segment", ["it ", OBJ, "."],
                             rect_mask(image.shape[:2], 20, 60, 10, 50)[None])
    plain = build_tiny(seed=6, config_overrides=MERGE).train()
    placed = build_tiny(seed=6, config_overrides={**MERGE, "image_positions": True}).train()
    placed.load_state_dict(plain.state_dict(), strict=False)  # the same weights, the map at its zero start
    batch = collate([prepare(sample, placed.builder)], placed.ids.pad)
    torch.manual_seed(0)
    before = plain(batch).loss
    torch.manual_seed(0)
    loss = placed(batch).loss
    assert torch.allclose(loss, before)
    loss.backward()
    assert placed.image_positions.table.grad.abs().sum() > 0
    with torch.no_grad():
        placed.image_positions.table.normal_()
    loaded = AnyRef.from_pretrained(placed.eval().save_pretrained(tmp_path / "placed"))
    assert loaded.config.image_positions and torch.equal(loaded.image_positions.table, placed.image_positions.table)
    first, again = placed.segment(image, "the square"), loaded.segment(image, "the square")
    assert first.text == again.text and np.array_equal(first.masks, again.masks)


def test_a_training_config_adds_the_map_to_a_finished_model(tmp_path):
    """Added to a finished model by a continuation ("add_image_positions"), the zero map changes no answer, reaches
    the model's image tokens and its box tokens, and trains; it cannot be added twice, nor to a "tiny" model
    through the continuation key."""
    from train.config import TrainConfig
    from train.loop import lr_multipliers
    from train.model_factory import build_model
    from train.trainable import parameter_groups

    finished = build_tiny(seed=4, config_overrides=MERGE)
    directory = finished.save_pretrained(tmp_path / "finished")
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    config = TrainConfig.from_dict({"model": {"init_from": str(directory), "add_image_positions": True},
                                    "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})
    model = build_model(config).eval()
    assert model.config.image_positions and model.builder.config.image_positions
    assert model.image_positions.table.shape == (finished.obj_projection[0].weight.shape[1], 4, 4)
    image = scene(6)
    prompt = ["the thing in", Box(10, 20, 50, 60)]
    before, after = finished.eval().segment(image, prompt), model.segment(image, prompt)
    assert before.text == after.text and np.array_equal(before.masks, after.masks)
    sample = ReferringSample(image, prompt, "segment", ["it ", OBJ, "."],
                             rect_mask(image.shape[:2], 20, 60, 10, 50)[None])
    model.train()(collate([prepare(sample, model.builder)], model.ids.pad)).loss.backward()
    assert model.image_positions.table.grad.abs().sum() > 0
    # a part new in this run: its own parameter group, which a stage's new_layers_lr trains at its own rate
    groups = parameter_groups(model)
    assert groups["new_parts"] == [model.image_positions.table]
    assert all(p is not model.image_positions.table for p in groups["heads"])
    assert parameter_groups(AnyRef.from_pretrained(model.save_pretrained(tmp_path / "again")))["new_parts"] == []
    fast = TrainConfig.from_dict({**config.to_dict(), "stages": [{**stages[0], "lr": 1e-4, "new_layers_lr": 1e-2}]})
    heads, new = lr_multipliers(fast, ["heads", "new_parts"])
    assert new(0) == pytest.approx(100 * heads(0)) and heads(0) > 0
    with pytest.raises(ValueError, match="already has"):
        model.add_image_positions()
    with pytest.raises(ValueError, match='"add_image_positions"'):
        TrainConfig.from_dict({"model": {"tiny": {}, "add_image_positions": True},
                               "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})
