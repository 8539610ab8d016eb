"""A markdown table of results files next to the published numbers.

    anyref eval summary results/*.json --out table.md

Our metrics are stored as fractions; the table prints them on the paper's scale (IoUs and accuracies in percent,
F-score as a fraction, METEOR and CIDEr x 100). A result run with ``--limit`` is marked partial; so is a few-shot run
whose episodes are not HSNet's draw, which the papers' numbers use (``--episodes`` other than 1000 or ``--seed``
other than 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from encoders.checkpoints import write_text_atomically
from eval.datasets.fewshot import HSNET_EPISODES, HSNET_SEED
from eval.datasets.refer import DEFAULT_SPLIT_BY
from eval.results import read_results

__all__ = ["PaperFigure", "PAPER_FIGURES", "render_summary", "write_summary", "display_value"]


@dataclass(frozen=True)
class PaperFigure:
    """One published number, on the paper's own scale. variant: the paper's setting ("generalist", "fine-tuned",
    "5-shot, mask crop", ...); shot / mask_crop only for few-shot figures, split_by only for the RefCOCO family's
    (they pick the matching run: refcocog's "google" val is not the paper's "umd" val)."""

    benchmark: str
    dataset: str
    split: str
    metric: str
    value: float
    variant: str
    method: str
    source: str
    shot: Optional[int] = None
    mask_crop: Optional[bool] = None
    split_by: Optional[str] = None


_RES = "AnyRef (CVPR 2024), referring segmentation table: cIoU, generalist and per-dataset fine-tuned"
_FSS = ("AnyRef (CVPR 2024), few-shot segmentation table: mIoU, mean over the 4 folds; one-shot and few-shot "
        "(5-shot, HSNet protocol), with and without cropping the support to its mask")
_AVS = "AnyRef (CVPR 2024), AVSBench table: mIoU and F-score"
_REG = "AnyRef (CVPR 2024), referring expression generation table: RefCOCOg val, METEOR and CIDEr"
_UMD = DEFAULT_SPLIT_BY["refcocog"]
_RAS = "RAS (Refer to Any Segmentation Mask Group), GRES table: gRefCOCO val gIoU / cIoU / N-acc"


def _res(dataset: str, splits: Sequence[str], generalist: Sequence[float], tuned: Sequence[float]) -> list:
    rows = []
    for split, g, t in zip(splits, generalist, tuned):
        for value, variant in ((g, "generalist"), (t, "fine-tuned")):
            rows.append(PaperFigure("res", dataset, split, "ciou", value, variant, "AnyRef", _RES,
                                    split_by=DEFAULT_SPLIT_BY[dataset]))  # the partition the papers report
    return rows


def _fss(dataset: str, one: float, few: float, one_crop: float, few_crop: float) -> list:
    return [PaperFigure("fewshot", dataset, "val", "miou", v, f"{shot}-shot{', mask crop' if crop else ''}",
                        "AnyRef", _FSS, shot, crop)
            for v, shot, crop in ((one, 1, False), (few, 5, False), (one_crop, 1, True), (few_crop, 5, True))]


# Published numbers, transcribed from the papers' tables (shared/reference/anyref-paper.md); one row per number.
PAPER_FIGURES: tuple[PaperFigure, ...] = tuple(
    _res("refcoco", ("val", "testA", "testB"), (74.1, 75.5, 70.8), (76.9, 79.9, 74.2))
    + _res("refcoco+", ("val", "testA", "testB"), (64.1, 68.7, 57.5), (70.3, 73.5, 61.8))
    + _res("refcocog", ("val", "test"), (68.1, 69.9), (70.0, 70.7))
    + _fss("coco-20i", 43.5, 51.3, 46.3, 55.2)
    + _fss("pascal-5i", 74.8, 78.6, 76.5, 80.0)
    + [PaperFigure("avs", "avsbench-s4", "test", "miou", 82.8, "generalist", "AnyRef", _AVS),
       PaperFigure("avs", "avsbench-s4", "test", "fscore", 0.908, "generalist", "AnyRef", _AVS),
       PaperFigure("avs", "avsbench-ms3", "test", "miou", 55.6, "generalist", "AnyRef", _AVS),
       PaperFigure("avs", "avsbench-ms3", "test", "fscore", 0.663, "generalist", "AnyRef", _AVS),
       PaperFigure("reg", "refcocog", "val", "meteor", 16.2, "generalist", "AnyRef", _REG, split_by=_UMD),
       PaperFigure("reg", "refcocog", "val", "cider", 69.0, "generalist", "AnyRef", _REG, split_by=_UMD),
       PaperFigure("reg", "refcocog", "val", "meteor", 17.1, "fine-tuned", "AnyRef", _REG, split_by=_UMD),
       PaperFigure("reg", "refcocog", "val", "cider", 79.7, "fine-tuned", "AnyRef", _REG, split_by=_UMD),
       PaperFigure("gres", "grefcoco", "val", "giou", 68.86, "generalist", "RAS", _RAS),
       PaperFigure("gres", "grefcoco", "val", "ciou", 64.44, "generalist", "RAS", _RAS),
       PaperFigure("gres", "grefcoco", "val", "n_acc", 57.19, "generalist", "RAS", _RAS),
       PaperFigure("gres", "grefcoco", "val", "giou", 74.64, "GRES fine-tuned", "RAS", _RAS),
       PaperFigure("gres", "grefcoco", "val", "ciou", 70.48, "GRES fine-tuned", "RAS", _RAS),
       PaperFigure("gres", "grefcoco", "val", "n_acc", 69.05, "GRES fine-tuned", "RAS", _RAS)]
)

# metrics printed as fractions; every other one is multiplied by 100 (percent, or METEOR / CIDEr x 100)
_FRACTION_METRICS = {"fscore"}


def display_value(metric: str, value) -> str:
    """Our stored value (a fraction; CIDEr on pycocoevalcap's scale) on the paper's scale, as text."""
    if value is None:
        return "-"
    if metric in _FRACTION_METRICS:
        return f"{value:.3f}"
    return f"{100 * value:.1f}"


def _paper_value(figure: PaperFigure) -> str:
    text = f"{figure.value:.3f}" if figure.metric in _FRACTION_METRICS else f"{figure.value:g}"
    text += "" if "." in text else ".0"  # 69.0, as printed in the paper
    method = "" if figure.method == "AnyRef" else f"{figure.method}, "
    return f"{text} ({method}{figure.variant})"


def _matching(result: dict, metric: str) -> list[PaperFigure]:
    settings = result.get("settings") or {}
    found = []
    for fig in PAPER_FIGURES:
        if (fig.benchmark, fig.dataset, fig.metric) != (result["benchmark"], result["dataset"], metric):
            continue
        if fig.benchmark == "fewshot":  # paper: mean over folds -> any fold's run, matched on shot and cropping
            if (fig.shot, fig.mask_crop) != (settings.get("shot"), settings.get("mask_crop")):
                continue
        elif fig.split != result["split"]:
            continue
        if None not in (fig.split_by, settings.get("split_by")) and settings["split_by"] != fig.split_by:
            continue  # another partition of the same dataset (refcocog's google val is not the paper's umd val)
        found.append(fig)
    return found


def _count(counts: dict) -> Optional[int]:
    for key in ("samples", "videos", "episodes", "refs"):
        if isinstance(counts.get(key), int):
            return counts[key]
    return None


def _rows(result: dict) -> Iterable[tuple[str, str, object, Optional[int]]]:
    """(label, metric, value, items scored) per metric; nested per-task metrics (SynthRef) get the task as label."""
    counts = result.get("counts") or {}
    for key, value in result["metrics"].items():
        if isinstance(value, dict):
            for metric, inner in value.items():
                yield key, metric, inner, _count(counts.get(key) or {})
        else:
            yield "", key, value, _count(counts)


def _what(result: dict) -> str:
    settings = result.get("settings") or {}
    if result["benchmark"] == "fewshot":
        crop = ", mask crop" if settings.get("mask_crop") else ""
        return f"fold {settings.get('fold')}, {settings.get('shot')}-shot{crop}"
    if settings.get("split_by"):
        return f"splitBy {settings['split_by']}"
    return ""


def _protocol_note(result: dict) -> Optional[str]:
    """A note for a few-shot run whose episodes are not HSNet's draw (the published numbers' protocol): other
    episode counts or seeds score other episodes. None otherwise, and for a seed a file does not record (older
    files did not)."""
    if result["benchmark"] != "fewshot":
        return None
    settings = result.get("settings") or {}
    episodes, seed = settings.get("episodes"), settings.get("seed")
    changed = []
    if episodes not in (None, HSNET_EPISODES):
        changed.append(f"{episodes} episodes")
    if seed not in (None, HSNET_SEED):
        changed.append(f"seed {seed}")
    if not changed:
        return None
    return f"not HSNet's episodes: {', '.join(changed)} (published: {HSNET_EPISODES} episodes, seed {HSNET_SEED})"


def render_summary(results: Sequence[dict], names: Optional[Sequence[str]] = None) -> str:
    """The markdown table for ``results`` (dicts as written by :func:`eval.results.write_results`)."""
    if not results:
        raise ValueError("no results to summarise; pass one or more results JSON files")
    lines = ["| Benchmark | Dataset | Split | Setting | Metric | Ours | N | Published | Notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    sources = []
    for i, result in enumerate(results):
        notes = []
        if result.get("limit") is not None:
            notes.append(f"partial: first {result['limit']}")
        protocol = _protocol_note(result)
        if protocol:
            notes.append(protocol)
        if names:
            notes.append(Path(names[i]).name)
        for label, metric, value, count in _rows(result):
            figures = _matching(result, metric)
            for fig in figures:
                if fig.source not in sources:
                    sources.append(fig.source)
            published = "; ".join(_paper_value(f) for f in figures) or "-"
            if figures:
                published += f" [{sources.index(figures[0].source) + 1}]"
            setting = ", ".join(x for x in (_what(result), label) if x)
            cells = [result["benchmark"], result["dataset"], result["split"], setting, metric,
                     display_value(metric, value), "-" if count is None else str(count), published, "; ".join(notes)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ours: IoUs, accuracies, METEOR and CIDEr x 100; F-score as a fraction. Few-shot published numbers "
                 "are means over the 4 folds; our rows are single folds.")
    for number, source in enumerate(sources, 1):
        lines.append(f"[{number}] {source}.")
    return "\n".join(lines) + "\n"


def write_summary(paths: Sequence[str | Path], out: Optional[str | Path] = None) -> str:
    """Read results files, render the table, write it to ``out`` (if given) and return it."""
    results = [read_results(p) for p in paths]
    table = render_summary(results, [str(p) for p in paths])
    if out is not None:
        write_text_atomically(out, table)
    return table
