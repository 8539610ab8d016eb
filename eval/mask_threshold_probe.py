"""Would another logit threshold draw a model's masks better? A probe of the masks' binarisation.

    python -m eval.mask_threshold_probe --model synthref-tiny --n 200 --split val --out probe.json

Masks are ``logits > 0`` (SAM's own threshold). For SynthRef samples whose answer is masks (text, box, example,
example_masked, audio1, audio2; each asked as ``anyref eval synthref`` asks it, box samples through
``describe(..., with_masks=True)``), the probe keeps each answer's logit map (the maximum over its masks, as
``eval.runners.logit_map``) and scores the binary mask ``map > t`` against the target union for every threshold t:
cIoU (pixels summed over the samples) and the mean IoU, per task. Only the final binarisation moves: the answer, its
mask refinements (``mask_refinements``, which read the previous mask at 0) and the scores are the model's own. The
audio tasks are scored here by cIoU too, not by AVSBench's mIoU, so that every task reads the same way. A gain that
holds across tasks on the val split would be a calibration a setting could fix; none is built in.
"""
from __future__ import annotations

import numpy as np

from anyref.synthref import SynthRef
from eval.mask_errors import MASK_TASKS
from eval.results import RunOutput, diagnostic_parser, run_diagnostic
from eval.runners import logit_map, union_mask

__all__ = ["THRESHOLDS", "threshold_scores", "mask_threshold_probe"]

THRESHOLDS = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)


def threshold_scores(maps: list[np.ndarray], targets: list[np.ndarray], thresholds=THRESHOLDS) -> dict:
    """maps: N logit maps H x W (any sizes); targets: N bool H x W. Returns {str(t): {"ciou", "miou"}}; a sample
    whose mask and target are both empty counts IoU 1."""
    if len(maps) != len(targets) or not maps:
        raise ValueError(f"need as many logit maps as targets, at least one ({len(maps)} and {len(targets)})")
    out = {}
    for t in thresholds:
        hits = np.array([np.logical_and(m > t, g).sum() for m, g in zip(maps, targets)], dtype=np.float64)
        unions = np.array([np.logical_or(m > t, g).sum() for m, g in zip(maps, targets)], dtype=np.float64)
        ious = np.divide(hits, unions, out=np.ones_like(hits), where=unions > 0)
        out[str(t)] = {"ciou": float(hits.sum() / unions.sum()) if unions.sum() else 1.0, "miou": float(ious.mean())}
    return out


def mask_threshold_probe(model, tasks: tuple[str, ...] = MASK_TASKS, n: int = 200, split: str = "val",
                         thresholds=THRESHOLDS, world_seed: int = 0) -> RunOutput:
    """threshold_scores() per task over the first ``n`` samples of the SynthRef split, and per task the threshold
    with the highest cIoU (``best``)."""
    unknown = set(tasks) - set(MASK_TASKS)
    if unknown:
        raise ValueError(f"the probe scores tasks whose answer is masks {MASK_TASKS}, not {sorted(unknown)}")
    world = SynthRef.for_model(model.config, world_seed)
    metrics, counts = {}, {}
    for task in tasks:
        maps, targets = [], []
        for sample in world.split(split, task, n):
            shape = sample.image.shape[:2]
            if sample.task == "describe":  # box samples: the caption prompt, whose answer carries the mask
                result = model.describe(sample.image, sample.references, with_masks=True)
            else:
                result = model.segment(sample.image, sample.references)
            maps.append(logit_map(result, shape))
            targets.append(union_mask(sample.masks, shape))
        scores = threshold_scores(maps, targets, thresholds)
        metrics[task] = {"by_threshold": scores, "best": float(max(scores, key=lambda t: scores[t]["ciou"]))}
        counts[task] = {"samples": len(maps)}
    return RunOutput(metrics=metrics, counts=counts,
                     settings={"n": n, "split": split, "tasks": list(tasks), "thresholds": list(thresholds),
                               "world_seed": world_seed})


def _report(run: RunOutput, model) -> None:
    print("cIoU at mask threshold " + " / ".join(f"{t:g}" for t in THRESHOLDS))
    for task, m in run.metrics.items():
        figures = " / ".join(f"{m['by_threshold'][str(t)]['ciou']:.3f}" for t in THRESHOLDS)
        print(f"{task:>15} {figures}   best {m['best']:g}")


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="val", tasks=MASK_TASKS),
                          lambda model, args: mask_threshold_probe(model, tuple(args.tasks), args.n, args.split),
                          _report, "mask_threshold_probe")


if __name__ == "__main__":
    raise SystemExit(main())
