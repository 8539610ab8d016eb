"""The group-head probe (eval/group_probe.py): the ridge probe itself, and a run on the shipped model."""
import numpy as np

from anyref import AnyRef
from eval.group_probe import probe_group_head, ridge_probe_accuracy


def test_ridge_probe_separates_separable_classes_and_not_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = rng.normal(size=(3, 8)) * 5
    points = centres[labels] + rng.normal(size=(300, 8))
    assert ridge_probe_accuracy(points[:200], labels[:200], points[200:], labels[200:]) == 1.0
    noise = rng.normal(size=(300, 8))
    assert ridge_probe_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.6


def test_probe_on_the_shipped_model_reports_every_figure():
    run = probe_group_head(AnyRef.from_pretrained("synthref-tiny").eval(), n_fit=6, n_test=4)
    assert run.counts["fit_objects"] > 6 and run.counts["test_objects"] > 4  # every group sample has >= 2 objects
    for vector in ("token", "state"):
        assert set(run.metrics[vector]) == {"colour", "shape"}
        assert all(0.0 <= value <= 1.0 for value in run.metrics[vector].values())
    for means in run.metrics["membership"].values():
        assert set(means) <= {"member", "non_member"} and all(0.0 <= v <= 1.0 for v in means.values())
