"""``anyref train``: the training loop as a sub-command (see train/loop.py for multi-process launches); and
``anyref fit-group-head``: a new group head fitted alone on a finished model (train/group_head_fit.py); ``anyref
fit-verifier``: a new answer verifier fitted alone on a finished model (train/verifier_fit.py); ``anyref recipe``:
a model's whole recipe, its stages, fits and settings in order and timed (train/recipe.py)."""
from __future__ import annotations

__all__ = ["register"]


def register(subparsers) -> None:
    from train.loop import add_arguments

    parser = subparsers.add_parser("train", help="train AnyRef (LoRA + DeepSpeed ZeRO-2)",
                                   description="Train AnyRef. Resumes from OUT/checkpoints when present.")
    add_arguments(parser)
    parser.set_defaults(func=_run)
    from train import group_head_fit

    fit = subparsers.add_parser("fit-group-head", help="fit a new group head alone on a finished model",
                                description=group_head_fit.__doc__.split("\n\n")[0])
    group_head_fit.add_arguments(fit)
    fit.set_defaults(func=group_head_fit.run)
    from train import verifier_fit

    verifier = subparsers.add_parser("fit-verifier", help="fit a new answer verifier alone on a finished model",
                                     description=verifier_fit.__doc__.split("\n\n")[0])
    verifier_fit.add_arguments(verifier)
    verifier.set_defaults(func=verifier_fit.run)
    from train import recipe

    whole = subparsers.add_parser("recipe", help="run a model's whole recipe: its stages, fits and settings, timed",
                                  description=recipe.__doc__.split("\n\n")[0])
    recipe.add_arguments(whole)
    whole.set_defaults(func=recipe.run)


def _run(args) -> int:
    from train.loop import run

    return run(args)
