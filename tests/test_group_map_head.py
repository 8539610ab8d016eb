"""The image-map group head: which cells a candidate covers, how candidates score from the map, the per-cell
loss (empty groups included), batching, learning prompt-dependent groups, and swapping it into a finished model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.group_heads import GroupMapHead, group_cell_loss
from anyref.samples import ReferringSample
from tests.conftest import (
    assert_group_head_alone_learns, assert_select_batch_scores_as_alone, rect_mask, scene,
    select_after_save_and_load)

SHAPE = (96, 112)
MAP_HEAD = {"group_head_maps_image": True, "image_token_merge": 2}  # the tiny grid: 8 x 8 patches, 4 x 4 tokens


def _quadrants() -> np.ndarray:
    """Four candidates, the image's quadrants (top-left, top-right, bottom-left, bottom-right)."""
    h, w = SHAPE[0] // 2, SHAPE[1] // 2
    return np.stack([rect_mask(SHAPE, y, y + h, x, x + w) for y in (0, h) for x in (0, w)])


def _select(prompt: str, candidates: np.ndarray, selected=None, image_seed: int = 0) -> ReferringSample:
    selected = np.zeros(len(candidates), dtype=bool) if selected is None else np.asarray(selected)
    return ReferringSample(scene(image_seed), [prompt], task="select", candidates=candidates, selected=selected)


@pytest.fixture(scope="module")
def map_model():
    return build_tiny(seed=11, config_overrides=MAP_HEAD).eval()


def test_candidate_cells_are_the_share_of_each_image_token_a_candidate_covers(map_model):
    batch = collate([prepare(_select("all squares", _quadrants()), map_model.builder)], map_model.ids.pad)
    coverage, owners = map_model.candidate_cells(batch)
    assert map_model.llm_grid == 4 and coverage.shape == (4, 16) and owners.tolist() == [0, 0, 0, 0]
    # each quadrant of a stretched ("resize") image is its quadrant of the 4 x 4 token grid
    for index, (top, left) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        expected = torch.zeros(4, 4)
        expected[top:top + 2, left:left + 2] = 1.0
        torch.testing.assert_close(coverage[index], expected.flatten(), atol=0.02, rtol=0)  # the warp blurs edges


def test_a_candidate_scores_the_mean_of_its_cells_weighted_by_its_share_of_each():
    cell_logits = torch.tensor([[1.0, 3.0, -2.0, 0.0], [4.0, 4.0, 4.0, -4.0]])
    coverage = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    logits = GroupMapHead.forward(cell_logits, coverage, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(logits, torch.tensor([2.0, 0.5, -4.0]))


def test_the_cell_loss_targets_the_members_cover_and_an_empty_group_is_zero_everywhere():
    cell_logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, -0.2, 1.0]])
    coverage = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.75, 1.0], [1.0, 1.0, 1.0]])
    owners, selected = torch.tensor([0, 0, 1]), torch.tensor([True, True, False])
    # sample 0: members cover cell 1 by 0.5 + 0.75, capped at 1; sample 1 has no member
    cover = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(cell_logits, cover)
    torch.testing.assert_close(group_cell_loss(cell_logits, coverage, owners, selected), expected)
    assert float(group_cell_loss(cell_logits, coverage, owners, ~selected)) != pytest.approx(float(expected))


def test_batched_logits_equal_each_sample_alone(map_model):
    samples = [_select("all squares", _quadrants()[:2]),
               _select("everything left of the red circle", _quadrants(), image_seed=1)]
    assert assert_select_batch_scores_as_alone(map_model, samples).shape == (6,)


def test_the_head_alone_learns_groups_that_only_the_prompt_tells_apart():
    """Same image, same candidates, three prompts (one asking for nothing): training the map head alone (the
    rest of the model frozen) must select each prompt's group, the empty one included."""
    groups = {"all squares": [True, False, False, True], "all circles": [False, True, True, False],
              "all stars": [False, False, False, False]}
    assert_group_head_alone_learns(build_tiny(seed=12, config_overrides=MAP_HEAD), groups, _quadrants())


def test_replace_group_head_with_a_map_head_saves_loads_and_refuses_mixing_kinds(tmp_path):
    model = build_tiny(seed=13, config_overrides={"image_token_merge": 2}).eval()
    model.replace_group_head(group_head_maps_image=True)
    assert isinstance(model.group_head, GroupMapHead)
    assert isinstance(select_after_save_and_load(model, tmp_path / "m", _quadrants()).group_head, GroupMapHead)
    with pytest.raises(ValueError, match="group head of its own"):
        model.config.replace(group_head_attends_prompt=True)


def test_the_training_loss_adds_the_cell_term_and_logs_it_apart(map_model):
    samples = [_select("all squares", _quadrants(), [True, False, False, True]), _select("all stars", _quadrants())]
    terms = map_model(collate([prepare(s, map_model.builder) for s in samples], map_model.ids.pad)).terms
    assert 0.0 < float(terms["group_cells"]) < float(terms["group"])
