"""``check_by_group_head``: each mask answered to a text prompt is asked of the group head (or of the model's text
check head, when it has one) as the one candidate of the same text, and dropped below the threshold (that drop:
tests/test_answer_checks.py)."""
import numpy as np
import pytest
import torch

from anyref import AnyRef
from anyref.config import AnyRefConfig
from anyref.synthref import SynthRef


def test_the_check_setting_is_validated(tiny_model):
    llava = tiny_model.config.llava
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="check_by_group_head"):
            AnyRefConfig(llava=llava, check_by_group_head=bad)
    with pytest.raises(ValueError, match="group_by_obj"):
        AnyRefConfig(llava=llava, check_by_group_head=0.5, group_by_obj=True, obj_nowhere=True,
                     obj_location_prompt=True)


def _record(masks: list, probabilities: list, target) -> dict:
    return {"masks": np.array(masks, dtype=bool).reshape(-1, 4, 4), "probabilities": np.array(probabilities),
            "target": np.asarray(target, dtype=bool)}


def test_the_probe_scores_each_threshold_as_the_check_would():
    from eval.group_check_probe import scores_at

    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[2:, :2] = True, True  # 8 and 4 pixels, disjoint
    text = [_record([a], [0.9], a), _record([b], [0.2], a)]  # the right object, sure; a wrong one, unsure
    no_target = [_record([b], [0.3], np.zeros((4, 4))), _record([], [], np.zeros((4, 4)))]
    off = scores_at(text, no_target, None)
    assert off["text_ciou"] == pytest.approx(8 / 20) and off["no_target_no_mask_rate"] == 0.5
    checked = scores_at(text, no_target, 0.5)  # the unsure masks are dropped
    assert checked["text_ciou"] == pytest.approx(8 / 16) and checked["text_found_rate"] == 0.5
    assert checked["no_target_no_mask_rate"] == 1.0 and checked["sum"] == pytest.approx(8 / 16 + 1.0)
    # gRefCOCO's gIoU: per-prompt IoUs (1, 0 | 0, 1) off, and (1, 0 | 1, 1) with the check
    assert off["giou"] == pytest.approx(0.5) and checked["giou"] == pytest.approx(0.75)


def test_the_probe_counts_an_answer_of_an_undrawn_mask_as_answered_as_eval_does():
    from eval.group_check_probe import scores_at

    # `anyref eval` reads the model's flag (SegmentResult.found: some mask answered), not the pixels: an <obj>
    # whose mask drew nothing (a mask the CRF emptied, say; the check never drops one, probability 1) is an answer
    blank, none = np.zeros((4, 4), bool), np.zeros((4, 4))
    no_target = [_record([blank], [1.0], none), _record([], [], none)]
    text = [_record([blank], [1.0], np.ones((4, 4)))]
    scores = scores_at(text, no_target, 0.5)
    assert scores["no_target_no_mask_rate"] == 0.5 and scores["text_found_rate"] == 1.0
    assert scores["giou"] == pytest.approx((0 + 0 + 1) / 3)


def test_the_probe_runs_on_a_model_and_restores_its_setting(tiny_model):
    from eval.group_check_probe import group_check_probe

    tiny_model.set_check_by_group_head(0.4)
    try:
        run = group_check_probe(tiny_model, n=2, split="val", thresholds=(0.3, 0.6))
        assert tiny_model.config.check_by_group_head == 0.4
    finally:
        tiny_model.set_check_by_group_head(None)
    assert set(run.metrics["by_threshold"]) == {"0.3", "0.6"} and run.metrics["chosen"] in (0.3, 0.6)
    assert run.counts["text"]["samples"] == 2


def test_without_a_check_head_the_check_is_selects_probability(tiny_model):
    sample = SynthRef().split("val", "text", 1)[0]
    masks = np.stack([sample.masks[0], ~sample.masks[0]])
    by_select = [tiny_model.select(sample.image, sample.references, candidates=mask[None], allow_untrained=True)
                 .candidate_scores[0] for mask in masks]
    np.testing.assert_allclose(tiny_model.check_scores(sample.image, sample.references, masks, allow_untrained=True),
                               by_select, atol=1e-4)
    with pytest.raises(ValueError, match="no masks given"):
        tiny_model.check_scores(sample.image, sample.references)


def test_a_text_check_head_answers_the_check_and_select_stays_the_group_heads():
    model = AnyRef.from_pretrained("synthref-tiny")
    model.set_check_by_group_head(None)
    sample = next(s for s in SynthRef().split("val", "text", 10) if s.meta["kind"] != "relational")
    answer = model.segment(sample.image, sample.references)
    assert answer.found
    by_select = [model.select(sample.image, sample.references, candidates=mask[None]).candidate_scores[0]
                 for mask in answer.masks]
    check_head = model.add_text_check_head()
    check_head.load_state_dict(model.group_head.state_dict())  # the check now reads the group head's weights
    np.testing.assert_allclose(model.check_scores(sample.image, sample.references, answer.masks), by_select,
                               atol=1e-4)
    with torch.no_grad():
        check_head.mlp[-1].bias -= 20.0  # the check head now rejects everything
    assert (model.check_scores(sample.image, sample.references, answer.masks) < 1e-3).all()
    assert model.select(sample.image, sample.references, candidates=answer.masks[:1]).candidate_scores[0] == \
        pytest.approx(by_select[0], abs=1e-4)
    model.set_check_by_group_head(0.5)
    assert not model.segment(sample.image, sample.references).found
    model.replace_group_head(group_head_reads_geometry=model.config.group_head_reads_geometry)  # the same kind
    assert model.text_check_head is check_head and model.config.check_by_group_head == 0.5
    with pytest.warns(UserWarning, match="text check head, of the old kind, is removed"):
        model.replace_group_head(group_head_reads_geometry=not model.config.group_head_reads_geometry)
    assert model.text_check_head is None and not model.config.text_check_head
    assert model.config.check_by_group_head is None


def test_the_probe_interval_says_when_the_check_costs_text_answers():
    from eval.group_check_probe import text_ciou_interval

    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[2:, :2] = True, True
    right = [_record([a], [0.9], a) for _ in range(20)]
    assert text_ciou_interval(right, 0.5) == [0.0, 0.0]  # nothing dropped: no difference in any resample
    unsure_right = [_record([a], [0.2], a) for _ in range(5)]
    low, high = text_ciou_interval(right + unsure_right, 0.5)
    assert high < 0.0  # right answers dropped: text cIoU is lower in every resample
    wrong = [_record([b], [0.2], a) for _ in range(5)]
    assert text_ciou_interval(right + wrong, 0.5)[0] >= 0.0  # only wrong answers dropped: never lower
