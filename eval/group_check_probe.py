"""Which threshold for ``check_by_group_head``: text cIoU and no-target prompts answered without a mask at each.

    python -m eval.group_check_probe --model synthref-tiny --n 200 --split val --out probe.json

On the first ``n`` SynthRef text and no_target samples, each prompt is answered once with the check off, and each
mask of the answer gets its check probability (``AnyRef.check_scores``: the text check head's or else the group
head's membership probability for it, the text asked as a ``select`` prompt with that mask as its one candidate:
what ``check_by_group_head`` compares with its threshold). For each threshold t the
probe then gives what ``anyref eval synthref`` would score with the check at t - text cIoU and found rate, the share
of no-target prompts answered without a mask - and the same for the check off. Why a probe: the check drops wrong
objects and absent ones, but also some right ones, so its threshold trades text cIoU for no-target answers; the
first rule for a threshold ("chosen") is the highest sum of the two figures on the val split; the second
("chosen_by_giou") the highest gIoU over the text and no-target prompts together, the generalized referring
benchmarks' own score (gRefCOCO), in which a no-target prompt counts 1 when answered without a mask and a dropped
right answer counts 0. For the shipped text check head both chose 0.85 on val (docs/mask-groups.md). Each
threshold also gets the 95% paired bootstrap interval of its text cIoU minus the
check-off figure. ``--world-seed`` probes fresh samples instead of the fixed splits.
"""
from __future__ import annotations

import numpy as np

from anyref.mask_crf import crf_refined_result
from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic
from eval.runners import union_mask

__all__ = ["check_probabilities", "scores_at", "text_ciou_interval", "group_check_probe", "THRESHOLDS"]

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def check_probabilities(model, samples: list) -> list[dict]:
    """Per sample, its answer with the check off: {"masks": K x H x W bool (after ``config.mask_crf``, as segment
    answers), "probabilities": K (the check's, of the masks before the CRF, as segment checks them; those of empty
    masks are 1, as the check never drops one), "target": H x W bool, the union of the sample's masks}. The check
    alone: the answer verifier's (``config.verify_by_pixels``) is off."""
    before, settings, crf = model.config.check_by_group_head, model.config.mask_crf, model.config.crf
    verifier = model.config.verify_by_pixels
    model.set_check_by_group_head(None)
    model.set_verify_by_pixels(None)
    model.set_mask_crf(None)  # the check judges the decoder's masks; segment's CRF comes after it
    try:
        records = []
        for sample in samples:
            result = model.segment(sample.image, sample.references)
            drawn = result.masks.any((1, 2))
            probabilities = np.ones(len(result.masks))
            if drawn.any():
                probabilities[drawn] = model.check_scores(sample.image, sample.references, result.masks[drawn])
            if crf is not None and result.found:
                result = crf_refined_result(result, sample.image, crf)
            records.append({"masks": result.masks, "probabilities": probabilities,
                            "target": union_mask(sample.masks, sample.image.shape[:2])})
        return records
    finally:
        model.set_check_by_group_head(before)
        model.set_verify_by_pixels(verifier)
        model.set_mask_crf(settings)


def _kept(record: dict, threshold: float | None) -> tuple[np.ndarray, bool]:
    """(the union of the record's masks the check keeps at ``threshold`` (None: off): H x W bool, whether any mask
    is kept). The second is what ``anyref eval`` counts as answered with a mask (``SegmentResult.found``, the
    model's own no-target flag, metrics.md): a kept mask that drew no pixel still counts, as it does there."""
    keep = np.ones(len(record["masks"]), dtype=bool) if threshold is None else record["probabilities"] >= threshold
    return union_mask(record["masks"][keep], record["target"].shape), bool(keep.any())


