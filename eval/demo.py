"""``anyref demo``: the shipped SynthRef model on SynthRef test scenes, every reference type, in about a minute.

    anyref demo                                  # synthref-tiny, 8 scenes per task, into ./anyref-demo
    anyref demo --model runs/x/model --n 20 --out demo-x

Writes into ``--out``: ``overlays/TASK/*.png`` (the scene with the predicted mask in red, the ground truth outlined
in green, a box reference in yellow, and a line saying what was asked and answered), ``demo.png`` (the first scenes
of every task on one sheet) and ``metrics.json`` (the figures on these scenes, next to the model's recorded figures
on the full test split and the targets; written atomically). No network and no dataset files are needed: SynthRef
scenes are drawn by the library itself.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from encoders.checkpoints import atomic_file

__all__ = ["register", "run_demo", "contact_sheet"]

DEFAULT_MODEL = "synthref-tiny"
RECORDED_FIGURES = "synthref_results.json"  # `anyref eval synthref --out` of a model, kept in its directory


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="segment SynthRef test scenes with every reference type",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory or shipped name ({DEFAULT_MODEL})")
    parser.add_argument("--out", default="anyref-demo", help="output folder (default ./anyref-demo)")
    parser.add_argument("--n", type=int, default=8, help="test scenes per task (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    summary = run_demo(args.model, args.out, n=args.n, progress=not args.no_progress)
    print(summary["table"])
    print(f"\nwrote {summary['sheet']}, {summary['overlays']}/ and {summary['metrics']}")
    return 0


def run_demo(model_name: str | Path, out: str | Path, n: int = 8, progress: bool = True) -> dict:
    """Run the demo; returns {"table": text, "sheet": path, "overlays": path, "metrics": path, "results": dict}."""
    from anyref.api import AnyRef
    from anyref.checkpoint import resolve_model_path
    from eval.results import RunOutput, make_results, write_results
    from eval.synthref_eval import SYNTHREF_TARGETS, evaluate_synthref

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    model_dir = resolve_model_path(model_name)
    model = AnyRef.from_pretrained(model_dir)
    start = time.perf_counter()
    figures = evaluate_synthref(model, n=n, overlays=out / "overlays", progress=progress)
    seconds = time.perf_counter() - start
    recorded = _recorded_metrics(model_dir)
    settings = {**figures["settings"], "primary": figures["primary"], "targets": SYNTHREF_TARGETS,
                "recorded_full_split": recorded}
    run = RunOutput(figures["metrics"], figures["counts"], settings, figures["per_sample"])
    results = make_results("synthref-demo", run, str(model_name), "synthref", "test", seconds,
                           f"anyref demo --model {model_name} --n {n}")
    metrics_path = write_results(out / "metrics.json", results)
    sheet = contact_sheet(out / "overlays", out / "demo.png")
    table = _table(figures["metrics"], recorded, SYNTHREF_TARGETS, figures["primary"], n)
    return {"table": table, "sheet": sheet, "overlays": out / "overlays", "metrics": metrics_path,
            "results": results}


def _recorded_metrics(model_dir: Path) -> dict | None:
    path = model_dir / RECORDED_FIGURES
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("metrics")


def _table(metrics: dict, recorded: dict | None, targets: dict, primary: dict, n: int) -> str:
    """Plain-text table: task, metric (the targets', else the task's primary one), this run (n scenes), recorded
    full test split, target."""
    rows = [("task", "metric", f"demo (n={n})", "full test split", "target")]
    for task, values in metrics.items():
        names = [name for name, _ in targets.get(task, [])] or [primary[task]]
        for name in names:
            full = (recorded or {}).get(task, {}).get(name)
            goal = dict(targets.get(task, [])).get(name)
            rows.append((task, name, f"{values[name]:.3f}", "-" if full is None else f"{full:.3f}",
                         "-" if goal is None else f">= {goal:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def contact_sheet(overlays: Path, path: Path, per_task: int = 3) -> Path:
    """One PNG with the first ``per_task`` overlays of every task folder in a row each (tasks in folder order)."""
    rows = []
    for folder in sorted(p for p in Path(overlays).iterdir() if p.is_dir()):
        images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))[:per_task]]
        if images:
            rows.append(images)
    if not rows:
        raise ValueError(f"no overlay PNGs under {overlays}")
    cell_w = max(im.width for row in rows for im in row)
    cell_h = max(im.height for row in rows for im in row)
    sheet = np.zeros((cell_h * len(rows), cell_w * per_task, 3), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = np.asarray(image)
            sheet[r * cell_h:r * cell_h + pixels.shape[0], c * cell_w:c * cell_w + pixels.shape[1]] = pixels
    with atomic_file(path) as staged:
        Image.fromarray(sheet).save(staged, format="PNG")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.demo``: the same as ``anyref demo``."""
    parser = argparse.ArgumentParser(prog="anyref")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"anyref demo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
