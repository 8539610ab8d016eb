"""Validation during training: the model on SynthRef's fixed val split (never the test split), logged to val.jsonl.

One line per evaluation: {"step", "seconds", "n", "metrics": {task: {metric: value}}, "primary": {task: metric}}.
Rank 0 evaluates; the other ranks wait for it (ZeRO-2 keeps full weights on every rank).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch.distributed as dist

__all__ = ["validate"]


def validate(model, config, step: int, path: Path, rank: int) -> dict | None:
    """Score ``model`` on the first ``config.eval_n`` val samples of each task; returns the entry on rank 0."""
    from eval.synthref_eval import evaluate_synthref

    entry = None
    if rank == 0:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            figures = evaluate_synthref(model, n=config.eval_n, tasks=config.eval_tasks, split="val",
                                        allow_untrained=True)
        finally:
            model.train(was_training)
        entry = {"step": step, "seconds": round(time.perf_counter() - start, 1), "n": config.eval_n,
                 "metrics": figures["metrics"], "primary": figures["primary"]}
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")
        shown = ", ".join(f"{task} {figures['metrics'][task][name]:.3f}" for task, name in figures["primary"].items())
        print(f"val @ {step}: {shown}", flush=True)
    if dist.is_initialized():
        dist.barrier()
    return entry
