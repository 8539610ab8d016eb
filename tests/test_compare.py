"""`anyref eval compare`: per-sample records reproduce every SynthRef metric, and the paired bootstrap's intervals
behave (zero for a file against itself, excluding zero for a clear gain, containing the figure)."""
import json

import numpy as np
import pytest

from anyref.outputs import GroupResult, SegmentResult
from anyref.synthref import SynthRef
from eval import cli
from eval.compare import STATISTICS, compare_results, default_labels, render_comparison
from eval.results import RunOutput, make_results, write_results
from eval.synthref_eval import SCORED_TASKS, evaluate_synthref


class ShiftedOracle:
    """Answers each SynthRef test sample with its ground truth shifted by a few pixels (partial IoUs), every other
    caption wrong, every other sample without a mask, and groups with their first candidate flipped."""

    def __init__(self, n: int) -> None:
        world = SynthRef()
        self.samples = {s.image.tobytes(): s for t in SCORED_TASKS for s in world.split("test", t, n)}
        self.calls = 0

    def _masks(self, image):
        self.calls += 1
        masks = self.samples[image.tobytes()].masks
        if self.calls % 2 == 0:
            return np.zeros((0, *image.shape[:2]), dtype=bool)
        return np.roll(masks, 3 + self.calls % 5, axis=2)

    def segment(self, image, references, allow_untrained=False):
        masks = self._masks(image)
        return SegmentResult(masks, np.ones(len(masks), np.float32), "answer",
                             np.where(masks, 8.0, -8.0).astype(np.float32))

    def describe(self, image, references, allow_untrained=False, with_masks=False):
        caption = self.samples[image.tobytes()].meta["caption"] if self.calls % 2 else "a wrong caption"
        if not with_masks:
            self.calls += 1
            return caption
        result = self.segment(image, references)
        result.text = caption
        return result

    def verify(self, image, region, expression, allow_untrained=False):
        self.calls += 1
        matches = self.samples[image.tobytes()].meta["matches"]
        return float(matches) if self.calls % 2 else 0.7  # right, then "yes" whatever the truth

    def select(self, image, prompt, candidates, allow_untrained=False):
        chosen = self.samples[image.tobytes()].selected.copy()
        chosen[0] = not chosen[0]
        indices = np.flatnonzero(chosen)
        return GroupResult(candidates[indices], np.ones(len(indices)), indices, candidates,
                           chosen.astype(np.float32))


def _results(per_sample: dict, metrics: dict, n: int, primary: dict | None = None) -> dict:
    settings = {"n": n, "image_size": 128, "world_seed": 0, "primary": primary or {}}
    return make_results("synthref", RunOutput(metrics, {}, settings, per_sample), "m", "synthref", "test", 1.0)


def _captions(flags: list[int]) -> dict:
    return _results({"box": {"caption_exact": flags}}, {"box": {"caption_acc": float(np.mean(flags))}},
                    len(flags), {"box": "caption_acc"})


def test_records_reproduce_every_reported_metric(tmp_path):
    figures = evaluate_synthref(ShiftedOracle(6), n=6)
    path = write_results(tmp_path / "r.json", _results(figures["per_sample"], figures["metrics"], 6,
                                                       figures["primary"]))
    comparison = compare_results([path], resamples=200)
    for task, metrics in figures["metrics"].items():
        assert set(comparison["tasks"][task]) == set(metrics) & set(STATISTICS)
        for name, value in metrics.items():
            assert comparison["tasks"][task][name]["values"][0] == pytest.approx(value, abs=1e-4), (task, name)
    # the stand-in gives figures strictly between 0 and 1, so the check above is not all zeros and ones
    assert 0 < figures["metrics"]["text"]["ciou"] < 1 and 0 < figures["metrics"]["box"]["caption_acc"] < 1
    assert 0 < figures["metrics"]["group"]["ciou"] < 1 and 0 < figures["metrics"]["verify"]["verify_acc"] < 1
    assert list(comparison["tasks"]["box"])[0] == "caption_acc"  # the primary metric first


def test_a_file_against_itself_differs_by_exactly_zero(tmp_path):
    path = write_results(tmp_path / "a.json", _captions([1, 0] * 50))
    entry = compare_results([path, path], resamples=300)["tasks"]["box"]["caption_acc"]
    assert entry["differences"] == [None, 0.0] and entry["difference_intervals"][1] == [0.0, 0.0]
    low, high = entry["intervals"][0]
    assert low < 0.5 < high and high - low < 0.3


def test_paired_intervals_resolve_a_clear_gain_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 200).tolist()
    better = [1 if i < 40 else v for i, v in enumerate(base)]  # up to 40 more right answers, same samples
    noisy = [1 - v if i < 4 else v for i, v in enumerate(base)]  # 4 samples flipped
    files = [write_results(tmp_path / f"{name}.json", _captions(flags))
             for name, flags in (("base", base), ("better", better), ("noisy", noisy))]
    entry = compare_results(files, resamples=1000)["tasks"]["box"]["caption_acc"]
    assert entry["difference_intervals"][1][0] > 0  # excludes zero
    low, high = entry["difference_intervals"][2]
    assert low <= 0 <= high
    table = render_comparison(compare_results(files, resamples=200), labels=["base", "better", "noisy"])
    rows = [line for line in table.splitlines() if line.startswith("| box | caption_acc")]
    assert len(rows) == 1 and rows[0].count("*") == 1


def test_refusals(tmp_path):
    old = make_results("synthref", RunOutput({"box": {"caption_acc": 0.5}}, {}), "m", "synthref", "test", 1.0)
    old_path = write_results(tmp_path / "old.json", old)
    with pytest.raises(ValueError, match="no per-sample records"):
        compare_results([old_path])
    a = write_results(tmp_path / "a.json", _captions([1, 0, 1, 1]))
    b = write_results(tmp_path / "b.json", _captions([1, 0, 1]))
    with pytest.raises(ValueError, match="n=3"):
        compare_results([a, b])
    lying = _captions([1, 0, 1, 1])
    lying["metrics"]["box"]["caption_acc"] = 0.25
    with pytest.raises(ValueError, match="inconsistent"):
        compare_results([write_results(tmp_path / "lying.json", lying)])
    with pytest.raises(ValueError, match="resamples"):
        compare_results([a], resamples=10)


def test_cli_compare(tmp_path, capsys):
    a = write_results(tmp_path / "a.json", _captions([0, 1] * 20))
    b = write_results(tmp_path / "b.json", _captions([1] * 40))
    out = tmp_path / "cmp.json"
    assert cli.main(["compare", str(a), str(b), "--labels", "first", "second", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| task | metric | first | second | second - first |" in printed and "+0.500" in printed
    saved = json.loads(out.read_text())
    assert saved["labels"] == ["first", "second"] and saved["tasks"]["box"]["caption_acc"]["values"] == [0.5, 1.0]
    assert cli.main(["compare", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_default_labels_tell_same_named_files_apart():
    assert default_labels(["runs/a.json", "runs/b.json"]) == ["a", "b"]
    assert default_labels(["pretrained/tiny/synthref_results.json", "runs/nowhere/synthref_results.json"]) == [
        "tiny/synthref_results", "nowhere/synthref_results"]
    assert default_labels(["x/r.json", "x/r.json"]) == ["x/r", "x/r"]
