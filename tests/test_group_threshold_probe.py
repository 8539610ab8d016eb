"""The group-threshold probe (eval/group_threshold_probe.py): at select's threshold it scores exactly what
``anyref eval synthref`` scores, and its other thresholds choose the groups ``select`` would choose there."""
import numpy as np
import pytest

from anyref import AnyRef
from anyref.group_heads import group_members
from eval.group_threshold_probe import (
    empty_threshold_scores, group_threshold_probe, group_threshold_scores, main, rank_auc,
)
from eval.results import read_results
from eval.synthref_eval import evaluate_synthref


def test_the_model_threshold_is_what_the_evaluation_scores(tmp_path):
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    threshold = model.config.group_threshold
    run = group_threshold_probe(model, n=6, split="val", thresholds=(0.3,))  # and the model's own
    reference = evaluate_synthref(model, n=6, tasks=["group"], split="val")["metrics"]["group"]
    for name in ("ciou", "giou", "n_acc", "t_acc"):
        assert run.metrics["group"]["by_threshold"][str(threshold)][name] == pytest.approx(reference[name], abs=1e-6)
    model.set_group_threshold(0.3)  # the probe's other threshold is select's there
    again = evaluate_synthref(model, n=6, tasks=["group"], split="val")["metrics"]["group"]
    assert run.metrics["group"]["by_threshold"]["0.3"]["ciou"] == pytest.approx(again["ciou"], abs=1e-6)
    # and each pair of thresholds is what select chooses with them
    model.set_group_empty_threshold(0.97)
    paired = evaluate_synthref(model, n=6, tasks=["group"], split="val")["metrics"]["group"]
    both = group_threshold_probe(model, n=6, split="val", thresholds=(0.3,))
    assert both.settings["empty_threshold"] == 0.97
    for name in ("ciou", "giou", "n_acc", "t_acc"):
        assert both.metrics["group"]["by_threshold"]["0.3"][name] == pytest.approx(paired[name], abs=1e-6)
        assert both.metrics["group"]["by_empty_threshold"]["0.97"]["0.3"][name] == pytest.approx(paired[name],
                                                                                                   abs=1e-6)
    rules = run.metrics["by_rule"]
    assert sum(r["samples"] for r in rules.values()) == 6 and set(rules) <= {
        "all_colour", "all_shape", "all_size", "same_colour", "same_shape", "spatial"}
    assert main(["--n", "2", "--out", str(tmp_path / "probe.json")]) == 0
    written = read_results(tmp_path / "probe.json")
    assert written["counts"]["group"]["samples"] == 2 and written["provenance"]["device"] == "cpu"


def test_group_threshold_scores():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2], masks[1, 2:] = True, True
    probabilities = [np.array([0.9, 0.6]), np.array([0.65, 0.2])]
    selected = [np.array([True, False]), np.array([False, False])]  # the second group is empty
    scores = group_threshold_scores(probabilities, [masks, masks], selected, thresholds=(0.5, 0.7))
    # at 0.5 the first picks both halves (IoU 1/2) and the second picks one (an empty group answered: N-acc 0)
    assert scores["0.5"] == {"ciou": 8 / (16 + 8), "giou": 0.25, "n_acc": 0.0, "t_acc": 1.0}
    # at 0.7 the first is exact and the second is answered empty
    assert scores["0.7"] == {"ciou": 1.0, "giou": 1.0, "n_acc": 1.0, "t_acc": 1.0}
    with pytest.raises(ValueError, match="one probability vector"):
        group_threshold_scores(probabilities, [masks], selected)
    # an empty threshold of 0.7 leaves the first group (0.9 passes it) and empties the second (0.65 does not)
    assert group_threshold_scores(probabilities, [masks, masks], selected, (0.5,), 0.7)["0.5"] == {
        "ciou": 8 / 16, "giou": (0.5 + 1.0) / 2, "n_acc": 1.0, "t_acc": 1.0}
    grid = empty_threshold_scores(probabilities, [masks, masks], selected, thresholds=(0.5, 0.7))
    assert set(grid) == {"0.5", "0.7"} and set(grid["0.5"]) == {"0.5"} and set(grid["0.7"]) == {"0.5", "0.7"}
    assert grid["0.7"]["0.7"] == scores["0.7"] and grid["0.5"]["0.5"] == scores["0.5"]


def test_group_members():
    probabilities = np.array([0.95, 0.6, 0.2])
    assert group_members(probabilities, 0.5).tolist() == [True, True, False]
    assert group_members(probabilities, 0.5, 0.9).tolist() == [True, True, False]  # 0.95 passes the empty one
    assert group_members(probabilities, 0.5, 0.97).tolist() == [False, False, False]
    assert group_members(probabilities, 0.7, 0.1).tolist() == [True, False, False]  # below t: t decides


def test_rank_auc():
    assert rank_auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and rank_auc([0.1], [0.9]) == 0.0
    assert rank_auc([0.5, 0.9], [0.5]) == 0.75  # a tie counts half
    assert rank_auc([0.5], []) is None
