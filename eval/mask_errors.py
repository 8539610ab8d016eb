"""Where a model's referring masks go wrong: the wrong object, or a poor mask of the right one.

    python -m eval.mask_errors --model synthref-tiny --tasks text box --n 200 --out errors.json

For SynthRef samples whose answer is masks (text, box, example, example_masked, audio1, audio2; each asked as
``anyref eval synthref`` asks it, box samples through ``describe(..., with_masks=True)``), the union of the
predicted masks is matched to the scene's objects (visible pixels): the object it overlaps best (IoU) is its
object. A sample is then "right object" (that object is a target), "wrong object", or "no mask"; a wrong object
that is the landmark of a relational text ("the blue star" of "the square left of the blue star") also counts in
``share_on_landmark``. The figures:
- the share of samples in each case, their mean IoU with the target union, and for right-object samples the
  mean precision and recall of the mask against the target union (too large, or too small);
- ``iou_lost``: 1 - mean IoU, split into what each case loses (sum of 1 - IoU over its samples / n), so the
  three parts add up to the whole gap. It says whether choosing the object or drawing it limits a model.
Text prompts are also split by their kind (``by_kind``: "relational" - "the square left of the blue star" - or
the attributes they name, "size_colour_shape" ...), each with the same figures.
"""
from __future__ import annotations

import numpy as np

from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic

__all__ = ["MASK_TASKS", "classify_prediction", "summarise", "mask_errors"]

MASK_TASKS = ("text", "box", "example", "example_masked", "audio1", "audio2")
CASES = ("right_object", "wrong_object", "no_mask")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def classify_prediction(predicted: np.ndarray, objects: np.ndarray, target_ids: list[int],
                        landmark_ids: list[int] = ()) -> dict:
    """One sample. predicted: H x W bool (the union of the answer's masks); objects: M x H x W bool visible masks
    of the scene's objects; target_ids: the indices of the targets among them; landmark_ids: objects the prompt
    names only to place its target. Returns {"case", "on_landmark", "iou", "precision", "recall"}, IoU / precision
    / recall against the targets' union."""
    target = objects[list(target_ids)].any(0)
    hit = float(np.logical_and(predicted, target).sum())
    area = float(predicted.sum())
    scores = {"iou": _iou(predicted, target), "precision": hit / area if area else 0.0,
              "recall": hit / float(target.sum()) if target.any() else 0.0}
    if not predicted.any():
        return {"case": "no_mask", "on_landmark": False, **scores}
    best = int(np.argmax([_iou(predicted, mask) for mask in objects]))
    right = best in target_ids
    return {"case": "right_object" if right else "wrong_object", "on_landmark": not right and best in landmark_ids,
            **scores}


def summarise(rows: list[dict]) -> dict:
    """The figures of the module docstring over ``rows`` (classify_prediction's dicts)."""
    n = len(rows)
    if n == 0:
        raise ValueError("no samples to summarise")
    out: dict = {"mean_iou": float(np.mean([r["iou"] for r in rows])), "share": {}, "case_iou": {}, "iou_lost": {}}
    by_case = {case: [r for r in rows if r["case"] == case] for case in CASES}
    for case, picked in by_case.items():
        out["share"][case] = len(picked) / n
        out["case_iou"][case] = float(np.mean([r["iou"] for r in picked])) if picked else None
        out["iou_lost"][case] = float(sum(1.0 - r["iou"] for r in picked) / n)
    out["share_on_landmark"] = sum(bool(r.get("on_landmark")) for r in rows) / n
    right = by_case["right_object"]
    out["right_object_precision"] = float(np.mean([r["precision"] for r in right])) if right else None
    out["right_object_recall"] = float(np.mean([r["recall"] for r in right])) if right else None
    return out


def mask_errors(model, tasks: tuple[str, ...] = MASK_TASKS, n: int = 200, split: str = "test", chunk: int = 8,
                world_seed: int = 0) -> RunOutput:
    """summarise() per task over the first ``n`` samples of the SynthRef split."""
    unknown = set(tasks) - set(MASK_TASKS)
    if unknown:
        raise ValueError(f"mask_errors scores tasks whose answer is masks {MASK_TASKS}, not {sorted(unknown)}")
    world = SynthRef.for_model(model.config, world_seed)
    metrics, counts = {}, {}
    for task in tasks:
        samples = world.split(split, task, n)
        rows = []
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            if part[0].task == "describe":  # box samples: the caption prompt, whose answer carries the mask
                results = [model.describe(s.image, s.references, with_masks=True) for s in part]
            else:
                results = model.segment_batch([s.image for s in part], [s.references for s in part])
            for sample, result in zip(part, results):
                predicted = (result.masks.any(0) if len(result.masks)
                             else np.zeros(sample.image.shape[:2], dtype=bool))
                rows.append(classify_prediction(predicted, sample.meta["object_masks"], sample.meta["target_ids"],
                                                sample.meta.get("landmark_ids", [])))
        metrics[task] = summarise(rows)
        counts[task] = {"samples": len(rows)}
        kinds = [s.meta.get("kind") for s in samples]
        if all(kinds):
            metrics[task]["by_kind"] = {kind: summarise([r for r, k in zip(rows, kinds) if k == kind])
                                        for kind in sorted(set(kinds))}
            counts[task]["by_kind"] = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    return RunOutput(metrics=metrics, counts=counts, settings={"n": n, "split": split, "tasks": list(tasks),
                                                               "world_seed": world_seed})


def _figure(value, digits: int) -> str:  # a case no sample fell into has no figure
    return "-" if value is None else f"{value:.{digits}f}"


def _line(name: str, m: dict) -> str:
    share, lost = m["share"], m["iou_lost"]
    return (f"{name:>15} {m['mean_iou']:6.3f} | {share['right_object']:.2f} / {share['wrong_object']:.2f} / "
            f"{share['no_mask']:.2f}        | {_figure(m['case_iou']['right_object'], 3):>9} | "
            f"{lost['right_object']:.3f} / {lost['wrong_object']:.3f} / {lost['no_mask']:.3f}   | "
            f"{_figure(m['right_object_precision'], 2)} / {_figure(m['right_object_recall'], 2)}    | "
            f"{m['share_on_landmark']:.2f}")


def _report(run: RunOutput, model) -> None:
    print(f"{'task':>15} {'IoU':>6} | share right / wrong / none | IoU right | lost: right / wrong / none"
          " | right P / R | on landmark")
    for task, m in run.metrics.items():
        print(_line(task, m))
    for task, m in run.metrics.items():
        if "by_kind" in m:
            print(f"{task} prompts by kind (samples: {run.counts[task]['by_kind']}); iou_lost is per kind")
            for kind, figures in m["by_kind"].items():
                print(_line(kind[:15], figures))


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="test", tasks=MASK_TASKS),
                          lambda model, args: mask_errors(model, tuple(args.tasks), args.n, args.split), _report,
                          "mask_errors")


if __name__ == "__main__":
    raise SystemExit(main())
