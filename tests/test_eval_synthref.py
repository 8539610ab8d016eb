"""SynthRef evaluation: every scored task end to end with the tiny model, the metric wiring checked with an oracle
and a mute stand-in model, the CLI, and (when the shipped model is installed) its recorded figures reproduced."""
import json

import numpy as np
import pytest

from anyref.checkpoint import PRETRAINED_DIR
from anyref.outputs import GroupResult, SegmentResult
from anyref.synthref import SynthRef
from eval import cli
from eval.synthref_eval import SCORED_TASKS, evaluate_synthref, missed_targets, normalise_caption

SHIPPED = PRETRAINED_DIR / "synthref-tiny"
SHIPPED_FIGURES = SHIPPED / "synthref_results.json"  # `anyref eval synthref --out` of the shipped model


class Oracle:
    """Answers every SynthRef test sample with its ground truth (looked up by the image's pixels); ``mute`` answers
    everything without a mask and with an empty caption."""

    def __init__(self, n: int, mute: bool = False) -> None:
        world = SynthRef()
        self.samples = {s.image.tobytes(): s for t in SCORED_TASKS for s in world.split("test", t, n)}
        self.mute = mute

    def segment(self, image, references, allow_untrained=False):
        sample = self.samples[image.tobytes()]
        masks = sample.masks if not self.mute else np.zeros((0, *image.shape[:2]), dtype=bool)
        logits = np.where(masks, 8.0, -8.0).astype(np.float32)
        return SegmentResult(masks, masks.any((1, 2)).astype(np.float32), "answer", logits)

    def describe(self, image, references, allow_untrained=False, with_masks=False):
        caption = "" if self.mute else "  The " + self.samples[image.tobytes()].meta["caption"][4:].upper() + ". "
        if not with_masks:
            return caption
        result = self.segment(image, references)
        result.text = caption
        return result

    def verify(self, image, region, expression, allow_untrained=False):
        return 0.0 if self.mute else float(self.samples[image.tobytes()].meta["matches"])

    def select(self, image, prompt, candidates, allow_untrained=False):
        selected = self.samples[image.tobytes()].selected
        indices = np.flatnonzero(selected) if not self.mute else np.zeros(0, dtype=int)
        return GroupResult(candidates[indices], np.ones(len(indices)), indices, candidates,
                           selected.astype(np.float32))


def test_normalise_caption():
    assert normalise_caption("  The small  RED circle. ") == "the small red circle"
    assert normalise_caption("the large blue star") == "the large blue star"


def test_oracle_scores_full_marks_and_mute_scores_nothing():
    perfect = evaluate_synthref(Oracle(3), n=3)
    assert list(perfect["metrics"]) == list(SCORED_TASKS) and "group" in perfect["metrics"]
    for task in ("text", "example", "example_masked"):
        assert perfect["metrics"][task]["ciou"] == pytest.approx(1.0)
    assert perfect["metrics"]["box"]["caption_acc"] == 1.0 and perfect["metrics"]["box"]["ciou"] == pytest.approx(1.0)
    for task in ("audio1", "audio2"):
        assert perfect["metrics"][task]["miou"] == pytest.approx(1.0) and perfect["metrics"][task]["fscore"] > 0.99
    assert perfect["metrics"]["no_target"]["no_mask_rate"] == 1.0  # its ground truth has no mask
    assert perfect["metrics"]["mask_caption"]["caption_acc"] == 1.0
    assert perfect["metrics"]["verify"]["verify_acc"] == 1.0
    assert perfect["metrics"]["group"]["giou"] == pytest.approx(1.0)
    assert perfect["counts"]["samples"] == 3 * len(SCORED_TASKS) and perfect["counts"]["text"]["samples"] == 3
    assert perfect["primary"]["box"] == "caption_acc" and perfect["primary"]["group"] == "ciou"

    mute = evaluate_synthref(Oracle(3, mute=True), n=3)
    assert mute["metrics"]["text"]["ciou"] == 0.0 and mute["metrics"]["text"]["found_rate"] == 0.0
    assert mute["metrics"]["box"]["caption_acc"] == 0.0 and mute["metrics"]["box"]["ciou"] == 0.0
    assert mute["metrics"]["audio1"]["miou"] == 0.0  # every SynthRef audio target is non-empty
    assert mute["metrics"]["no_target"]["no_mask_rate"] == 1.0
    assert mute["metrics"]["group"]["ciou"] == 0.0 and mute["metrics"]["mask_caption"]["caption_acc"] == 0.0


