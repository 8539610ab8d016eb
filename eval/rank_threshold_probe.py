"""At which threshold should a model rank its text answers? A probe of ``rank_text_answers``' one decision.

    python -m eval.rank_threshold_probe --model runs/rank-head --split val --start 200 --n 200 --out probe.json

For each of ``--n`` text and ``--n`` no_target prompts of the split, from item ``--start``, the probe answers once
as ``segment`` does with ranking on: the answer's location candidates, the text rank head's probability of each,
and the best one's mask after the CRF. At threshold t the answer is that mask when its probability is over t, else
none (answers that are not ranked - no ``<obj>``, or several - are the model's own at every t), so one pass gives
every threshold: text cIoU, text prompts answered with a mask, no-target prompts answered without one. It reports
them for THRESHOLDS (and the model's own threshold), the threshold the shipped rule chooses - the highest text cIoU
with no-target at least ``--min-no-target`` - and two ceilings: text cIoU if every text prompt took its best
candidate (a perfect no-target decision), and the share of text prompts whose best candidate is the target
(IoU >= 0.5). The model's threshold gives the figures ``anyref eval synthref`` gives on the same prompts.

With an answer verifier (``AnyRefConfig.answer_verifier``) the probe also reads its probability of each best
candidate, and scores every pair of a rank threshold (PAIR_RANK_THRESHOLDS) and a verifier threshold
(VERIFIER_THRESHOLDS, as ``verify_by_pixels`` takes it; a best candidate answered when its rank probability is over
the one and its verifier probability at least the other), choosing the pair by the same rule. Answers that are not
ranked keep the model's own checks at every pair. The model's own pair gives ``anyref eval synthref``'s figures.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic
from anyref.outputs import SegmentResult, masks_and_scores
from eval.runners import union_mask

__all__ = ["ranked_answers", "scores_at", "rank_threshold_probe", "THRESHOLDS", "PAIR_RANK_THRESHOLDS",
           "VERIFIER_THRESHOLDS"]

THRESHOLDS = tuple(round(0.5 + 0.02 * i, 2) for i in range(25))  # 0.5 ... 0.98
PAIR_RANK_THRESHOLDS = tuple(round(0.1 + 0.04 * i, 2) for i in range(23))  # 0.1 ... 0.98: the verifier may take
# over much of the no-target decision, so lower rank thresholds than THRESHOLDS'
VERIFIER_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def ranked_answers(model, samples: list, progress: bool = False) -> list[dict]:
    """Per sample: {"probability": its best location candidate's by the text rank head (0.0 without candidates;
    None when the answer is not ranked), "candidate": it has one, "verifier": the answer verifier's probability of
    that candidate (None without a verifier or a candidate), "overlap", "cover": the intersection and union
    with the target of that candidate's mask after the CRF (of an unranked answer, of the model's own answer),
    "target": the target's pixels, "found": whether an unranked answer has a mask, "right": that mask is the target
    (IoU >= 0.5)}."""
    if model.config.rank_text_answers is None:
        raise ValueError("this model does not rank its text answers (config.rank_text_answers is off): give "
                         "--rank-text-answers THRESHOLD, or a model with a text rank head")
    out = []
    for sample in tqdm(samples, desc="rank", disable=not progress, dynamic_ncols=True):
        references = model._prompt_references(sample.references, False)
        generations, batch, sam = model._run(sample.image, [references], "segment", False)
        target = union_mask(sample.masks, sample.image.shape[:2])
        record = {"probability": None, "found": False, "candidate": False, "verifier": None,
                  "target": int(target.sum())}
        if model._ranked_rows(generations, [references]):
            sam = model._sam_of(batch, sam)
            best = model._rank_best(generations, batch, sam, [sample.image], [references], [0], False)
            logits, record["probability"] = best.get(0, (None, 0.0))
            pred = np.zeros_like(target)
            if logits is not None:
                record["candidate"] = True
                masks, scores = masks_and_scores(logits)
                chosen = SegmentResult(masks.cpu().numpy(), scores.cpu().numpy(), "", logits.cpu().numpy())
                pred = union_mask(model._crf_refined([chosen], [sample.image])[0].masks, target.shape)
                if model.answer_verifier is not None:  # the mask after the CRF, as the check reads it; the check
                    # leaves an empty mask as it is (a candidate has pixels, and the CRF never erases them all)
                    record["verifier"] = float(model._verifier_probabilities(
                        sample.image, [(pred, references)], False)[0]) if pred.any() else 1.0
        else:
            result = model._answers(generations, batch, sam, [sample.image], [references], False)[0]
            record["found"], pred = result.found, union_mask(result.masks, target.shape)
        overlap, cover = int((pred & target).sum()), int((pred | target).sum())
        record.update(overlap=overlap, cover=cover, right=bool(target.any() and overlap >= 0.5 * cover))
        out.append(record)
    return out


def _answered(record: dict, threshold: float | None, verifier_threshold: float | None) -> bool:
    """Whether the prompt is answered with a mask at rank ``threshold`` (None: every best candidate taken) and
    ``verifier_threshold`` (None: no check)."""
    if record["probability"] is None:
        return record["found"]
    return (record["candidate"] and (threshold is None or record["probability"] > threshold)
            and (verifier_threshold is None or record["verifier"] >= verifier_threshold))


def scores_at(text: list[dict], no_target: list[dict], threshold: float | None,
              verifier_threshold: float | None = None) -> dict:
    """{"text_ciou", "text_found_rate", "no_target_no_mask_rate"} at rank ``threshold`` (None: every best candidate
    taken, the no-target decision left out) and ``verifier_threshold`` (None: no verifier check). A text prompt
    answered without a mask adds its target to the union."""
    kept = [_answered(r, threshold, verifier_threshold) for r in text]
    overlap = sum(r["overlap"] for r, k in zip(text, kept) if k)
    cover = sum(r["cover"] if k else r["target"] for r, k in zip(text, kept))
    return {"text_ciou": overlap / cover if cover else 0.0, "text_found_rate": float(np.mean(kept)),
            "no_target_no_mask_rate": float(np.mean([not _answered(r, threshold, verifier_threshold)
                                                     for r in no_target]))}


def _best(table: dict, keys, min_no_target: float):
    """The key of ``table`` (key -> scores_at's dict) with the highest text cIoU among those with no-target at
    least ``min_no_target`` (ties: the key listed first, the lowest thresholds); None when none has."""
    allowed = [k for k in keys if table[k]["no_target_no_mask_rate"] >= min_no_target]
    return max(allowed, key=lambda k: table[k]["text_ciou"]) if allowed else None


def rank_threshold_probe(model, n: int = 200, split: str = "val", start: int = 0, min_no_target: float = 0.92,
                         world_seed: int = 0, progress: bool = True) -> RunOutput:
    """The module docstring's figures over items ``start`` .. ``start + n`` of the split's text and no_target
    prompts."""
    if n < 1 or start < 0:
        raise ValueError(f"--n must be at least 1 and --start at least 0, got {n} and {start}")
    world = SynthRef.for_model(model.config, world_seed)
    records = {task: ranked_answers(model, world.split(split, task, start + n)[start:], progress)
               for task in ("text", "no_target")}
    own, own_verifier = model.config.rank_text_answers, model.config.verify_by_pixels
    thresholds = sorted(set(THRESHOLDS) | {own})
    table = {str(t): scores_at(records["text"], records["no_target"], t, own_verifier) for t in thresholds}
    chosen = _best(table, [str(t) for t in thresholds], min_no_target)
    chosen = None if chosen is None else float(chosen)
    ranked_text = [r for r in records["text"] if r["probability"] is not None]
    metrics = {"by_threshold": table, "model_threshold": own, "chosen": chosen,
               "every_best_candidate": scores_at(records["text"], records["no_target"], None),
               "text_best_is_target": float(np.mean([r["right"] for r in ranked_text])) if ranked_text else None}
    if model.answer_verifier is not None:
        pairs = {f"{t},{v}": scores_at(records["text"], records["no_target"], t, v)
                 for v in sorted(set(VERIFIER_THRESHOLDS) | ({own_verifier} - {None}))
                 for t in sorted(set(PAIR_RANK_THRESHOLDS) | {own})}
        pair = _best(pairs, list(pairs), min_no_target)
        metrics.update(by_pair=pairs, model_verifier_threshold=own_verifier,
                       chosen_pair=None if pair is None else [float(x) for x in pair.split(",")])
    counts = {task: {"samples": len(r), "ranked": sum(x["probability"] is not None for x in r),
                     "with_candidates": sum(x["candidate"] for x in r)} for task, r in records.items()}
    # no per_sample: its records are not the ones `anyref eval compare` resamples
    return RunOutput(metrics=metrics, counts=counts,
                     settings={"n": n, "split": split, "start": start, "min_no_target": min_no_target,
                               "world_seed": world_seed})


def _report(run: RunOutput, model) -> None:
    m, s = run.metrics, run.settings
    print(f"{s['split']} items {s['start']}..{s['start'] + s['n']}: {run.counts['text']['ranked']} text and "
          f"{run.counts['no_target']['ranked']} no-target answers ranked")
    print(f"{'threshold':>9} {'text cIoU':>9} {'found':>6} {'no-target':>9}")
    for t, row in m["by_threshold"].items():
        mark = " <- the model's" if float(t) == m["model_threshold"] else ""
        mark += " <- chosen" if m["chosen"] is not None and float(t) == m["chosen"] else ""
        print(f"{t:>9} {row['text_ciou']:9.3f} {row['text_found_rate']:6.3f} {row['no_target_no_mask_rate']:9.3f}"
              f"{mark}")
    every = m["every_best_candidate"]
    print(f"every best candidate taken: text cIoU {every['text_ciou']:.3f} (no-target "
          f"{every['no_target_no_mask_rate']:.3f}); best candidate is the target for "
          f"{m['text_best_is_target']:.3f} of ranked text prompts")
    if m["chosen"] is None:
        print(f"no threshold keeps no-target at {s['min_no_target']} or more")
    if "by_pair" in m:
        print(f"with the answer verifier (the model's: rank {m['model_threshold']}, verifier "
              f"{m['model_verifier_threshold']}); per verifier threshold, the rank threshold the rule chooses:")
        print(f"{'verifier':>8} {'rank':>5} {'text cIoU':>9} {'found':>6} {'no-target':>9}")
        for verifier in sorted({key.split(",")[1] for key in m["by_pair"]}, key=float):
            keys = [key for key in m["by_pair"] if key.split(",")[1] == verifier]
            key = _best(m["by_pair"], keys, s["min_no_target"])
            if key is None:
                print(f"{verifier:>8}  none keeps no-target at {s['min_no_target']}")
                continue
            row = m["by_pair"][key]
            mark = " <- chosen" if [float(x) for x in key.split(",")] == m["chosen_pair"] else ""
            print(f"{verifier:>8} {key.split(',')[0]:>5} {row['text_ciou']:9.3f} {row['text_found_rate']:6.3f} "
                  f"{row['no_target_no_mask_rate']:9.3f}{mark}")


def main(argv: list[str] | None = None) -> int:
    parser = diagnostic_parser(__doc__, n=200, split="val", n_help="text and no_target prompts each")
    parser.add_argument("--start", type=int, default=0, help="the first item of each task read (the rank head's "
                        "fit chooses its epoch on val items 200..400)")
    parser.add_argument("--min-no-target", type=float, default=0.92, help="the rule's floor on no-target prompts "
                        "answered without a mask")
    return run_diagnostic(argv, parser, lambda model, args: rank_threshold_probe(
        model, args.n, args.split, args.start, args.min_no_target), _report, "rank_threshold_probe")


if __name__ == "__main__":
    raise SystemExit(main())
