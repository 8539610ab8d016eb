"""The mask-threshold probe (eval/mask_threshold_probe.py): at threshold 0 it scores exactly what
``anyref eval synthref`` scores, and its per-threshold figures are IoUs of ``map > t``."""
import numpy as np
import pytest

from anyref import AnyRef
from eval.mask_threshold_probe import main, mask_threshold_probe, threshold_scores
from eval.results import read_results
from eval.synthref_eval import evaluate_synthref


def test_threshold_zero_is_what_the_evaluation_scores(tmp_path):
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    run = mask_threshold_probe(model, ("text", "box"), n=3, split="val")
    reference = evaluate_synthref(model, n=3, tasks=["text", "box"], split="val")["metrics"]
    for task in ("text", "box"):  # the evaluation sums in float32 and adds LISA's epsilons
        assert run.metrics[task]["by_threshold"]["0.0"]["ciou"] == pytest.approx(reference[task]["ciou"], abs=1e-6)
        assert run.metrics[task]["by_threshold"]["0.0"]["miou"] == pytest.approx(reference[task]["giou"], abs=1e-4)
    assert main(["--n", "1", "--tasks", "audio1", "--out", str(tmp_path / "probe.json")]) == 0
    written = read_results(tmp_path / "probe.json")
    assert written["counts"] == {"audio1": {"samples": 1}} and written["settings"]["split"] == "val"
    # the provenance names what the probe ran on, as every results file's does
    assert written["provenance"]["device"] == "cpu" and written["provenance"]["dtype"] == "torch.float32"
    with pytest.raises(ValueError, match="answer is masks"):
        mask_threshold_probe(model, ("group",), n=1)


def test_threshold_scores():
    logits = np.array([[-2.0, -0.5], [0.5, 2.0]])
    target = np.array([[False, True], [True, True]])
    scores = threshold_scores([logits, np.full((2, 2), -1e4)], [target, np.zeros((2, 2), bool)],
                              thresholds=(-1.0, 0.0, 1.0))
    assert scores["-1.0"] == {"ciou": 1.0, "miou": 1.0}  # the empty map on an empty target counts 1
    assert scores["0.0"] == {"ciou": 2 / 3, "miou": (2 / 3 + 1) / 2}
    assert scores["1.0"] == {"ciou": 1 / 3, "miou": (1 / 3 + 1) / 2}
    with pytest.raises(ValueError, match="as many logit maps"):
        threshold_scores([logits], [])
