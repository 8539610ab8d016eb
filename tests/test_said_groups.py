"""Groups decided by the model's own answer (``group_obj_answer="generated"``): SynthRef's "said" group answers,
which restate each rule by what it selects, the config checks, and ``select`` scoring candidates with the mask of
the first ``<obj>`` of the answer ``segment`` gives."""
import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.synthref import SynthRef, SynthRefConfig
from anyref.synthref.vocabulary import PLURALS
from anyref.outputs import NOWHERE
from train.config import TrainConfig

from tests.conftest import fit, rect_mask, scene

GENERATED = {"image_token_merge": 2, "obj_location_prompt": True, "obj_nowhere": True, "group_by_obj": True,
             "group_obj_answer": "generated"}
SHAPE = (96, 112)


def test_said_group_answers_restate_the_rule_by_what_it_selects():
    picks, rules = {"group": 1}, set()
    for index in range(60):
        said = SynthRef(SynthRefConfig(seed=5, group_answer="said")).sample_at(0, index, picks)
        plain = SynthRef(SynthRefConfig(seed=5, group_answer="obj")).sample_at(0, index, picks)
        # the same draw as "obj" (so the two presets train on the same scenes and masks); only the words differ
        assert said.references[0] == plain.references[0] and np.array_equal(said.masks, plain.masks)
        phrase, rule = said.answer[0], said.meta["rule"]
        assert said.answer == [phrase, " ", OBJ, "."] and said.task == "segment"
        reference = said.meta["ref_object"]
        if rule == "same_colour":
            assert phrase == f"all other {said.meta['objects'][reference]['colour']} objects"
        elif rule == "same_shape":
            assert phrase == f"all other {PLURALS[said.meta['objects'][reference]['shape']]}"
        else:  # rules that name an attribute, and places relative to a mask, are said as asked
            assert phrase == said.references[0]
        rules.add(rule)
    assert rules == {"all_shape", "all_colour", "all_size", "same_colour", "same_shape", "spatial"}


def test_generated_group_answers_are_checked():
    with pytest.raises(ValueError, match="group_obj_answer must be one of"):
        build_tiny(seed=0, config_overrides={**GENERATED, "group_obj_answer": "spoken"})
    with pytest.raises(ValueError, match="needs group_by_obj"):
        build_tiny(seed=0, config_overrides={**GENERATED, "group_by_obj": False})
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    with pytest.raises(ValueError, match='needs "group_by_obj"'):
        TrainConfig.from_dict({"model": {"init_from": "somewhere", "group_obj_answer": "generated"},
                               "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})


@pytest.fixture(scope="module")
def taught():
    """(a tiny model taught to answer "all squares <obj>." with candidates 1 and 2 as its mask, image, candidates)."""
    model, image = build_tiny(seed=3, config_overrides=GENERATED), scene(4)
    candidates = np.stack([rect_mask(SHAPE, 10, 40, 10, 40), rect_mask(SHAPE, 50, 90, 60, 100),
                           rect_mask(SHAPE, 5, 30, 70, 110)])
    sample = ReferringSample(image, ["all squares"], "segment", ["all squares", " ", OBJ, "."],
                             (candidates[1] | candidates[2])[None])
    fit(model, collate([prepare(sample, model.builder)], model.ids.pad), 80, lr=3e-3, clip=1.0)
    return model, image, candidates


def test_select_by_a_generated_answer_scores_candidates_with_its_first_obj_mask(taught):
    model, image, candidates = taught
    answer = model.segment(image, "all squares")
    assert answer.text.startswith("all squares") and answer.found  # what select has to read
    result = model.select(image, "all squares", candidates=candidates)
    assert result.text == answer.text
    probability = 1.0 / (1.0 + np.exp(-answer.logits[0].astype(np.float64)))
    expected = (candidates * probability).reshape(3, -1).sum(1) / candidates.reshape(3, -1).sum(1)
    np.testing.assert_allclose(result.candidate_scores, expected, atol=1e-5)
    np.testing.assert_array_equal(result.indices, [1, 2])  # the taught group


def test_a_generated_obj_placed_nowhere_selects_nothing(taught):
    model, image, candidates = taught
    nowhere = model.obj_locator.nowhere
    saved = nowhere.bias.detach().clone()
    try:
        with torch.no_grad():
            nowhere.bias.fill_(50.0)  # the nowhere place wins every map
        result = model.select(image, "all squares", candidates=candidates)
    finally:
        with torch.no_grad():
            nowhere.bias.copy_(saved)
    assert result.text.startswith("all squares") and NOWHERE in result.text
    assert not result.found and not result.candidate_scores.any() and not result.union.any()
