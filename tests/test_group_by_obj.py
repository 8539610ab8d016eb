"""Groups decided by an ``<obj>`` (``group_by_obj``): SynthRef's groups posed as "segment" samples, the config
checks, and ``select`` scoring candidates by the teacher-forced ``<obj>``'s mask in one LLM forward."""
import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.synthref import SynthRef, SynthRefConfig
from train.config import TrainConfig
from train.model_factory import build_model

from tests.conftest import rect_mask, scene
from tests.test_select import ForwardCounter

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True}
NOWHERE = {**LOCATED, "obj_nowhere": True}
SHAPE = (96, 112)


def _candidates() -> np.ndarray:
    return np.stack([rect_mask(SHAPE, 10, 40, 10, 40), rect_mask(SHAPE, 50, 90, 60, 100),
                     rect_mask(SHAPE, 5, 30, 70, 110)])


def _group_samples(seed: int, index: int):
    """(as "select", as "segment") for the same draw of SynthRef's group task."""
    picks = {"group": 1}
    return (SynthRef(SynthRefConfig(seed=seed)).sample_at(0, index, picks),
            SynthRef(SynthRefConfig(seed=seed, group_answer="obj")).sample_at(0, index, picks))


def test_synthref_groups_posed_as_segment_samples_mask_the_union_of_the_group():
    seen_empty = seen_full = False
    for index in range(40):
        select, segment = _group_samples(4, index)
        assert segment.task == "segment" and segment.answer == [OBJ, "."] and segment.candidates is None
        assert segment.references[0] == select.references[0] and np.array_equal(segment.image, select.image)
        assert segment.masks.shape == (1, *select.image.shape[:2])
        np.testing.assert_array_equal(segment.masks[0], select.candidates[select.selected].any(0)
                                      if select.selected.any() else np.zeros_like(segment.masks[0]))
        seen_empty |= not segment.masks.any()
        seen_full |= bool(segment.masks.any())
    assert seen_empty and seen_full  # both kinds among 40 draws (about 15% of attribute groups are empty)
    with pytest.raises(ValueError, match="group_answer"):
        SynthRefConfig(group_answer="mask")


def test_group_by_obj_needs_a_nowhere_place(tmp_path):
    with pytest.raises(ValueError, match="needs obj_nowhere"):
        build_tiny(seed=0, config_overrides={**LOCATED, "group_by_obj": True})
    with pytest.raises(ValueError, match="add_nowhere"):
        build_tiny(seed=0, config_overrides=LOCATED).decide_groups_by_obj()
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    with pytest.raises(ValueError, match='"group_by_obj"'):
        TrainConfig.from_dict({"model": {"tiny": {}, "group_by_obj": True}, "mixture": {"synthref": {"ratio": 1.0}},
                               "stages": stages})
    directory = build_tiny(seed=1, config_overrides=NOWHERE).save_pretrained(tmp_path / "nowhere")
    config = TrainConfig.from_dict({"model": {"init_from": str(directory), "group_by_obj": True},
                                    "mixture": {"synthref": {"ratio": 1.0, "group_answer": "obj"}}, "stages": stages})
    assert build_model(config).config.group_by_obj


def _model(nowhere_logit: float):
    """A tiny group_by_obj model whose nowhere place always loses (negative) or always wins (positive)."""
    model = build_tiny(seed=2, config_overrides={**NOWHERE, "group_by_obj": True})
    with torch.no_grad():
        model.obj_locator.nowhere.weight.zero_()
        model.obj_locator.nowhere.bias.fill_(nowhere_logit)
    return model


def test_select_by_obj_scores_each_candidate_by_the_obj_mask_in_one_forward():
    model, image, candidates = _model(-50.0), scene(3), _candidates()
    lm = ForwardCounter(model.llava.model.language_model)
    try:
        result = model.select(image, "all squares", candidates=candidates)
        model.select(image, "all squares", candidates=np.concatenate([candidates] * 8))
    finally:
        lm.remove()
    assert lm.calls == 2  # one LLM forward per call, for 3 and for 24 candidates
    # the same <obj> as training sees it: a teacher-forced "segment" sample answered "<obj>."
    sample = ReferringSample(image, ["all squares"], "segment", [OBJ, "."], np.zeros((1, *SHAPE), dtype=bool))
    with torch.no_grad():
        trained = model(collate([prepare(sample, model.builder)], model.ids.pad)).mask_logits[0][0].sigmoid()
    expected = (trained[None] * torch.from_numpy(candidates)).flatten(1).sum(1) / candidates.reshape(3, -1).sum(1)
    np.testing.assert_allclose(result.candidate_scores, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(result.indices, np.flatnonzero(expected.numpy() > 0.5))


def test_select_by_obj_answers_an_obj_placed_nowhere_with_an_empty_group():
    result = _model(50.0).select(scene(3), "all purple objects", candidates=_candidates())
    assert not result.found and result.masks.shape == (0, *SHAPE) and not result.candidate_scores.any()
    assert not result.union.any()
