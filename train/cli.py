"""``anyref train``: the training loop as a sub-command (see train/loop.py for multi-process launches)."""
from __future__ import annotations

__all__ = ["register"]


def register(subparsers) -> None:
    from train.loop import add_arguments

    parser = subparsers.add_parser("train", help="train AnyRef (LoRA + DeepSpeed ZeRO-2)",
                                   description="Train AnyRef. Resumes from OUT/checkpoints when present.")
    add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from train.loop import run

    return run(args)
