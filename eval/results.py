"""The results file every runner writes: metrics, counts, what was evaluated, how long it took, how it was run.

    {"benchmark": "res", "dataset": "refcoco", "split": "val", "model": "runs/my-model", "data": "/path/to/data",
     "metrics": {"ciou": 0.74, "giou": 0.76}, "counts": {"samples": 10834, ...}, "settings": {"split_by": "unc"},
     "limit": null, "seconds": 812.3, "command": "anyref eval res --model ...", "created": "2025-...Z",
     "provenance": {"anyref": "0.1.0", "git_commit": "ab80...", "git_dirty": false, "torch": "...", ...}}

A model or data folder is named relative to the folder the run started in when it lies inside it, else absolutely
(cited_path). ``provenance`` (:mod:`eval.provenance`) is absent from files written before it existed; readers must
not need it.
Metrics are fractions in [0, 1] (CIDEr on pycocoevalcap's 0-10 scale); the summary table scales them as papers do.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from anyref.model_args import add_inference_settings, apply_inference_settings
from encoders.checkpoints import write_text_atomically
from eval.provenance import run_provenance

__all__ = ["RunOutput", "make_results", "write_results", "check_results_out", "write_module_results", "run_diagnostic",
           "diagnostic_parser", "read_results", "cited_path", "cited_model"]


@dataclass
class RunOutput:
    """What a runner returns: metrics (name -> value, or task -> {name -> value}), counts and settings, and
    optionally per-sample records (task -> {record: [value per sample]}) that ``anyref eval compare`` resamples."""

    metrics: dict
    counts: dict
    settings: dict = field(default_factory=dict)
    per_sample: Optional[dict] = None


def _jsonable(value):
    """Plain JSON types (numpy scalars -> Python numbers, NaN/inf -> None, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def cited_path(path: str | Path) -> str:
    """How a results file names a model or data folder: relative to the current folder when it lies inside it
    (``runs/recipe/shipped``, so a results file copied into a repository names no one's machine), else absolute
    (still unambiguous wherever the file is read)."""
    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(resolved)


def cited_model(model: str | Path) -> str:
    """A model folder by cited_path; a shipped name (``synthref-tiny``) as given."""
    return cited_path(model) if Path(model).is_dir() else str(model)


def make_results(benchmark: str, run: RunOutput, model: str, dataset: str, split: str, seconds: float,
                 command: str = "", data: Optional[str] = None, limit: Optional[int] = None,
                 loaded_model: object = None) -> dict:
    """The results dict of a run (module docstring). model: the model's directory or shipped name; data: the dataset's
    folder (both folders named by cited_path); loaded_model: the model object that ran, when the caller has it, for
    the provenance's device and dtype."""
    return _jsonable({
        "benchmark": benchmark, "dataset": dataset, "split": split,
        "model": cited_model(model),
        "data": None if data is None else cited_path(data), "metrics": run.metrics, "counts": run.counts,
        "settings": run.settings, "limit": limit, "seconds": round(float(seconds), 3), "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "provenance": run_provenance(model, loaded_model),
        **({} if run.per_sample is None else {"per_sample": run.per_sample}),
    })


def write_results(path: str | Path, results: dict) -> Path:
    """Write ``results`` as JSON atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    write_text_atomically(path, json.dumps(_jsonable(results), indent=2) + "\n")
    return path


def check_results_out(out: str | Path | None, option: str = "--out") -> None:
    """Refuse, before any work is done, a results file path that cannot be written: ValueError (a usage error, exit
    status 2) naming ``option`` and what to give instead. Missing folders are fine: write_results creates them."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{option} {str(out)!r} is a directory; give the name of the results file to write, e.g. "
                         f"{path / 'results.json'}")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise ValueError(f"{option} {str(out)!r} cannot be written: {folder} is a file, not a folder; give a path "
                         "whose folders are folders")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(out)!r} cannot be written: folder {folder} is not writable; give a path "
                         "in a folder you can write to")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where write_results would create the missing folders)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")  # not reached while the current folder (or "/") exists


def write_module_results(path: str | Path, benchmark: str, run: RunOutput, model: str, split: str,
                         started: float, module: str, argv: Optional[list[str]] = None,
                         loaded_model: object = None) -> Path:
    """write_results for a ``python -m MODULE`` diagnostic (eval.mask_errors...): SynthRef results whose command
    is that module with ``argv`` (the process's own arguments when None), timed from ``started``; loaded_model:
    the model that ran, for the provenance's device and dtype."""
    words = ["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]
    return write_results(path, make_results(benchmark, run, model=model, dataset="synthref", split=split,
                                            seconds=time.time() - started, command=shlex.join(words),
                                            loaded_model=loaded_model))


def run_diagnostic(argv: Optional[list[str]], parser: argparse.ArgumentParser, probe: Callable, report: Callable,
                   benchmark: str, split: Optional[str] = None) -> int:
    """The body of every SynthRef diagnostic's ``main`` (``python -m eval.BENCHMARK``): parse ``argv`` with
    ``parser`` (diagnostic_parser's, or one with --model and --out), load --model with the inference settings
    the command line gives, run ``probe(model, args)`` (a RunOutput), print its table with ``report(run, model)``,
    and with --out write the results file. split: the split the file records (None: --split)."""
    args = parser.parse_args(argv)
    from anyref import AnyRef

    started = time.time()
    model = AnyRef.from_pretrained(args.model).eval()
    apply_inference_settings(model, args)
    run = probe(model, args)
    report(run, model)
    if args.out:
        write_module_results(args.out, benchmark, run, args.model, split or args.split, started, f"eval.{benchmark}",
                             argv, loaded_model=model)
    return 0


def diagnostic_parser(doc: str, n: int, split: str, tasks: Optional[tuple[str, ...]] = None,
                      n_help: str = "samples per task") -> argparse.ArgumentParser:
    """The command line every SynthRef diagnostic (``python -m eval.mask_errors``...) shares: --model, --tasks
    (when ``tasks`` lists the choices; all by default), --n, --split, --out and the inference settings that
    override the model's config (``--check-by-group-head off``...). doc: the module docstring, whose first
    paragraph describes the command."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="synthref-tiny", help="a shipped model name or an AnyRef directory")
    if tasks:
        parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=tasks)
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--split", default=split, choices=("val", "test"))
    parser.add_argument("--out", help="write a results JSON here")
    add_inference_settings(parser)
    return parser


def read_results(path: str | Path) -> dict:
    """A results file written by :func:`write_results`; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    missing = [k for k in ("benchmark", "dataset", "split", "metrics") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not an `anyref eval` results file (missing {', '.join(missing)})")
    return data