def text_ciou_interval(text: list[dict], threshold: float, resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> list[float]:
    """The paired bootstrap interval of text cIoU with the check at ``threshold`` minus text cIoU with it off,
    resampling the text prompts (one draw of indices for both): [low, high]."""
    def sums(threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
        preds = [_kept(r, threshold)[0] for r in text]
        return (np.array([(p & r["target"]).sum() for p, r in zip(preds, text)], dtype=float),
                np.array([(p | r["target"]).sum() for p, r in zip(preds, text)], dtype=float))

    index = np.random.default_rng(seed).integers(0, len(text), size=(resamples, len(text)))
    (inter_on, union_on), (inter_off, union_off) = sums(threshold), sums(None)
    differences = inter_on[index].sum(1) / union_on[index].sum(1) - inter_off[index].sum(1) / union_off[index].sum(1)
    tail = (1 - level) / 2 * 100
    return np.percentile(differences, [tail, 100 - tail]).tolist()


def scores_at(text: list[dict], no_target: list[dict], threshold: float | None) -> dict:
    """{"text_ciou", "text_found_rate", "no_target_no_mask_rate", "sum", "giou"} with the check at ``threshold``
    (None: off): a mask is kept when its probability is at least the threshold, as in the check. ``giou`` is
    gRefCOCO's generalized IoU over the text and no-target prompts together: the mean of each prompt's IoU, a
    no-target prompt's being 1 when it is answered without a mask and 0 otherwise."""
    inter = union = 0
    found, ious = [], []
    for record in text:
        pred, answered = _kept(record, threshold)
        overlap, cover = int((pred & record["target"]).sum()), int((pred | record["target"]).sum())
        inter, union = inter + overlap, union + cover
        found.append(answered)
        ious.append(overlap / cover if cover else 1.0)
    empty = [not _kept(r, threshold)[1] for r in no_target]
    ciou, no_mask = inter / union if union else 0.0, float(np.mean(empty))
    return {"text_ciou": ciou, "text_found_rate": float(np.mean(found)), "no_target_no_mask_rate": no_mask,
            "sum": ciou + no_mask, "giou": float(np.mean(ious + [float(e) for e in empty]))}


def group_check_probe(model, n: int = 200, split: str = "val", thresholds=THRESHOLDS,
                      world_seed: int = 0) -> RunOutput:
    """The module docstring's figures over the first ``n`` text and no_target samples of the SynthRef split."""
    world = SynthRef.for_model(model.config, world_seed)
    text = check_probabilities(model, world.split(split, "text", n))
    no_target = check_probabilities(model, world.split(split, "no_target", n))
    by_threshold = {str(t): scores_at(text, no_target, t) for t in thresholds}
    off = scores_at(text, no_target, None)
    chosen = max(by_threshold, key=lambda t: by_threshold[t]["sum"])
    for t, m in by_threshold.items():
        m["text_ciou_difference_interval"] = text_ciou_interval(text, float(t))
    by_giou = max(by_threshold, key=lambda t: by_threshold[t]["giou"])
    return RunOutput(metrics={"off": off, "by_threshold": by_threshold, "chosen": float(chosen),
                              "chosen_by_giou": float(by_giou)},
                     counts={"text": {"samples": len(text)}, "no_target": {"samples": len(no_target)}},
                     settings={"n": n, "split": split, "thresholds": list(thresholds), "world_seed": world_seed,
                               "rule": "the highest sum of text cIoU and no-target no_mask_rate",
                               "rule_by_giou": "the highest gIoU over the text and no-target prompts together "
                                               "(gRefCOCO's, a no-target prompt 1 when answered without a mask)"})


def _report(run: RunOutput, model) -> None:
    print(f"{'threshold':>9} {'text cIoU':>9} {'vs off [95%]':>17} {'found':>6} {'no-target':>9} {'gIoU':>6}")
    for name, m in [("off", run.metrics["off"]), *run.metrics["by_threshold"].items()]:
        low, high = m.get("text_ciou_difference_interval", (0.0, 0.0))
        print(f"{name:>9} {m['text_ciou']:9.3f} {f'[{low:+.3f}, {high:+.3f}]':>17} {m['text_found_rate']:6.3f} "
              f"{m['no_target_no_mask_rate']:9.3f} {m['giou']:6.3f}")
    print(f"chosen (highest sum of text cIoU and no-target): {run.metrics['chosen']}")
    print(f"chosen by gIoU over text and no-target prompts: {run.metrics['chosen_by_giou']}")


def main(argv: list[str] | None = None) -> int:
    parser = diagnostic_parser(__doc__, n=200, split="val")
    parser.add_argument("--world-seed", type=int, default=0, help="SynthRef's world seed (0: the fixed splits; "
                        "another: fresh samples of the same distribution, e.g. to confirm a choice)")
    return run_diagnostic(argv, parser, lambda model, args: group_check_probe(model, args.n, args.split,
                                                                             world_seed=args.world_seed),
                          _report, "group_check_probe")


if __name__ == "__main__":
    raise SystemExit(main())
