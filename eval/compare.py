"""How sure is a figure? Paired bootstrap confidence intervals over a results file's per-sample records.

    anyref eval compare shipped.json other.json --labels shipped other --out compare.json

A SynthRef results file (``anyref eval synthref --out``) keeps, per task, one record per sample: the pixel
intersection and union of its answer, its IoU, whether its caption was exact, ... Every metric of the file is a
function of those records (cIoU = sum I / sum U, mIoU = mean of the per-video IoUs, caption accuracy = mean of the
exact flags, N-acc = empty groups answered empty / empty groups). Resampling the samples with replacement and
recomputing gives the spread a metric would have on another test split of the same size; for two or more files
scored on the SAME samples the resampling is paired (one draw of sample indices for all files), so the interval of
a difference leaves out what the models share - the noise of the test split, not of training. Training noise (the
seed) is a separate question: compare runs that differ only by ``--seed``.

The first file is the baseline; each other file gets its difference to it. Intervals are percentile intervals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from eval.metrics import GRES_PRECISION_THRESHOLDS
from eval.results import read_results, write_results

__all__ = ["STATISTICS", "compare_results", "render_comparison", "write_comparison"]

Statistic = Callable[[dict, np.ndarray], np.ndarray]  # (records as arrays, B x n sample indices) -> B values


def _mean(key: str) -> Statistic:
    return lambda records, index: records[key][index].mean(1)


def _ratio(numerator: str, denominator: str) -> Statistic:
    def statistic(records: dict, index: np.ndarray) -> np.ndarray:
        top, bottom = records[numerator][index].sum(1), records[denominator][index].sum(1)
        return np.divide(top, bottom, out=np.zeros_like(top, dtype=float), where=bottom > 0)
    return statistic


def _case_share(hit: str, miss: str) -> Statistic:
    """Share of the samples in cases {hit, miss} that are ``hit`` (ReLA's N-acc: tp / (tp + fn))."""
    def statistic(records: dict, index: np.ndarray) -> np.ndarray:
        cases = records["case"][index]
        hits, total = (cases == hit).sum(1), ((cases == hit) | (cases == miss)).sum(1)
        return np.divide(hits, total, out=np.zeros(len(index)), where=total > 0)
    return statistic


def _precision_at(threshold: float) -> Statistic:
    """ReLA's Pr@t: share of the samples with targets (cases TN and FP) whose iou reaches t."""
    def statistic(records: dict, index: np.ndarray) -> np.ndarray:
        cases, ious = records["case"][index], records["iou"][index]
        targeted = (cases == "tn") | (cases == "fp")
        hits, total = (targeted & (ious >= threshold)).sum(1), targeted.sum(1)
        return np.divide(hits, total, out=np.zeros(len(index)), where=total > 0)
    return statistic


# metric name -> how to compute it from a task's per-sample records; the names are eval.metrics' and
# eval.synthref_eval's. tests/test_compare.py checks each against the figure the evaluation itself reported.
STATISTICS: dict[str, Statistic] = {
    "ciou": _ratio("intersection", "union"),
    "giou": _mean("iou"),
    "miou": _mean("miou"),
    "fscore": _mean("fscore"),
    "caption_acc": _mean("caption_exact"),
    "found_rate": _mean("found"),
    "no_mask_rate": _mean("no_mask"),
    "verify_acc": _mean("verify_right"),
    "yes_rate": _mean("said_yes"),
    "n_acc": _case_share("tp", "fn"),
    "t_acc": _case_share("tn", "fp"),
    **{f"pr@{t}": _precision_at(t) for t in GRES_PRECISION_THRESHOLDS},
}


def _load(path: str | Path) -> dict:
    results = read_results(path)
    if "per_sample" not in results:
        raise ValueError(f"{path} has no per-sample records; score the model again with `anyref eval synthref "
                         "--out ...` (results files written since per-sample records were added have them)")
    return results


def _check_same_samples(files: Sequence[str | Path], loaded: Sequence[dict]) -> None:
    """Paired resampling needs every file scored on the same samples: same benchmark, split and settings."""
    first = loaded[0]
    keys = ("n", "image_size", "world_seed")
    for path, results in zip(files[1:], loaded[1:]):
        for name in ("benchmark", "split"):
            if results[name] != first[name]:
                raise ValueError(f"{path} is {name} {results[name]!r}, {files[0]} is {first[name]!r}: "
                                 "compare results scored on the same samples")
        mine, theirs = results.get("settings", {}), first.get("settings", {})
        for key in keys:
            if mine.get(key) != theirs.get(key):
                raise ValueError(f"{path} was scored with {key}={mine.get(key)!r}, {files[0]} with "
                                 f"{theirs.get(key)!r}: compare results scored on the same samples")


def _arrays(records: dict) -> dict:
    return {key: np.asarray(values) for key, values in records.items()}


def _reported_metrics(results: dict, task: str) -> list[str]:
    """The task's metrics that can be recomputed from its records, primary first."""
    primary = results.get("settings", {}).get("primary", {}).get(task)
    names = [m for m in results["metrics"][task] if m in STATISTICS]
    return sorted(names, key=lambda m: (m != primary, names.index(m)))


def compare_results(files: Sequence[str | Path], resamples: int = 2000, level: float = 0.95,
                    seed: int = 0) -> dict:
    """{"files", "split", "resamples", "level", "seed", "tasks": {task: {metric: {"values": [per file], "intervals": [[lo, hi]
    per file], "differences": [None, file i - file 0 ...], "difference_intervals": [None, [lo, hi] ...]}}}} over the
    tasks every file scored. ValueError when the files were not scored on the same samples, lack per-sample
    records, or their records do not reproduce their reported metrics."""
    if not files:
        raise ValueError("give at least one results file")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a percentile interval, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    loaded = [_load(path) for path in files]
    _check_same_samples(files, loaded)
    tasks = [t for t in loaded[0]["per_sample"] if all(t in r["per_sample"] for r in loaded[1:])]
    if not tasks:
        raise ValueError("the files share no scored task")
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    table: dict = {}
    for task in tasks:
        records = [_arrays(r["per_sample"][task]) for r in loaded]
        sizes = {len(next(iter(r.values()))) for r in records}
        if len(sizes) != 1:
            raise ValueError(f"task {task!r}: the files hold different numbers of samples {sorted(sizes)}")
        n = sizes.pop()
        index = rng.integers(0, n, size=(resamples, n))
        everything = np.arange(n)[None]
        table[task] = {}
        for metric in _reported_metrics(loaded[0], task):
            statistic = STATISTICS[metric]
            values, draws = [], []
            for path, results, recs in zip(files, loaded, records):
                value = float(statistic(recs, everything)[0])
                reported = results["metrics"][task].get(metric)
                if reported is not None and abs(value - reported) > 1e-4:
                    raise ValueError(f"{path}: task {task} {metric} recomputed from the records is {value:.5f}, "
                                     f"the file reports {reported:.5f}; the file is inconsistent")
                values.append(value)
                draws.append(statistic(recs, index))
            table[task][metric] = {
                "values": values,
                "intervals": [np.percentile(d, [tail, 100 - tail]).tolist() for d in draws],
                "differences": [None] + [v - values[0] for v in values[1:]],
                "difference_intervals": [None] + [np.percentile(d - draws[0], [tail, 100 - tail]).tolist()
                                                  for d in draws[1:]],
            }
    return {"files": [str(f) for f in files], "split": loaded[0].get("split"), "resamples": resamples, "level": level,
            "seed": seed, "tasks": table}


def default_labels(files: Sequence[str | Path]) -> list[str]:
    """Column names for result files: their names without the suffix, with as many parent folders as it takes
    to tell them apart (runs/a/synthref_results.json and runs/b/synthref_results.json -> a/synthref_results, ...)."""
    paths = [Path(f).with_suffix("") for f in files]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same file given twice


def render_comparison(comparison: dict, labels: Optional[Sequence[str]] = None) -> str:
    """A markdown table: per task and metric, each file's value with its interval, and each difference to the
    first file with its interval (an interval that excludes 0 marks a difference the test split resolves)."""
    files = comparison["files"]
    labels = list(labels) if labels else default_labels(files)
    if len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} files")
    percent = round(comparison["level"] * 100)
    head = ["task", "metric", *labels, *(f"{label} - {labels[0]}" for label in labels[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, metrics in comparison["tasks"].items():
        for metric, entry in metrics.items():
            cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, (lo, hi) in zip(entry["values"], entry["intervals"])]
            for d, (lo, hi) in zip(entry["differences"][1:], entry["difference_intervals"][1:]):
                mark = "" if lo <= 0 <= hi else " *"
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}")
            lines.append("| " + " | ".join([task, metric, *cells]) + " |")
    split = comparison.get("split") or "scored"
    note = (f"\n[lo, hi]: {percent}% paired bootstrap interval over the {split} split's samples "
            f"({comparison['resamples']} resamples); * : the difference's interval excludes 0.\n")
    return "\n".join(lines) + "\n" + note


def write_comparison(files: Sequence[str | Path], out: Optional[str | Path] = None,
                     labels: Optional[Sequence[str]] = None, resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> str:
    """compare_results + render_comparison; with ``out``, the comparison (and the labels) as JSON, atomically."""
    comparison = compare_results(files, resamples, level, seed)
    table = render_comparison(comparison, labels)
    if out is not None:
        write_results(out, {**comparison, "labels": list(labels) if labels else None})
    return table
