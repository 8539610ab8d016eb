"""Fit a new answer verifier alone on a finished model.

    anyref fit-verifier --model synthref-tiny --out runs/verifier --steps 4000
    python -m train.verifier_fit ...      (the same)

The answer verifier (:class:`anyref.answer_verifier.AnswerVerifier`, ``AnyRefConfig.answer_verifier``) reads a
mask's own pixels and a prompt's words, and says whether the mask is what the prompt describes. It reads nothing of
the LLM, so it is fitted on its own, every other part of the model untouched: on SynthRef's "text_select" samples of
the training stream (a text or a no-target expression - half each - over the scene's object masks and a few
background patches, the described object marked, if any), each mask a question. The masks are grown or shrunk by a
pixel at random, as a model's answer would be. A sample costs the verifier's forward and backward alone: 4,000
steps of 32 samples take about 15 minutes on 2 CPU cores.

Every ``--eval-every`` steps the loss and accuracy on ``--val`` text_select samples of the val split are measured;
the weights with the lowest val loss are kept, and the model is saved to ``--out`` with ``verifier_fit.json`` (the
curves, the settings, the time) in the same atomic write. ``--threshold`` saves it with the check on
(``AnyRefConfig.verify_by_pixels``); ``--rank-threshold`` with text answers ranked at that threshold
(``rank_text_answers``), the two chosen together (docs/training-experiments.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anyref.answer_verifier import VerifierInputs, prompt_ids, verifier_inputs
from anyref.synthref import SynthRef

__all__ = ["add_arguments", "run", "main", "verifier_batch", "jittered"]

TASK = "text_select"


def jittered(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """K x H x W bool masks, each grown by one pixel (a quarter of them), shrunk by one (a quarter, unless that
    leaves fewer than 5 pixels) or kept."""
    out = []
    for mask in masks:
        draw = rng.random()
        if draw < 0.5:
            frame = torch.from_numpy(mask).float()[None, None]
            if draw < 0.25:
                mask = (F.max_pool2d(frame, 3, 1, 1)[0, 0] > 0.5).numpy()
            else:
                shrunk = (-F.max_pool2d(-frame, 3, 1, 1)[0, 0] > 0.5).numpy()  # min pooling
                mask = shrunk if shrunk.sum() > 4 else mask
        out.append(mask)
    return np.stack(out)


def verifier_batch(samples: list, tokenizer, rng: np.random.Generator | None = None) -> tuple[VerifierInputs,
                                                                                                torch.Tensor]:
    """(the questions of "select" samples of text alone - every candidate of each, masks jittered when ``rng`` is
    given - , their labels N float: selected or not)."""
    masks = [sample.candidates if rng is None else jittered(sample.candidates, rng) for sample in samples]
    inputs = verifier_inputs([sample.image for sample in samples], masks,
                             [prompt_ids(tokenizer, sample.references) for sample in samples])
    labels = torch.from_numpy(np.concatenate([sample.selected for sample in samples]).astype(np.float32))
    return inputs, labels


@torch.no_grad()
def _val_scores(verifier, batches: list) -> dict:
    """{"loss", "accuracy"} over the val batches, each question weighted alike."""
    verifier.eval()
    losses, right, count = 0.0, 0, 0
    for inputs, labels in batches:
        logits = verifier(inputs)
        losses += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
        right += int(((logits > 0).float() == labels).sum())
        count += len(labels)
    verifier.train()
    return {"loss": losses / count, "accuracy": right / count}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of ``anyref fit-verifier`` (and ``python -m train.verifier_fit``)."""
    parser.add_argument("--model", default="synthref-tiny", help="a shipped model name or an AnyRef directory")
    parser.add_argument("--out", required=True, help="the directory to save the model with its verifier to")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32, help="text_select samples a step")
    parser.add_argument("--lr", type=float, default=2e-3, help="the one-cycle schedule's peak")
    parser.add_argument("--warmup", type=float, default=0.05, help="the share of the steps that warms up")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's weight decay")
    parser.add_argument("--val", type=int, default=256, help="text_select samples of the val split")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between val measurements")
    parser.add_argument("--seed", type=int, default=0, help="the verifier's initialisation, the stream, the jitter")
    parser.add_argument("--threshold", type=float, help="save the model with its text answers checked by the "
                        "verifier at this threshold (config.verify_by_pixels; default: off)")
    parser.add_argument("--rank-threshold", type=float, help="save the model ranking its text answers at this "
                        "threshold (config.rank_text_answers; default: keep the model's own)")
    parser.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _check(args: argparse.Namespace) -> None:
    if min(args.steps, args.batch_size, args.val, args.eval_every) < 1:
        raise ValueError(f"--steps, --batch-size, --val and --eval-every must be at least 1 (got {args.steps}, "
                         f"{args.batch_size}, {args.val}, {args.eval_every})")
    if not (args.lr > 0 and 0.0 < args.warmup < 1.0 and args.weight_decay >= 0):
        raise ValueError(f"--lr must be > 0, --warmup in (0, 1) and --weight-decay >= 0 (got {args.lr}, "
                         f"{args.warmup}, {args.weight_decay})")
    for flag, value in (("--threshold", args.threshold), ("--rank-threshold", args.rank_threshold)):
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"{flag} is a probability threshold in (0, 1), got {value}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from anyref import AnyRef

    started = time.time()
    model = AnyRef.from_pretrained(args.model)
    model.eval()
    if args.rank_threshold is not None:
        model.set_rank_text_answers(args.rank_threshold)  # validated before the long part
    torch.manual_seed(args.seed)
    verifier = model.add_answer_verifier().float().train()
    world = SynthRef.for_model(model.config)
    val = world.split("val", TASK, args.val)
    val_batches = [verifier_batch(val[i:i + 64], model.tokenizer) for i in range(0, len(val), 64)]
    optimizer = torch.optim.AdamW(verifier.parameters(), args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps + 1,
                                                   pct_start=args.warmup)
    stream, rng = world.stream(args.seed, {TASK: 1.0}), np.random.default_rng(args.seed)
    history, best, running = [], None, None
    bar = tqdm(range(1, args.steps + 1), desc="fit verifier", disable=args.no_progress, dynamic_ncols=True)
    for step in bar:
        inputs, labels = verifier_batch([next(stream) for _ in range(args.batch_size)], model.tokenizer, rng)
        loss = F.binary_cross_entropy_with_logits(verifier(inputs), labels)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the verifier's loss is {loss.item()} at step {step}: lower --lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            scores = _val_scores(verifier, val_batches)
            history.append({"step": step, "train_loss": round(running, 5), "val_loss": round(scores["loss"], 5),
                            "val_accuracy": round(scores["accuracy"], 5)})
            bar.set_postfix(val_loss=f"{scores['loss']:.3f}", val_accuracy=f"{scores['accuracy']:.3f}")
            if best is None or scores["loss"] < best[0]["val_loss"]:
                best = (history[-1], copy.deepcopy(verifier.state_dict()))
    verifier.load_state_dict(best[1])
    model.answer_verifier = verifier.to(model.dtype).eval()
    if args.threshold is not None:
        model.set_verify_by_pixels(args.threshold)
    report = {"model": args.model, "task": TASK, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "warmup": args.warmup, "weight_decay": args.weight_decay, "val_samples": len(val),
              "seed": args.seed, "best_step": best[0]["step"], "best": best[0],
              "verify_by_pixels": model.config.verify_by_pixels,
              "rank_text_answers": model.config.rank_text_answers,
              "seconds": round(time.time() - started, 1), "history": history}
    model.save_pretrained(args.out, extra_files={"verifier_fit.json": json.dumps(report, indent=1) + "\n"})
    print(f"best step {best[0]['step']}: val loss {best[0]['val_loss']:.3f}, accuracy {best[0]['val_accuracy']:.3f}; "
          f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
