"""SynthRef evaluation: per-task figures of a model on SynthRef's fixed test split.

    from anyref import AnyRef
    from eval.synthref_eval import evaluate_synthref
    figures = evaluate_synthref(AnyRef.from_pretrained("synthref-tiny"), n=200)
    figures["metrics"]["text"]["ciou"]

    anyref eval synthref --model synthref-tiny --out synthref.json        # the same, as a results file

Per task (the first ``n`` samples of ``SynthRef(config).split(split, task, n)``; each task's metric in PRIMARY):

- text, example, example_masked: cIoU (and gIoU) of the union of the answer's masks vs the union of the sample's;
- box: ``describe(image, box, with_masks=True)``: the caption normalised (lower case, outer spaces and the
  trailing period stripped, spaces collapsed) equals the sample's caption exactly -> caption_acc; the answer's
  mask against the boxed object's -> cIoU (and gIoU);
- audio1, audio2: AVSBench mIoU (and F-score), each sample a one-frame "video" whose logit map is the max over the
  answer's masks (no mask: a very negative map) against the union of the sample's masks;
- no_target: the share of samples answered without a mask (no_mask_rate);
- mask_caption: ``describe(image, MaskRef(mask))``, the caption exact as for box -> caption_acc;
- group: ``select(image, prompt, candidates=the sample's candidates)``; the union of the selected masks against
  the union of the group's, with ReLA's gRefCOCO rules (an empty group is a "no target" sample: the model must
  select nothing) -> cIoU, gIoU, N-acc (empty groups answered empty), T-acc;
- text_select: a text or no-target expression asked as a group, scored as group is: does the group head pick the
  one described object among the scene's object masks (an instance segmenter's proposals), or none?
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from anyref.references import Box, MaskRef
from anyref.synthref import SYNTHREF_TASKS, SynthRefConfig
from eval.datasets.synthref import SynthRefReader
from eval.metrics import AvsAccumulator, GresAccumulator, RefSegAccumulator
from anyref.overlays import describe_references
from eval.overlays import OverlayWriter
from eval.runners import logit_map, union_mask

__all__ = ["evaluate_synthref", "normalise_caption", "missed_targets", "PRIMARY", "SCORED_TASKS", "UNSCORED_TASKS",
           "SYNTHREF_TARGETS"]

# task -> the metric a table shows for it
PRIMARY = {"text": "ciou", "box": "caption_acc", "example": "ciou", "example_masked": "ciou", "audio1": "miou",
           "audio2": "miou", "no_target": "no_mask_rate", "group": "ciou", "mask_caption": "caption_acc",
           "verify": "verify_acc", "text_select": "ciou"}
# what the shipped demo model must reach on the full test split (n=200): task -> [(metric, lowest value)]
SYNTHREF_TARGETS = {"text": [("ciou", 0.80)], "box": [("ciou", 0.85), ("caption_acc", 0.90)],
                    "example": [("ciou", 0.70)], "example_masked": [("ciou", 0.70)], "audio1": [("miou", 0.75)],
                    "audio2": [("miou", 0.55)], "no_target": [("no_mask_rate", 0.90)],
                    "group": [("ciou", 0.75), ("n_acc", 0.85)]}
UNSCORED_TASKS: dict[str, str] = {}  # task -> why it cannot be scored (none at present)
SCORED_TASKS = tuple(t for t in SYNTHREF_TASKS if t not in UNSCORED_TASKS)
_SEGMENT_TASKS = ("text", "example", "example_masked")
_AUDIO_TASKS = ("audio1", "audio2")


def normalise_caption(text: str) -> str:
    """Lower case, spaces collapsed, trailing period and spaces stripped: "The small red circle. " -> "the small
    red circle"."""
    return " ".join(text.lower().split()).rstrip(". ").strip()


def _check_tasks(tasks: Optional[Sequence[str]]) -> list[str]:
    if tasks is None:
        return list(SCORED_TASKS)
    tasks = list(tasks)
    for task in tasks:
        if task in UNSCORED_TASKS:
            raise ValueError(f"SynthRef task {task!r} cannot be scored yet: {UNSCORED_TASKS[task]}")
        if task not in SYNTHREF_TASKS:
            raise ValueError(f"unknown SynthRef task {task!r}; choose from {SCORED_TASKS}")
    if not tasks:
        raise ValueError(f"no SynthRef task given; choose from {SCORED_TASKS}")
    return tasks


