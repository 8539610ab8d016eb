"""Fit a new group head alone on a finished model, its frozen inputs computed once.

    anyref fit-group-head --model synthref-tiny --out runs/prompt-head --samples 20000 --epochs 40
    python -m train.group_head_fit ...      (the same)

Every part but the group head is frozen, so what the head reads - each candidate's [last-layer state, mask token]
and each prompt position's [last-layer state, input embedding] (``AnyRefModel.prompt_head_inputs``) - is the same
every time a sample is seen. The command therefore runs the model once over ``--samples`` group samples of
SynthRef's training stream and ``--val`` of its val split, keeps those inputs (float16), and trains the head on them
for ``--epochs`` epochs: an epoch costs the head's forward and backward, not the model's. Why: a head that compares
each candidate with its prompt (``--head prompt``, :class:`anyref.group_heads.PromptGroupHead`) learns SynthRef's
rules from a finished model's features only after hundreds of thousands of sample passes (docs/mask-groups.md),
which full forward passes make hours and this makes minutes. The head of the epoch with the lowest val loss is
kept, and the model is saved to ``--out`` with ``group_fit.json`` in the same atomic write: the loss curves and the
val split's group scores at every membership threshold and every pair of an empty and a membership threshold.

With ``--text-samples N`` the head also learns SynthRef's "text_select" samples (a text or no-target expression
asked as a group of at most one: which of the scene's objects it describes, if any), N of them cached from the
training stream beside the group samples and ``--text-val`` from the val split, all trained on together. Such a head
can check a mask answered to a text prompt (``AnyRefConfig.check_by_group_head``); group_fit.json adds its scores
on those val samples, as group scores. With ``--check-head`` the fit trains a separate text check head
(``AnyRefConfig.text_check_head``, of the group head's kind) on those text_select samples alone instead, and the
group head is left as it was: the check no longer costs the groups any of the head's capacity
(docs/mask-groups.md). The report is then ``check_fit.json``. With ``--answer-samples N`` the check head learns
from the model's own answers too: N text and no-target prompts of the training stream are answered (the check
off), and each answer mask becomes a group of one, selected when it is the target (IoU >= 0.5); ``--answer-val``
prompts of the val splits give their val loss. Those are the masks the check will judge, wrong where the model errs.

With ``--rank-head`` the fit trains the text rank head (``AnyRefConfig.text_rank_head``, a
:class:`anyref.group_heads.RelationGroupHead`) instead, on ``--peak-samples`` text and no-target prompts of the
training stream, each asked over the candidates the model draws at its answer's location-map peaks
(``AnyRef.location_candidates``, the ones ``rank_text_answers`` ranks), and on ``--text-samples`` text_select
samples, whose candidates are the scene's annotated objects: every object present, the landmark of "left of" too.
Its best epoch is chosen on ``--peak-val`` prompts of the val splits, taken after the first ``EVAL_HELD_OUT`` of
each, which ``anyref eval synthref`` reads by default. The report is ``rank_fit.json``. With ``--reads-pixels`` the
rank head also reads each candidate's own pixels (``AnyRefConfig.text_rank_head_reads_pixels``; measured on the
tiny SynthRef model and not adopted, docs/training-experiments.md).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from anyref.group_heads import GroupHead, PromptGroupHead, group_loss
from anyref.synthref import SynthRef
from eval.group_threshold_probe import THRESHOLDS, empty_threshold_scores, with_model_thresholds
from train.head_input_cache import (ANSWERED_PROMPTS, GROUPS_ONLY, TEXT_SELECT_ONLY, HeadInputs, cache_answer_inputs,
                                    INPUT_KINDS, cache_head_inputs, cache_peak_inputs, cache_stream_inputs)

__all__ = ["head_logits", "fit_group_head", "val_scores", "HEAD_KINDS", "EVAL_HELD_OUT",
           "add_arguments", "run", "main"]

# --head -> the replace_group_head() fields that build it
HEAD_KINDS = {
    "prompt": {"group_head_attends_prompt": True, "group_head_reads_token": False, "group_head_reads_geometry": False},
    "prompt-geometry": {"group_head_attends_prompt": True, "group_head_reads_token": False,
                        "group_head_reads_geometry": True},
    "ras": {"group_head_attends_prompt": False, "group_head_reads_token": False, "group_head_reads_geometry": False},
    "ras-token": {"group_head_attends_prompt": False, "group_head_reads_token": True,
                  "group_head_reads_geometry": False}}


# the val prompts per task that `anyref eval synthref` reads by default: the rank head's best epoch is chosen on the
# ones after them, so that a model's val figures do not come from the prompts its head was chosen on
EVAL_HELD_OUT = 200


def head_logits(head: torch.nn.Module, items: list[HeadInputs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's membership logits over a list of cached samples, as the model computes them in ``select``:
    (logits N, targets N bool, owners N: each candidate's index in ``items``)."""
    dtype = next(head.parameters()).dtype

    def stacked(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # B x N x 2H, B x N bool
        lengths = torch.tensor([len(r) for r in rows])
        chosen = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        return pad_sequence(rows, batch_first=True).to(dtype), chosen

    candidates, candidate_mask = stacked([item.candidates for item in items])
    if isinstance(head, PromptGroupHead):
        prompt, prompt_mask = stacked([item.prompt for item in items])
        geometry, _ = stacked([item.geometry for item in items])
        if getattr(head, "reads_pixels", False):
            crops = pad_sequence([item.crops for item in items], batch_first=True).to(dtype)
            logits = head(candidates, prompt, prompt_mask, geometry, crops)[candidate_mask]
        else:
            logits = head(candidates, prompt, prompt_mask, geometry)[candidate_mask]
    elif isinstance(head, GroupHead):
        hidden = candidates.shape[-1] // 2
        logits = head(candidates[candidate_mask][:, :hidden], candidates[candidate_mask][:, hidden:])
    else:
        raise ValueError(f"{type(head).__name__} reads the image tokens, which are not cached; fit it with "
                         "`anyref train` and a group_head stage instead")
    targets = torch.cat([item.selected for item in items])
    owners = torch.cat([torch.full((len(item.selected),), i, dtype=torch.long) for i, item in enumerate(items)])
    return logits, targets, owners


def _mean_loss(head, items: list[HeadInputs], pos_weight: float, chunk: int = 256) -> float:
    """group_loss over ``items`` (a mean over samples: each chunk's mean weighted by its size)."""
    with torch.no_grad():
        return sum(float(group_loss(*head_logits(head, items[i:i + chunk]), pos_weight)) * len(items[i:i + chunk])
                   for i in range(0, len(items), chunk)) / len(items)


def fit_group_head(head: torch.nn.Module, train: list[HeadInputs], val: list[HeadInputs], epochs: int = 40,
                   lr: float = 1e-3, batch_size: int = 64, pos_weight: float = 5.0, weight_decay: float = 0.01,
                   seed: int = 0, progress: bool = True) -> list[dict]:
    """Train ``head`` in place (AdamW, cosine to 0) on ``train`` with RAS's loss (group_loss, positives weighted
    ``pos_weight``), and leave it at the epoch of lowest loss on ``val``. Returns one record per epoch:
    {"epoch", "train_loss", "val_loss"}."""
    if not train or not val or epochs < 1:
        raise ValueError(f"need training and val samples and at least one epoch (got {len(train)}, {len(val)}, "
                         f"{epochs})")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / steps)))
    history, best = [], (float("inf"), None)
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            items = [train[i] for i in order[start:start + batch_size]]
            loss = group_loss(*head_logits(head, items), pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(items)
        head.eval()
        record = {"epoch": epoch, "train_loss": total / len(train), "val_loss": _mean_loss(head, val, pos_weight)}
        history.append(record)
        bar.set_postfix(train=f"{record['train_loss']:.3f}", val=f"{record['val_loss']:.3f}")
        if record["val_loss"] < best[0]:
            best = (record["val_loss"], {k: v.detach().clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[1])
    return history


def val_scores(head, items: list[HeadInputs], samples: list, thresholds) -> tuple[dict, dict]:
    """group_threshold_scores (one threshold) and empty_threshold_scores (an empty threshold and a membership
    threshold) of the head's probabilities on the cached val samples (their candidates' masks from ``samples``,
    in the same order)."""
    with torch.no_grad():
        logits, _, owners = head_logits(head, items)
    probabilities = logits.float().sigmoid().numpy()
    owners = owners.numpy()
    by_empty = empty_threshold_scores([probabilities[owners == i].astype(np.float64) for i in range(len(items))],
                                      [np.asarray(s.candidates, dtype=bool) for s in samples],
                                      [np.asarray(s.selected, dtype=bool) for s in samples], thresholds)
    # an empty threshold equal to the membership threshold is the one threshold: the grid's diagonal
    return {t: row[t] for t, row in by_empty.items()}, by_empty


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of ``anyref fit-group-head`` (and ``python -m train.group_head_fit``)."""
    parser.add_argument("--model", default="synthref-tiny", help="a shipped model name or an AnyRef directory")
    parser.add_argument("--out", required=True, help="the directory to save the model with its new head to")
    parser.add_argument("--head", default="prompt", choices=sorted(HEAD_KINDS), help="the kind of group head "
                        "(with --check-head: unused, the check head takes the model's group head's kind)")
    parser.add_argument("--samples", type=int, default=20000, help="group samples of the training stream")
    parser.add_argument("--val", type=int, default=1000, help="group samples of the val split (the best epoch)")
    parser.add_argument("--text-samples", type=int, default=0, help="text_select samples of the training stream "
                        "trained on too (texts asked as groups of at most one: for config.check_by_group_head)")
    parser.add_argument("--text-val", type=int, default=300, help="text_select samples of the val split (with "
                        "--text-samples)")
    parser.add_argument("--check-head", action="store_true", help="fit a separate text check head instead "
                        "(config.text_check_head): on --text-samples text_select samples and --answer-samples "
                        "answers, the group head left as it is; --samples and --val are then unused")
    parser.add_argument("--answer-samples", type=int, default=0, help="with --check-head: text and no-target "
                        "prompts of the training stream (half each) answered by the model, each answer mask a "
                        "sample, labelled by IoU >= 0.5 with the target")
    parser.add_argument("--answer-val", type=int, default=300, help="text and no-target prompts of the val splits "
                        "(half each) answered for the val loss, with --answer-samples")
    parser.add_argument("--rank-head", action="store_true", help="fit the text rank head instead "
                        "(config.text_rank_head): on --peak-samples prompts' location candidates and --text-samples "
                        "text_select samples, the group head and the check head left as they are")
    parser.add_argument("--peak-samples", type=int, default=0, help="with --rank-head: text and no-target prompts "
                        "of the training stream (half each), each asked over its answer's location candidates")
    parser.add_argument("--peak-val", type=int, default=400, help="with --rank-head: val prompts (half text, half "
                        f"no-target, after the first {EVAL_HELD_OUT} of each) that choose the best epoch")
    parser.add_argument("--reads-pixels", action="store_true", help="with --rank-head: the head also reads each "
                        "candidate's own pixels (config.text_rank_head_reads_pixels)")
    parser.add_argument("--crop-dropout", type=float, default=0.0, help="with --reads-pixels: the share of the "
                        "crop features dropped in training")
    parser.add_argument("--rank-threshold", type=float, help="with --rank-head, save the model ranking its text "
                        "answers at this threshold (config.rank_text_answers; default: keep the model's own)")
    parser.add_argument("--check-threshold", type=float, help="with --check-head, save the model with the check on "
                        "at this threshold (config.check_by_group_head; default: keep the model's own)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's weight decay")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the head's initialisation, the stream and the order")
    parser.add_argument("--threshold", type=float, help="save the model with this membership threshold "
                        "(default: keep the model's own); group_fit.json scores every threshold on val")
    parser.add_argument("--workers", type=int, default=2, help="processes of one thread each that cache the "
                        "training samples (1: this process, on all its threads)")
    parser.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _cache_train(args: argparse.Namespace, model, world, count: int, task_weights: dict,
                 inputs: str = "select") -> list[HeadInputs]:
    """The head inputs of the first ``count`` samples of the training stream ``args.seed`` with ``task_weights``
    (``inputs``: as cache_stream_inputs takes it - the samples themselves, the model's answers to them, or their
    location candidates)."""
    if args.workers > 1:
        return cache_stream_inputs(args.model, args.seed, count, args.workers, progress=not args.no_progress,
                                   task_weights=task_weights, inputs=inputs, crops=args.reads_pixels)
    cache = INPUT_KINDS[inputs][0]
    return cache(model, world.stream(args.seed, task_weights), count, desc="cache train",
                 progress=not args.no_progress, crops=args.reads_pixels)


def run(args: argparse.Namespace) -> int:
    if min(args.samples, args.val, args.epochs, args.workers) < 1:
        raise ValueError(f"--samples, --val, --epochs and --workers must be at least 1 (got {args.samples}, "
                         f"{args.val}, {args.epochs}, {args.workers})")
    if args.text_samples < 0 or (args.text_samples and args.text_val < 1):
        raise ValueError(f"--text-samples must be >= 0, and --text-val >= 1 with it (got {args.text_samples}, "
                         f"{args.text_val})")
    if args.answer_samples < 0 or (args.answer_samples and args.answer_val < 2):
        raise ValueError(f"--answer-samples must be >= 0, and --answer-val >= 2 with it (got {args.answer_samples}, "
                         f"{args.answer_val})")
    if args.check_head and not (args.text_samples or args.answer_samples):
        raise ValueError("--check-head fits the text check head on text_select samples and the model's own "
                         "answers: give --text-samples N, --answer-samples N or both")
    if args.answer_samples and not args.check_head:
        raise ValueError("--answer-samples are for the text check head: add --check-head")
    if args.check_threshold is not None and not args.check_head:
        raise ValueError("--check-threshold is the text check head's threshold: it needs --check-head")
    if args.rank_head and (args.check_head or args.answer_samples):
        raise ValueError("--rank-head and --check-head fit different heads: fit them one at a time")
    if args.rank_head != bool(args.peak_samples) or (args.peak_samples and args.peak_val < 2):
        raise ValueError("--rank-head fits on --peak-samples N prompts (and --peak-val of at least 2): give both, or "
                         f"neither (got --peak-samples {args.peak_samples}, --peak-val {args.peak_val})")
    if args.reads_pixels and not args.rank_head:
        raise ValueError("--reads-pixels is a kind of text rank head: it needs --rank-head")
    if not 0.0 <= args.crop_dropout < 1.0 or (args.crop_dropout and not args.reads_pixels):
        raise ValueError(f"--crop-dropout is a share in [0, 1) of the crop features of --reads-pixels, got "
                         f"{args.crop_dropout}")
    if args.rank_threshold is not None and not args.rank_head:
        raise ValueError("--rank-threshold is the text rank head's threshold: it needs --rank-head")
    from anyref import AnyRef

    started = time.time()
    model = AnyRef.from_pretrained(args.model).eval()
    torch.manual_seed(args.seed)
    if args.rank_head:
        head = model.add_text_rank_head(reads_pixels=args.reads_pixels, crop_dropout=args.crop_dropout)
        if args.rank_threshold is not None:
            model.set_rank_text_answers(args.rank_threshold)
    elif args.check_head:
        head = model.add_text_check_head()
        if args.check_threshold is not None:
            model.set_check_by_group_head(args.check_threshold)
    else:
        model.replace_group_head(**HEAD_KINDS[args.head])
        head = model.group_head
        if args.threshold is not None:
            model.set_group_threshold(args.threshold)
    world = SynthRef.for_model(model.config)
    progress = not args.no_progress
    train, val, val_samples = [], [], []
    if not (args.check_head or args.rank_head):
        val_samples = world.split("val", "group", args.val)
        train = _cache_train(args, model, world, args.samples, GROUPS_ONLY)
        val = cache_head_inputs(model, val_samples, args.val, desc="cache val", progress=progress)
    text_train, text_val, text_val_samples = [], [], []
    if args.text_samples:
        text_val_samples = world.split("val", "text_select", args.text_val)
        text_train = _cache_train(args, model, world, args.text_samples, TEXT_SELECT_ONLY)
        text_val = cache_head_inputs(model, text_val_samples, args.text_val, desc="cache text val", progress=progress,
                                     crops=args.reads_pixels)
    answer_train, answer_val = [], []
    if args.answer_samples:
        half = args.answer_val // 2
        val_prompts = world.split("val", "text", half) + world.split("val", "no_target", args.answer_val - half)
        answer_train = _cache_train(args, model, world, args.answer_samples, ANSWERED_PROMPTS, inputs="answers")
        answer_val = cache_answer_inputs(model, val_prompts, len(val_prompts), desc="cache val answers",
                                         progress=progress)
    peak_train, peak_val = [], []
    if args.peak_samples:
        half = args.peak_val // 2
        val_prompts = (world.split("val", "text", EVAL_HELD_OUT + half)[EVAL_HELD_OUT:]
                       + world.split("val", "no_target", EVAL_HELD_OUT + args.peak_val - half)[EVAL_HELD_OUT:])
        peak_train = _cache_train(args, model, world, args.peak_samples, ANSWERED_PROMPTS, inputs="peaks")
        peak_val = cache_peak_inputs(model, val_prompts, len(val_prompts), desc="cache val peaks", progress=progress,
                                     crops=args.reads_pixels)
    # the rank head's epoch is chosen on its own candidates alone: text_select val samples hold every object
    text_val_for_loss = [] if args.rank_head else text_val
    cached = time.time() - started
    head.float()
    history = fit_group_head(head, train + text_train + answer_train + peak_train,
                             val + text_val_for_loss + answer_val + peak_val, args.epochs,
                             args.lr, args.batch_size,
                             model.config.group_pos_weight, args.weight_decay, seed=args.seed, progress=progress)
    thresholds = with_model_thresholds(THRESHOLDS, model.config)
    scores, by_empty = val_scores(head, val, val_samples, thresholds) if val else (None, None)
    text_scores = val_scores(head, text_val, text_val_samples, thresholds)[0] if text_val else None
    head.to(model.dtype)
    best = min(history, key=lambda r: r["val_loss"])
    kind = next((name for name, fields in HEAD_KINDS.items()
                 if all(getattr(model.config, k) == v for k, v in fields.items())), "other")
    fitted = "text_rank_head" if args.rank_head else "text_check_head" if args.check_head else "group_head"
    report = {"model": args.model, "head": ("relation-pixels" if args.reads_pixels else "relation") if args.rank_head else kind, "fitted": fitted,
              "samples": len(train), "val_samples": len(val),
              "epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
              "seed": args.seed, "crop_dropout": args.crop_dropout,
              "best_epoch": best["epoch"], "group_threshold": model.config.group_threshold,
              "group_empty_threshold": model.config.group_empty_threshold,
              "check_by_group_head": model.config.check_by_group_head,
              "rank_text_answers": model.config.rank_text_answers,
              "seconds": {"cache": round(cached, 1), "total": round(time.time() - started, 1)},
              "history": history, "val_by_threshold": scores, "val_by_empty_threshold": by_empty,
              "text_samples": args.text_samples, "text_val_samples": len(text_val),
              "answer_samples": args.answer_samples, "answer_masks": len(answer_train),
              "answer_val_masks": len(answer_val),
              "peak_samples": args.peak_samples, "peak_prompts_with_candidates": len(peak_train),
              "peak_val_prompts": len(peak_val),
              "text_val_by_threshold": text_scores}
    name = {"text_rank_head": "rank_fit.json", "text_check_head": "check_fit.json",
            "group_head": "group_fit.json"}[fitted]
    model.save_pretrained(args.out, extra_files={name: json.dumps(report, indent=1) + "\n"})
    print(f"best epoch {best['epoch']}: val loss {best['val_loss']:.3f}")
    for title, table in ((f"val split, {len(val)} group samples:", scores),
                         (f"texts asked as groups, {len(text_val)} val samples (N-acc: no-target texts answered "
                          "empty):", text_scores)):
        if table:
            print(title)
            print(f"{'threshold':>9} {'cIoU':>6} {'gIoU':>6} {'N-acc':>6} {'T-acc':>6}")
            for t, m in table.items():
                print(f"{t:>9} {m['ciou']:6.3f} {m['giou']:6.3f} {m['n_acc']:6.3f} {m['t_acc']:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
