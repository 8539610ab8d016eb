"""Learning curves from training logs: the loss terms of one or more runs' log.jsonl against step and, where the run
wrote one beside it, each validated task's primary metric from val.jsonl, as one PNG.

    python -m train.curves runs/synthref-tiny/log.jsonl --out docs/figures/synthref-tiny-curves.png
    python -m train.curves runs/lambda-0/log.jsonl runs/lambda-0.1/log.jsonl --labels "λ 0" "λ 0.1" --out ablation.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoders.checkpoints import atomic_file

__all__ = ["read_log", "read_validation", "plot_curves", "main"]

TERMS = ("loss", "ce", "bce", "dice", "group")
COLUMNS = 5


def read_log(path: str | Path) -> list[dict]:
    """The entries of a trainer's log.jsonl (one dict per logged step); a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not JSON ({error}); is this a trainer's log.jsonl?") from error
        if "step" not in entry or "loss" not in entry:
            raise ValueError(f"{path}:{number} has no step/loss; is this a trainer's log.jsonl?")
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path} has no entries")
    return entries


def read_validation(path: Path) -> list[dict]:
    """The entries of a run's val.jsonl (train/validation.py), or [] when the run validated nothing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(logs: list[str | Path], out: str | Path, labels: list[str] | None = None,
                title: str = "") -> Path:
    """One panel per loss term, one line per log; writes ``out`` (PNG) atomically and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [Path(p).parent.name or str(p) for p in logs]
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs")
    runs = [read_log(p) for p in logs]
    vals = [read_validation(Path(p).with_name("val.jsonl")) for p in logs]
    tasks = list(dict.fromkeys(task for entries in vals for e in entries for task in e["primary"]))
    rows = 1 + -(-len(tasks) // COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(3.6 * COLUMNS, 3.0 * rows), squeeze=False)
    for axis, term in zip(axes[0], TERMS):
        for label, entries in zip(labels, runs):
            points = [(e["step"], e[term]) for e in entries if e.get(term, 0) > 0]  # stages without the term
            axis.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.2)
        axis.set_title(f"train {term}")
        axis.set_yscale("log")
    for axis, task in zip(axes[1:].flat, tasks):
        for label, entries in zip(labels, vals):
            points = [(e["step"], e["metrics"][task][e["primary"][task]]) for e in entries if task in e["primary"]]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label, linewidth=1.2)
        names = {e["primary"][task] for entries in vals for e in entries if task in e["primary"]}
        axis.set_title(f"val {task} {'/'.join(sorted(names))}")
        axis.set_ylim(0, 1)
    for axis in axes.flat:
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    for axis in list(axes[1:].flat)[len(tasks):]:
        axis.set_visible(False)
    axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out = Path(out)
    try:
        with atomic_file(out) as staged:
            figure.savefig(staged, dpi=110, format="png")
    finally:
        plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="log.jsonl files written by the trainer")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", nargs="+", help="one legend label per log (default: the run folder names)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {plot_curves(args.logs, args.out, args.labels, args.title)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