def _score_task(model, task: str, reader: SynthRefReader, writer: Optional[OverlayWriter], progress: bool,
                allow_untrained: bool) -> tuple[dict, dict, dict]:
    """(metrics, counts, per-sample records) of one task; the records are lists in sample order (see
    eval.compare, which recomputes every metric from them)."""
    refseg, avs, groups = RefSegAccumulator(), AvsAccumulator(), GresAccumulator()
    counts = {"samples": 0}
    captions_exact, found = [], []  # per sample: caption exact (box, mask_caption); answered with a mask (segment)
    said_yes, right = [], []  # per sample (verify): P(yes) >= 0.5; that verdict is the truth
    for index, sample in enumerate(tqdm(reader, total=len(reader), desc=f"synthref {task}", disable=not progress,
                                        dynamic_ncols=True)):
        shape = sample.image.shape[:2]
        gt = union_mask(sample.masks, shape)
        pred, answer = None, ""
        if task == "mask_caption":
            answer = model.describe(sample.image, sample.references, allow_untrained=allow_untrained)
            captions_exact.append(int(normalise_caption(answer) == normalise_caption(sample.meta["caption"])))
        elif task == "verify":
            box, expression = sample.references[0], sample.references[1:]
            probability = model.verify(sample.image, box, expression, allow_untrained=allow_untrained)
            said_yes.append(int(probability >= 0.5))
            right.append(int(said_yes[-1] == sample.meta["matches"]))
            answer = f"P(yes) {probability:.2f} (truth: {'yes' if sample.meta['matches'] else 'no'})"
        elif task in ("group", "text_select"):
            result = model.select(sample.image, sample.references, candidates=sample.candidates,
                                  allow_untrained=allow_untrained)
            gt = union_mask(sample.candidates[sample.selected], shape)
            pred = result.union
            answer = f"selected {result.indices.tolist()} of {len(sample.candidates)} (truth {np.flatnonzero(sample.selected).tolist()})"
            if result.text is not None:
                answer = f"{result.text} {answer}"
            groups.add(pred, gt, not result.found, not sample.selected.any())
        elif task == "box":
            result = model.describe(sample.image, sample.references, allow_untrained=allow_untrained,
                                    with_masks=True)
            answer, pred = result.text, union_mask(result.masks, shape)
            captions_exact.append(int(normalise_caption(answer) == normalise_caption(sample.meta["caption"])))
            refseg.add(pred, gt)
        else:
            result = model.segment(sample.image, sample.references, allow_untrained=allow_untrained)
            answer, pred = result.text, union_mask(result.masks, shape)
            found.append(int(result.found))
            if task in _AUDIO_TASKS:
                avs.add(logit_map(result, shape)[None], gt[None])
            elif task in _SEGMENT_TASKS:
                refseg.add(pred, gt)
        counts["samples"] += 1
        if writer:
            text = f"{task}: {describe_references(sample.references)} -> {answer}"
            writer.save(index, f"{task}_{index}", sample.image, text, pred, gt,
                        boxes=[r for r in sample.references if isinstance(r, Box)],
                        reference_masks=[r.mask for r in sample.references if isinstance(r, MaskRef)])
    n = counts["samples"]
    exact = sum(captions_exact)
    if found:  # the tasks answered by segment()
        counts["no_mask"] = n - sum(found)
    if task in _SEGMENT_TASKS:
        metrics, records = refseg.result(), {**refseg.per_sample, "found": found}
    elif task in _AUDIO_TASKS:
        metrics, records = avs.result(), {"miou": avs.miou, "fscore": avs.fscore, "found": found}
    elif task == "box":
        metrics = {"caption_acc": exact / n, **refseg.result()}
        records = {**refseg.per_sample, "caption_exact": captions_exact}
        counts["exact_captions"] = exact
    elif task == "mask_caption":
        metrics, records = {"caption_acc": exact / n}, {"caption_exact": captions_exact}
        counts["exact_captions"] = exact
    elif task in ("group", "text_select"):
        metrics, records = groups.result(), groups.per_sample
        counts.update(empty_groups=groups.cases["tp"] + groups.cases["fn"], cases=dict(groups.cases))
    elif task == "verify":
        metrics = {"verify_acc": sum(right) / n, "yes_rate": sum(said_yes) / n}
        records = {"verify_right": right, "said_yes": said_yes}
    else:  # no_target
        metrics, records = {"no_mask_rate": counts["no_mask"] / n}, {"no_mask": [1 - f for f in found]}
    if "no_mask" in counts and task != "no_target":
        metrics["found_rate"] = 1.0 - counts["no_mask"] / n
    return metrics, counts, records


def evaluate_synthref(model, n: int = 200, tasks: Optional[Sequence[str]] = None, split: str = "test",
                      config: SynthRefConfig = SynthRefConfig(), overlays: Optional[str | Path] = None,
                      progress: bool = False, allow_untrained: bool = False) -> dict:
    """Score ``model`` on the first ``n`` samples of each task of SynthRef's fixed ``split``.

    Returns {"metrics": {task: {name: value}}, "primary": {task: name}, "counts": {task: {...}, "samples": total,
    "tasks": count}, "settings": {n, split, tasks, image_size, world_seed, not_scored}, "per_sample": {task:
    {record: [one value per sample]}}}; every metric is a fraction. The per-sample records (pixel intersections and
    unions, IoUs, exact captions, ...) are what ``anyref eval compare`` resamples for confidence intervals.
    overlays: a folder; each task's overlay PNGs go into a sub-folder named after it.
    """
    tasks = _check_tasks(tasks)
    metrics, counts, seconds, per_sample = {}, {}, {}, {}
    for task in tasks:
        start = time.perf_counter()
        writer = None if overlays is None else OverlayWriter(Path(overlays) / task)
        metrics[task], counts[task], per_sample[task] = _score_task(
            model, task, SynthRefReader(task, split, n, config), writer, progress, allow_untrained)
        seconds[task] = round(time.perf_counter() - start, 3)
    counts["samples"] = sum(counts[t]["samples"] for t in tasks)
    counts["tasks"] = len(tasks)
    settings = {"n": n, "split": split, "tasks": tasks, "image_size": config.image_size, "world_seed": config.seed,
                "seconds_per_task": seconds,
                "not_scored": {t: why for t, why in UNSCORED_TASKS.items()}}
    return {"metrics": metrics, "primary": {t: PRIMARY[t] for t in tasks}, "counts": counts, "settings": settings,
            "per_sample": per_sample}


def missed_targets(metrics: dict, targets: dict = SYNTHREF_TARGETS) -> list[str]:
    """Lines like "text ciou 0.712 < 0.80" for every target ``metrics`` (task -> {name: value}) falls short of."""
    missed = []
    for task, goals in targets.items():
        for name, lowest in goals:
            value = metrics.get(task, {}).get(name)
            if value is None or value < lowest:
                missed.append(f"{task} {name} {'missing' if value is None else f'{value:.3f}'} < {lowest:.2f}")
    return missed
