"""Mask groups split by their rule: which kinds of group prompt a model answers, and which it does not.

    python -m eval.group_rules --model synthref-tiny --n 200 --out group-rules.json

For the first ``n`` samples of SynthRef's ``group`` split, each asked as ``anyref eval synthref`` asks it
(``select`` with the sample's candidates), the figures per rule ("all_shape", "all_colour", "all_size",
"same_colour", "same_shape", "spatial") and over all: ReLA's cIoU / gIoU / N-acc of the union of the selected
candidates (metrics.md), ``exact`` (the share of groups selected exactly, member for member) and the mean numbers
of members missed and non-members selected per sample. Whatever decides the group - the RAS head or an
``<obj>`` (``group_by_obj``) - is scored the same way.
"""
from __future__ import annotations

import numpy as np

from anyref.synthref import SynthRef
from eval.metrics import GresAccumulator
from eval.results import RunOutput, diagnostic_parser, run_diagnostic

__all__ = ["group_rules"]


def _summary(rows: list[dict]) -> dict:
    scores = GresAccumulator()
    for row in rows:
        scores.add(row["pred"], row["truth"], not row["picked"].any(), not row["selected"].any())
    figures = scores.result()
    figures["exact"] = float(np.mean([np.array_equal(r["picked"], r["selected"]) for r in rows]))
    figures["missed"] = float(np.mean([(r["selected"] & ~r["picked"]).sum() for r in rows]))
    figures["extra"] = float(np.mean([(r["picked"] & ~r["selected"]).sum() for r in rows]))
    figures["samples"] = len(rows)
    figures["empty_groups"] = int(sum(not r["selected"].any() for r in rows))
    return figures


def group_rules(model, n: int = 200, split: str = "test", world_seed: int = 0) -> RunOutput:
    """_summary() over all of the first ``n`` group samples of the split and per rule."""
    world = SynthRef.for_model(model.config, world_seed)
    rows, rules = [], []
    for sample in world.split(split, "group", n):
        result = model.select(sample.image, sample.references, candidates=sample.candidates)
        picked = np.zeros(len(sample.candidates), dtype=bool)
        picked[result.indices] = True
        empty = np.zeros(sample.image.shape[:2], dtype=bool)
        truth = sample.candidates[sample.selected].any(0) if sample.selected.any() else empty
        rows.append({"pred": result.union, "truth": truth, "picked": picked, "selected": sample.selected})
        rules.append(sample.meta["rule"])
    metrics = {"all": _summary(rows)}
    metrics.update({rule: _summary([r for r, k in zip(rows, rules) if k == rule]) for rule in sorted(set(rules))})
    decided_by = "group_head"
    if model.config.group_by_obj:
        decided_by = "generated obj" if model.config.group_obj_answer == "generated" else "obj"
    return RunOutput(metrics=metrics, counts={rule: rules.count(rule) for rule in sorted(set(rules))},
                     settings={"n": n, "split": split, "world_seed": world_seed, "decided_by": decided_by})


def _report(run: RunOutput, model) -> None:
    print(f"groups decided by {run.settings['decided_by']}")
    print(f"{'rule':>12} {'n':>4} {'empty':>5} | {'cIoU':>5} {'gIoU':>5} {'N-acc':>5} | exact | missed / extra")
    for rule, m in run.metrics.items():
        n_acc = "-" if not m["empty_groups"] else f"{m['n_acc']:.2f}"
        print(f"{rule:>12} {m['samples']:4d} {m['empty_groups']:5d} | {m['ciou']:5.3f} {m['giou']:5.3f} {n_acc:>5} | "
              f"{m['exact']:5.2f} | {m['missed']:.2f} / {m['extra']:.2f}")


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="test"),
                          lambda model, args: group_rules(model, args.n, args.split), _report, "group_rules")


if __name__ == "__main__":
    raise SystemExit(main())
