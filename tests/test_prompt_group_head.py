"""The prompt-attending group head: what it reads, that batching does not change it, that it tells prompts apart
over the same candidates, swapping it into a finished model, and training it alone."""
import json

import numpy as np
import pytest
import torch

from anyref import AnyRef, MaskRef
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.group_heads import GEOMETRY_INPUTS, GroupHead, PromptGroupHead, candidate_geometry
from anyref.samples import ReferringSample
from tests.conftest import (
    assert_group_head_alone_learns, assert_select_batch_scores_as_alone, rect_mask, scene,
    select_after_save_and_load)
from train.config import TrainConfig
from train.model_factory import build_model
from train.trainable import apply_policies

SHAPE = (96, 112)
PROMPT_HEAD = {"group_head_attends_prompt": True}


def _candidates(count: int = 3) -> np.ndarray:
    boxes = [(10, 40, 10, 40), (50, 90, 60, 100), (5, 30, 70, 110), (60, 90, 5, 40)]
    return np.stack([rect_mask(SHAPE, *box) for box in boxes[:count]])


def _select(references, candidates, selected=None, image_seed=0) -> ReferringSample:
    selected = np.zeros(len(candidates), dtype=bool) if selected is None else np.asarray(selected)
    return ReferringSample(scene(image_seed), references, task="select", candidates=candidates, selected=selected)


@pytest.fixture(scope="module")
def prompt_model():
    return build_tiny(seed=5, config_overrides=PROMPT_HEAD).eval()


def test_prompt_positions_are_the_words_and_references_not_the_image_or_candidates(prompt_model):
    sample = _select(["everything left of", MaskRef(_candidates()[0])], _candidates())
    batch = collate([prepare(sample, prompt_model.builder)], prompt_model.ids.pad)
    ids = batch.input_ids[0][prompt_model.prompt_positions(batch)[0]].tolist()
    ids_of = prompt_model.ids
    assert ids.count(ids_of.mask_ref_pre) == 1 and ids.count(ids_of.ref_feature) == 1  # the MaskRef, once
    assert ids_of.image not in ids and ids_of.mask_pool_pre not in ids  # no patches, no candidates
    words = prompt_model.tokenizer("everything left of", add_special_tokens=False).input_ids
    text = ids[:ids.index(ids_of.mask_ref_pre)]
    assert any(text[i:i + len(words)] == words for i in range(len(text)))


def test_batched_logits_equal_each_sample_alone(prompt_model):
    """Samples of different prompt lengths and candidate counts, padded together, score as they do alone."""
    samples = [_select(["all squares"], _candidates(2)),
               _select(["everything the same colour as", MaskRef(_candidates()[1])], _candidates(4), image_seed=1)]
    assert assert_select_batch_scores_as_alone(prompt_model, samples).shape == (6,)


def test_geometry_is_the_candidates_place_against_the_reference_mask():
    places = torch.tensor([[0.2, 0.5, 0.1, 0.1, 0.1], [0.8, 0.5, 0.2, 0.2, 0.2]])
    reference = torch.tensor([0.5, 0.5, 0.1, 0.1, 0.1])
    with_reference = candidate_geometry(places, reference)
    assert with_reference.shape == (2, GEOMETRY_INPUTS)
    # the difference in x says which side of the reference each candidate lies on; the last input: a reference
    assert with_reference[0, 10] < 0 < with_reference[1, 10] and with_reference[:, -1].tolist() == [10.0, 10.0]
    alone = candidate_geometry(places, None)
    assert torch.equal(alone[:, :5], with_reference[:, :5]) and not alone[:, 5:].any()


def test_a_geometry_head_reads_the_candidates_places():
    model = build_tiny(seed=5, config_overrides={**PROMPT_HEAD, "group_head_reads_geometry": True}).eval()
    assert model.group_head.geometry
    ref = MaskRef(_candidates()[1])
    samples = [_select(["everything left of", ref], _candidates(4)), _select(["all squares"], _candidates(2))]
    assert assert_select_batch_scores_as_alone(model, samples).shape == (6,)
    batch = collate([prepare(samples[0], model.builder)], model.ids.pad)
    *_, geometry = model.prompt_head_inputs(*model.select_states(batch), batch)
    # the second candidate is the reference mask itself: no difference from it
    assert geometry.shape == (1, 4, GEOMETRY_INPUTS) and not geometry[0, 1, 10:15].any()
    width = 2 * model.llava.config.text_config.hidden_size
    with pytest.raises(ValueError, match="reads the candidates' geometry"):
        model.group_head(torch.zeros(1, 2, width), torch.zeros(1, 1, width), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs group_head_attends_prompt"):
        build_tiny(seed=5, config_overrides={"group_head_reads_geometry": True})


def test_the_head_alone_learns_groups_that_only_the_prompt_tells_apart():
    """Same image, same candidates, two prompts asking for different groups: training the head alone (the rest
    of the model frozen) must select each prompt's group."""
    groups = {"all squares": [True, False, True], "all circles": [False, True, False]}
    assert_group_head_alone_learns(build_tiny(seed=6, config_overrides=PROMPT_HEAD), groups, _candidates())


def test_replace_group_head_swaps_in_an_untrained_head_that_saves_and_loads(tmp_path):
    model = build_tiny(seed=7).eval()
    assert isinstance(model.group_head, GroupHead)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("group_head.")}
    model.replace_group_head(**PROMPT_HEAD)
    assert isinstance(model.group_head, PromptGroupHead) and model.config.group_head_attends_prompt
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())  # nothing else changed
    again = select_after_save_and_load(model, tmp_path / "m", _candidates())
    assert isinstance(again.group_head, PromptGroupHead)
    with pytest.raises(ValueError, match="group_head_"):
        model.replace_group_head(refocus_lambda=1.0)
    with pytest.raises(ValueError, match="leave group_head_reads_token off"):
        model.config.replace(group_head_reads_token=True)


def test_the_group_head_policy_trains_the_prompt_head_alone_and_refuses_the_ras_head(tmp_path):
    directory = build_tiny(seed=8).save_pretrained(tmp_path / "finished")
    data = {"model": {"init_from": str(directory), "new_group_head": PROMPT_HEAD},
            "mixture": {"synthref": {"ratio": 1.0, "tasks": {"group": 1}}},
            "stages": [{"name": "groups", "steps": 1, "trainable": "group_head"}]}
    config = TrainConfig.from_dict(data)
    model = build_model(config)
    assert isinstance(model.group_head, PromptGroupHead)
    groups = apply_policies(model, {"group_head"})
    assert list(groups) == ["group_head"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("group_head.") for n in trainable)
    with pytest.raises(ValueError, match="trains no parameter"):
        apply_policies(AnyRef.from_pretrained(directory), {"group_head"})
    with pytest.raises(ValueError, match="new_group_head"):
        TrainConfig.from_dict({**data, "model": {"tiny": {}, "new_group_head": PROMPT_HEAD}})
    assert json.loads((directory / "config.json").read_text()).get("group_head_attends_prompt") is False