def test_evaluate_synthref_tiny_model_every_task(tiny_model, tmp_path):
    figures = evaluate_synthref(tiny_model, n=2, overlays=tmp_path / "png")
    assert set(figures["metrics"]) == set(SCORED_TASKS)
    for task, name in figures["primary"].items():
        assert 0.0 <= figures["metrics"][task][name] <= 1.0
    assert sorted(p.name for p in tmp_path.joinpath("png").iterdir()) == sorted(SCORED_TASKS)
    assert len(list(tmp_path.joinpath("png", "audio2").glob("*.png"))) == 2


def test_task_checks():
    with pytest.raises(ValueError, match="unknown SynthRef task"):
        evaluate_synthref(Oracle(1), n=1, tasks=["texts"])
    with pytest.raises(ValueError, match="no SynthRef task"):
        evaluate_synthref(Oracle(1), n=1, tasks=[])


def test_cli_synthref(tiny_model, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "synthref.json"
    code = cli.main(["synthref", "--model", str(model_dir), "--n", "5", "--limit", "2", "--tasks", "text,no_target",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "synthref" and results["split"] == "test" and results["data"] is None
    assert list(results["metrics"]) == ["text", "no_target"] and results["counts"]["samples"] == 4
    assert results["settings"]["n"] == 2 and results["settings"]["primary"] == {"text": "ciou",
                                                                                 "no_target": "no_mask_rate"}
    assert "--tasks text,no_target" in results["command"]
    assert len(results["per_sample"]["text"]["union"]) == 2 and len(results["per_sample"]["no_target"]["no_mask"]) == 2
    capsys.readouterr()
    assert cli.main(["synthref", "--model", str(model_dir), "--tasks", "groups"]) == 2
    assert "unknown SynthRef task" in capsys.readouterr().err
    group = tmp_path / "group.json"
    assert cli.main(["synthref", "--model", str(model_dir), "--n", "2", "--tasks", "group,mask_caption",
                     "--out", str(group), "--no-progress"]) == 0
    figures = json.loads(group.read_text())["metrics"]
    assert set(figures["group"]) == {"giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"} and "caption_acc" in figures["mask_caption"]


# Targets of the training issue the shipped model does not reach, with what it measured (docs/training-experiments.md
# says what limits it). The test below fails on any other miss, and when one of these is met (then remove it here).
KNOWN_SHORTFALLS: set[str] = set()


@pytest.fixture(scope="module")
def shipped_figures():
    """The shipped model on the full fixed test split (200 samples per task), as its results file records it."""
    from anyref import AnyRef

    assert SHIPPED_FIGURES.is_file(), "the shipped synthref-tiny model must come with its synthref_results.json"
    recorded = json.loads(SHIPPED_FIGURES.read_text())
    settings = recorded["settings"]
    figures = evaluate_synthref(AnyRef.from_pretrained("synthref-tiny"), n=settings["n"], tasks=settings["tasks"],
                                split=recorded["split"])
    return recorded, figures


@pytest.mark.slow
def test_shipped_model_reproduces_its_recorded_figures(shipped_figures):
    recorded, figures = shipped_figures
    assert recorded["settings"]["n"] == 200 and set(recorded["metrics"]) == set(SCORED_TASKS)
    for task, metrics in recorded["metrics"].items():
        for name, value in metrics.items():
            assert figures["metrics"][task][name] == pytest.approx(value, abs=1e-6), (task, name)


@pytest.mark.slow
def test_shipped_model_meets_the_targets(shipped_figures):
    _, figures = shipped_figures
    missed = missed_targets(figures["metrics"])
    names = {" ".join(line.split()[:2]) for line in missed}
    assert names == KNOWN_SHORTFALLS, f"targets missed: {missed}; known shortfalls: {sorted(KNOWN_SHORTFALLS)}"
