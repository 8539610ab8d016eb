"""The mask-error breakdown (eval/mask_errors.py): the case of a prediction, the split of the IoU gap, and a run."""
import numpy as np
import pytest

from anyref import AnyRef
from eval.mask_errors import classify_prediction, mask_errors, summarise
from tests.conftest import rect_mask

SHAPE = (40, 40)
OBJECTS = np.stack([rect_mask(SHAPE, 0, 10, 0, 10), rect_mask(SHAPE, 20, 40, 20, 40)])


def test_a_prediction_is_the_object_it_overlaps_best():
    half_of_the_target = rect_mask(SHAPE, 0, 10, 0, 5)
    right = classify_prediction(half_of_the_target, OBJECTS, [0])
    assert right["case"] == "right_object" and right["iou"] == pytest.approx(0.5)
    assert right["precision"] == 1.0 and right["recall"] == pytest.approx(0.5)
    wrong = classify_prediction(rect_mask(SHAPE, 20, 30, 20, 40), OBJECTS, [0])
    assert wrong["case"] == "wrong_object" and wrong["iou"] == 0.0
    assert classify_prediction(np.zeros(SHAPE, bool), OBJECTS, [1])["case"] == "no_mask"
    # several targets: matching any one of them is the right object
    assert classify_prediction(OBJECTS[1], OBJECTS, [0, 1])["case"] == "right_object"
    # a wrong object that the prompt named as its landmark is counted as such; a right one never is
    assert classify_prediction(OBJECTS[1], OBJECTS, [0], landmark_ids=[1])["on_landmark"]
    assert not classify_prediction(OBJECTS[1], OBJECTS, [0])["on_landmark"]
    assert not classify_prediction(OBJECTS[0], OBJECTS, [0], landmark_ids=[1])["on_landmark"]


def test_the_iou_gap_splits_into_its_cases():
    rows = [{"case": "right_object", "iou": 0.5, "precision": 1.0, "recall": 0.5},
            {"case": "right_object", "iou": 0.9, "precision": 0.9, "recall": 1.0},
            {"case": "wrong_object", "iou": 0.1, "precision": 0.2, "recall": 0.1},
            {"case": "no_mask", "iou": 0.0, "precision": 0.0, "recall": 0.0}]
    out = summarise(rows)
    assert out["mean_iou"] == pytest.approx(0.375)
    assert sum(out["iou_lost"].values()) == pytest.approx(1 - out["mean_iou"])
    assert out["iou_lost"]["right_object"] == pytest.approx(0.6 / 4)
    assert out["share"] == {"right_object": 0.5, "wrong_object": 0.25, "no_mask": 0.25}
    assert out["case_iou"]["right_object"] == pytest.approx(0.7)
    assert out["right_object_recall"] == pytest.approx(0.75)
    assert out["share_on_landmark"] == 0.0
    assert summarise(rows[:2] + [dict(rows[2], on_landmark=True)])["share_on_landmark"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no samples"):
        summarise([])


def test_a_run_on_the_shipped_model_covers_its_samples():
    run = mask_errors(AnyRef.from_pretrained("synthref-tiny").eval(), ("text", "box"), n=3)
    for task in ("text", "box"):
        assert run.counts[task]["samples"] == 3
        assert sum(run.metrics[task]["share"].values()) == pytest.approx(1.0)
    # text prompts are split by kind: the kinds' sample counts add up, each kind's shares too
    assert sum(run.counts["text"]["by_kind"].values()) == 3 and "by_kind" not in run.metrics["box"]
    for figures in run.metrics["text"]["by_kind"].values():
        assert sum(figures["share"].values()) == pytest.approx(1.0)
        assert figures["share_on_landmark"] <= figures["share"]["wrong_object"]
    with pytest.raises(ValueError, match="whose answer is masks"):
        mask_errors(None, ("no_target",))


def test_the_command_runs_the_model_with_the_inference_settings_it_is_given(tmp_path, capsys):
    """Like every SynthRef diagnostic, the command takes the inference flags `anyref eval` takes (here the
    ranking off, and the text check on or off): the answers are then the checked or unchecked ones, and the results
    file keeps the flags."""
    import json

    from eval.mask_errors import main

    files = {}
    unranked = ["--rank-text-answers", "off"]
    for check in ("0.85", "off"):
        files[check] = tmp_path / f"errors-{check}.json"
        assert main(["--tasks", "text", "--n", "12", "--out", str(files[check]), *unranked,
                     "--check-by-group-head", check]) == 0
    checked, unchecked = (json.loads(files[k].read_text()) for k in ("0.85", "off"))
    assert unchecked["command"].endswith("--rank-text-answers off --check-by-group-head off")
    # the check at 0.85 (shipped before the ranking) drops some answers to these prompts; off, none is dropped
    assert unchecked["metrics"]["text"]["share"]["no_mask"] < checked["metrics"]["text"]["share"]["no_mask"]
