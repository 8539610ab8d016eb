"""Which threshold for ``check_by_group_head``: text cIoU and no-target prompts answered without a mask at each.

    python -m eval.group_check_probe --model synthref-tiny --n 200 --split val --out probe.json

On the first ``n`` SynthRef text and no_target samples, each prompt is answered once with the check off, and each
mask of the answer gets its check probability (``AnyRef.check_scores``: the text check head's or else the group
head's membership probability for it, the text asked as a ``select`` prompt with that mask as its one candidate:
what ``check_by_group_head`` compares with its threshold). For each threshold t the
probe then gives what ``anyref eval synthref`` would score with the check at t - text cIoU and found rate, the share
of no-target prompts answered without a mask - and the same for the check off. Why a probe: the check drops wrong
objects and absent ones, but also some right ones, so its threshold trades text cIoU for no-target answers; the
rule for the shipped threshold ("chosen") is the highest sum of the two figures on the val split.
"""
from __future__ import annotations

import numpy as np

from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic
from eval.runners import union_mask

__all__ = ["check_probabilities", "scores_at", "group_check_probe", "THRESHOLDS"]

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def check_probabilities(model, samples: list) -> list[dict]:
    """Per sample, its answer with the check off: {"masks": K x H x W bool, "probabilities": K (the check's; those
    of empty masks are 1, as the check never drops one), "target": H x W bool, the union of the sample's masks}."""
    before = model.config.check_by_group_head
    model.set_check_by_group_head(None)
    try:
        records = []
        for sample in samples:
            result = model.segment(sample.image, sample.references)
            drawn = result.masks.any((1, 2))
            probabilities = np.ones(len(result.masks))
            if drawn.any():
                probabilities[drawn] = model.check_scores(sample.image, sample.references, result.masks[drawn])
            records.append({"masks": result.masks, "probabilities": probabilities,
                            "target": union_mask(sample.masks, sample.image.shape[:2])})
        return records
    finally:
        model.set_check_by_group_head(before)


def scores_at(text: list[dict], no_target: list[dict], threshold: float | None) -> dict:
    """{"text_ciou", "text_found_rate", "no_target_no_mask_rate", "sum"} with the check at ``threshold`` (None: off):
    a mask is kept when its probability is at least the threshold, as in the check."""
    def kept(record: dict) -> np.ndarray:
        keep = np.ones(len(record["masks"]), dtype=bool) if threshold is None else record["probabilities"] >= threshold
        return union_mask(record["masks"][keep], record["target"].shape)

    inter = union = 0
    found = []
    for record in text:
        pred = kept(record)
        inter += int((pred & record["target"]).sum())
        union += int((pred | record["target"]).sum())
        found.append(bool(pred.any()))
    no_mask = float(np.mean([not kept(r).any() for r in no_target]))
    ciou = inter / union if union else 0.0
    return {"text_ciou": ciou, "text_found_rate": float(np.mean(found)), "no_target_no_mask_rate": no_mask,
            "sum": ciou + no_mask}


def group_check_probe(model, n: int = 200, split: str = "val", thresholds=THRESHOLDS,
                      world_seed: int = 0) -> RunOutput:
    """The module docstring's figures over the first ``n`` text and no_target samples of the SynthRef split."""
    world = SynthRef.for_model(model.config, world_seed)
    text = check_probabilities(model, world.split(split, "text", n))
    no_target = check_probabilities(model, world.split(split, "no_target", n))
    by_threshold = {str(t): scores_at(text, no_target, t) for t in thresholds}
    chosen = max(by_threshold, key=lambda t: by_threshold[t]["sum"])
    return RunOutput(metrics={"off": scores_at(text, no_target, None), "by_threshold": by_threshold,
                              "chosen": float(chosen)},
                     counts={"text": {"samples": len(text)}, "no_target": {"samples": len(no_target)}},
                     settings={"n": n, "split": split, "thresholds": list(thresholds), "world_seed": world_seed,
                               "rule": "the highest sum of text cIoU and no-target no_mask_rate"})


def _report(run: RunOutput, model) -> None:
    print(f"{'threshold':>9} {'text cIoU':>9} {'found':>6} {'no-target':>9}")
    for name, m in [("off", run.metrics["off"]), *run.metrics["by_threshold"].items()]:
        print(f"{name:>9} {m['text_ciou']:9.3f} {m['text_found_rate']:6.3f} {m['no_target_no_mask_rate']:9.3f}")
    print(f"chosen (highest sum of text cIoU and no-target): {run.metrics['chosen']}")


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="val"),
                          lambda model, args: group_check_probe(model, args.n, args.split), _report,
                          "group_check_probe")


if __name__ == "__main__":
    raise SystemExit(main())
