"""Mask groups split by rule (eval/group_rules.py): its overall figures are ``anyref eval synthref``'s, and the
rules add up."""
import pytest

from anyref import AnyRef
from eval.group_rules import group_rules
from eval.synthref_eval import evaluate_synthref


def test_group_rules_split_the_group_task_of_the_synthref_evaluation():
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    run = group_rules(model, n=12)
    whole = evaluate_synthref(model, n=12, tasks=["group"])["metrics"]["group"]
    for name in ("ciou", "giou", "n_acc"):
        assert run.metrics["all"][name] == pytest.approx(whole[name])
    rules = {k: v for k, v in run.metrics.items() if k != "all"}
    assert sum(m["samples"] for m in rules.values()) == run.metrics["all"]["samples"] == 12
    assert sum(run.counts.values()) == 12 and len(rules) >= 3
    assert sum(m["empty_groups"] for m in rules.values()) == run.metrics["all"]["empty_groups"]
    assert all(0.0 <= m["exact"] <= 1.0 and m["missed"] >= 0 and m["extra"] >= 0 for m in rules.values())
    assert run.settings["decided_by"] == ("obj" if model.config.group_by_obj else "group_head")
