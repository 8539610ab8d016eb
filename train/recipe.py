"""A model's whole recipe in one command: its training stages, its heads fitted alone and its inference settings,
run in order, each step timed.

    anyref recipe synthref-tiny --out runs/recipe        # the shipped demo model, from random weights
    anyref recipe synthref-tiny --out runs/recipe --dry-run    # the commands it runs, and nothing else
    python -m train.recipe ...                           (the same)

A recipe is a JSON file (``train/recipes/NAME.json``, or a path): a description and a list of steps, each either

- ``{"name", "run": [anyref sub-command and its arguments], "model": DIR}``: an ``anyref`` command (``train``,
  ``fit-group-head``, ``fit-verifier``) run in a process of its own, DIR the model directory it writes; or
- ``{"name", "settings": {"mask_crf": {...}, "rank_redraw_window": 2, ...}}``: the model before it loaded, each
  setting given to its ``set_<name>`` (a list is given as the setter's arguments) and saved to ``OUT/NAME``.

In the arguments ``{out}`` is ``--out`` and ``{previous}`` the model the step before wrote. A step whose model is
already written (its config.json is there: every model is written atomically) is not run again, so a recipe stopped
part-way continues from its first unfinished step - and ``anyref train`` itself resumes from its checkpoints (the
step is then marked "continued" in the log: its seconds count the last run only). A written model that the
recipe as it is now would not have written - its logged command or settings differ, or a step before it must run
again - is refused before anything runs. After every step ``OUT/recipe_log.json`` is rewritten (atomically): each
step's seconds, command and the sha256 of the weights it wrote, the total, the machine, the code's commit and
libraries. On one machine and one commit a recipe is bit-reproducible, so two runs' digests match step by step
(docs/training-experiments.md, "The recipe run again"). Why: the shipped model's recipe grew to ten commands whose
order, paths and settings a user had to copy by hand from docs/training.md, and the time a recipe takes is one of
its targets (docs/training.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from encoders.checkpoints import write_text_atomically
from eval.provenance import run_provenance

__all__ = ["load_recipe", "resolve_steps", "run_recipe", "add_arguments", "run", "main", "RECIPES"]

RECIPES = Path(__file__).parent / "recipes"
LOG = "recipe_log.json"


def load_recipe(name_or_path: str) -> dict:
    """A recipe by name (train/recipes/NAME.json) or path, checked: every step has a unique name and exactly one of
    "run" (with the "model" it writes) and "settings" (each one a setter of AnyRef)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.json"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}: give a JSON file or one of {known}")
    try:
        recipe = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    steps = recipe.get("steps") if isinstance(recipe, dict) else None
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{path}: a recipe is a JSON object with a non-empty list of \"steps\"")
    from anyref import AnyRef

    names = set()
    for index, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else None
        if not isinstance(name, str) or not name or "/" in name or name in names:
            raise ValueError(f"{path}: step {index} needs a unique \"name\" (no '/'), got {name!r}")
        names.add(name)
        if ("run" in step) == ("settings" in step):
            raise ValueError(f"{path}: step {name!r} needs exactly one of \"run\" (an anyref command) and "
                             "\"settings\"")
        if "run" in step:
            if not (isinstance(step["run"], list) and step["run"] and all(isinstance(a, str) for a in step["run"])):
                raise ValueError(f"{path}: step {name!r}: \"run\" is a list of strings, an anyref sub-command and "
                                 "its arguments")
            if not isinstance(step.get("model"), str):
                raise ValueError(f"{path}: step {name!r}: give the \"model\" directory its command writes")
        else:
            if not isinstance(step["settings"], dict) or not step["settings"]:
                raise ValueError(f"{path}: step {name!r}: \"settings\" is a non-empty object, setting -> value")
            unknown = [key for key in step["settings"] if not callable(getattr(AnyRef, f"set_{key}", None))]
            if unknown:
                raise ValueError(f"{path}: step {name!r}: no AnyRef.set_<name> for {unknown}")
            if index == 0:
                raise ValueError(f"{path}: step {name!r} changes settings, but no step before it writes a model")
    return recipe


def resolve_steps(recipe: dict, out: str) -> list[dict]:
    """The recipe's steps with ``{out}`` and ``{previous}`` filled in: each {"name", "run" or "settings", "model",
    "previous"}."""
    resolved, previous = [], None
    for step in recipe["steps"]:
        model = step["model"] if "run" in step else f"{{out}}/{step['name']}"
        fill = {"out": out, "previous": previous or ""}
        entry = {"name": step["name"], "model": model.format(**fill), "previous": previous}
        if "run" in step:
            entry["run"] = [argument.format(**fill) for argument in step["run"]]
        else:
            entry["settings"] = step["settings"]
        resolved.append(entry)
        previous = entry["model"]
    return resolved


def _apply_settings(step: dict) -> None:
    from anyref import AnyRef

    model = AnyRef.from_pretrained(step["previous"])
    for key, value in step["settings"].items():
        setter = getattr(model, f"set_{key}")
        if isinstance(value, list):
            setter(*value)
        else:
            setter(value)
    model.save_pretrained(step["model"])


def run_recipe(recipe: dict, out: str, name: str, dry_run: bool = False) -> dict:
    """Run the recipe's unfinished steps into ``out`` (module docstring); returns the log it wrote (with
    ``dry_run``: the steps it would run, nothing run or written)."""
    steps = resolve_steps(recipe, out)
    log_path = Path(out) / LOG
    earlier = {}
    if log_path.is_file():
        earlier = {s["name"]: s for s in json.loads(log_path.read_text()).get("steps", [])}
    log = {"recipe": name, "description": recipe.get("description", ""), "out": out, "provenance": run_provenance(),
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                       "torch": torch.__version__},
           "steps": [], "complete": False}
    _check_written_steps(steps, earlier, out)
    for step in steps:
        record = {"name": step["name"], "model": step["model"], **_what_it_runs(step)}
        if _written(step):
            before = earlier.get(step["name"], {})
            record.update(status="written before", seconds=before.get("seconds"),
                          **({"continued": True} if before.get("continued") else {}))
            print(f"recipe: {step['name']}: {step['model']} is written already, not run again", flush=True)
        elif dry_run:
            record.update(status="to run")
            print(" ".join(record["command"]) if "run" in step else
                  f"# settings {json.dumps(step['settings'])}: {step['previous']} -> {step['model']}", flush=True)
        else:
            print(f"recipe: {step['name']} ...", flush=True)
            started = time.time()
            if "run" in step and _continues(step):  # e.g. a training stopped part-way: its checkpoints are there
                record["continued"] = True
                print(f"recipe: {step['name']} continues what an earlier run left in {_out_of(step)}; its seconds "
                      "count this run only", flush=True)
            if "run" in step:
                done = subprocess.run([sys.executable, "-m", "anyref.cli", *step["run"]])
                if done.returncode != 0:
                    raise RuntimeError(f"recipe step {step['name']!r} failed (exit code {done.returncode}): "
                                       f"{' '.join(record['command'])}; fix it and run the recipe again, it "
                                       "continues from this step")
                if not _written(step):
                    raise RuntimeError(f"recipe step {step['name']!r} ran but wrote no model at {step['model']}: "
                                       "the recipe's \"model\" for it is wrong")
            else:
                _apply_settings(step)
            record.update(status="ran", seconds=round(time.time() - started, 1))
            print(f"recipe: {step['name']} took {record['seconds']:.0f} s", flush=True)
        log["steps"].append(record)
        if not dry_run:
            record["weights_sha256"] = _weights_sha256(step["model"])
            _write_log(log_path, log)
    seconds = [s.get("seconds") for s in log["steps"]]
    log["complete"] = not dry_run
    log["total_seconds"] = round(sum(seconds), 1) if None not in seconds else None
    log["model"] = steps[-1]["model"]
    if not dry_run:
        _write_log(log_path, log)
        total = "unknown" if log["total_seconds"] is None else f"{log['total_seconds']:.0f} s"
        print(f"recipe {name}: model {log['model']}, {total} in all (each step's in {log_path})", flush=True)
    return log


def _what_it_runs(step: dict) -> dict:
    """The part of a step's log record that says what it does: its command, or its settings."""
    return {"command": ["anyref", *step["run"]]} if "run" in step else {"settings": step["settings"]}


def _written(step: dict) -> bool:
    """Whether the step's model is there (its config.json: every model is written atomically)."""
    return (Path(step["model"]) / "config.json").is_file()


def _weights_sha256(model_dir: str) -> str:
    """One sha256 over the files that hold a written model's weights (anyref.checkpoint.weight_files). Equal
    digests: equal weights, as saved bytes are deterministic."""
    from anyref.checkpoint import weight_files

    digest = hashlib.sha256()
    for name in weight_files(model_dir):
        digest.update(name.encode() + b"\0")
        with open(Path(model_dir) / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _check_written_steps(steps: list[dict], earlier: dict, out: str) -> None:
    """Refuse, before anything runs, to build on a written model that the recipe as it is now would not have
    written: one whose logged command or settings differ from the step's now (the recipe was edited since), or
    one written after a step that must run again (it was built on that step's old model). Why: a step whose model
    is written is skipped, so an edited recipe would otherwise carry the old step's model on in silence. A written
    model without a log record (copied in by hand) is taken as it is."""
    to_run = None
    for step in steps:
        if not _written(step):
            to_run = to_run or step["name"]
            continue
        remove = (f"remove {('run' in step and _out_of(step)) or step['model']} and what the steps after it wrote, "
                  f"or give another --out than {out}")
        if to_run is not None:
            raise ValueError(f"recipe step {step['name']!r}: {step['model']} is written, but step {to_run!r} "
                             f"before it is not, so it was built on a model that step will replace: {remove}")
        before = earlier.get(step["name"], {})
        logged = {key: before[key] for key in ("command", "settings") if before.get(key) is not None}
        if logged and logged != _what_it_runs(step):
            raise ValueError(f"recipe step {step['name']!r}: {step['model']} was written by `{_said(logged)}`, but "
                             f"the recipe now says `{_said(_what_it_runs(step))}`: {remove}")


def _said(what: dict) -> str:
    """A step's command or settings (``_what_it_runs``) as one line."""
    return " ".join(what["command"]) if "command" in what else json.dumps(what["settings"])


def _out_of(step: dict) -> str | None:
    """The folder a run step's command writes (its ``--out``), if it names one."""
    arguments = step["run"]
    return arguments[arguments.index("--out") + 1] if "--out" in arguments[:-1] else None


def _continues(step: dict) -> bool:
    """Whether a run step's output folder holds what an earlier, unfinished run of it wrote."""
    out = _out_of(step)
    return out is not None and Path(out).is_dir() and any(Path(out).iterdir())


def _write_log(path: Path, log: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(log, indent=1) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of ``anyref recipe`` (and ``python -m train.recipe``)."""
    parser.add_argument("recipe", help="a recipe's name (train/recipes/NAME.json: "
                        f"{', '.join(sorted(p.stem for p in RECIPES.glob('*.json')))}) or a JSON file")
    parser.add_argument("--out", required=True, help="the folder every step writes into, and recipe_log.json")
    parser.add_argument("--dry-run", action="store_true", help="print the steps it would run, run nothing")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    run_recipe(recipe, args.out, Path(args.recipe).stem, dry_run=args.dry_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
