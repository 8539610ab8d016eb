"""Benchmark runners: a model over a reader, scored with the accumulators of :mod:`eval.metrics`.

    from anyref import AnyRef
    from eval.datasets import ResReader
    from eval.runners import run_res
    model = AnyRef.from_pretrained("path/to/model")
    out = run_res(model, ResReader("data/refer", "refcoco", "val"), limit=100)   # out.metrics["ciou"]

Every runner takes the model (anything with ``segment`` / ``describe`` as :class:`anyref.AnyRef`), a reader,
``limit`` (score only the first N items), ``overlays`` (a folder for overlay PNGs, or None) and ``progress``
(a tqdm bar on stderr), and returns a :class:`eval.results.RunOutput`. How predictions become metric inputs:

- RES (RefCOCO family): the union of the answer's masks (none: empty) vs the ref's mask, LISA's gIoU / cIoU;
- GRES (gRefCOCO): the same union, and "no target" = the answer has no mask (``not result.found``), ReLA's scores;
- groups: ``select`` among the image's instances; the union of the selected masks vs the union of the group's,
  "no target" = nothing selected, ReLA's scores;
- AVS: per frame, the max over the answer's mask logits (no mask: a very negative map); each video scored alone;
- few-shot: one ``segment`` per support, the K masks combined by HSNet's vote (below), HSNet's mIoU / FB-IoU;
- REG: ``describe(image, box)``; CIDEr-D and METEOR over the whole run in one call.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional

import numpy as np
from tqdm.auto import tqdm

from eval.metrics import AvsAccumulator, FewShotAccumulator, GresAccumulator, RefSegAccumulator
from anyref.overlays import describe_references
from eval.overlays import OverlayWriter
from eval.results import RunOutput

__all__ = ["run_res", "run_gres", "run_groups", "run_avs", "run_fewshot", "run_reg", "union_mask", "logit_map", "vote_masks",
           "NO_MASK_LOGIT"]

# the logit of every pixel of a frame the model answered without a mask (sigmoid rounds it to exactly 0)
NO_MASK_LOGIT = -1e4


def _items(reader, limit: Optional[int], desc: str, progress: bool, unit: str = "sample") -> Iterable:
    """The first ``limit`` items of ``reader`` (all when None) behind a progress bar."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    total = len(reader) if limit is None else min(limit, len(reader))
    if total == 0:
        raise ValueError(f"{desc}: the reader has no samples to evaluate")
    return tqdm(itertools.islice(iter(reader), total), total=total, desc=desc, unit=unit, disable=not progress,
                dynamic_ncols=True)


def union_mask(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """masks: K x H x W bool (K may be 0) -> H x W bool, their union (empty for K = 0)."""
    if len(masks) == 0:
        return np.zeros(shape, dtype=bool)
    if masks.shape[1:] != tuple(shape):
        raise ValueError(f"masks of size {masks.shape[1:]} for an image of size {tuple(shape)}")
    return masks.any(axis=0)


def logit_map(result, shape: tuple[int, int]) -> np.ndarray:
    """A frame's H x W float32 logit map: max over the answer's K mask logits; NO_MASK_LOGIT everywhere for K = 0."""
    if not result.found:
        return np.full(shape, NO_MASK_LOGIT, dtype=np.float32)
    if result.logits is None:
        raise ValueError("the model returned masks without logits; AVS scoring needs SegmentResult.logits")
    return result.logits.max(axis=0).astype(np.float32)


def vote_masks(masks: list[np.ndarray]) -> np.ndarray:
    """HSNet's K-shot aggregation of K H x W bool masks (one per support): per-pixel vote counts divided by the
    largest count in the image (at least 1), foreground where that is >= 0.5. One mask is returned as it is."""
    votes = np.sum(np.stack(masks), axis=0, dtype=np.int64)
    if len(masks) == 1:
        return votes > 0
    max_vote = max(int(votes.max()), 1)
    return 2 * votes >= max_vote  # votes / max_vote >= 0.5, in integers


def _segment(model, sample, references: list, allow_untrained: bool):
    """The model's answer for ``references`` on the sample's image (a SegmentResult)."""
    return model.segment(sample.image, references, allow_untrained=allow_untrained)


def _writer(overlays) -> Optional[OverlayWriter]:
    return None if overlays is None else OverlayWriter(overlays)


def run_res(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
            allow_untrained: bool = False) -> RunOutput:
    """Referring segmentation (LISA's gIoU / cIoU) over a :class:`eval.datasets.ResReader`."""
    acc, writer = RefSegAccumulator(), _writer(overlays)
    counts = {"samples": 0, "no_mask": 0, "several_masks": 0}
    images = set()
    for index, sample in enumerate(_items(reader, limit, f"res {reader.dataset} {reader.split}", progress)):
        result = _segment(model, sample, sample.references, allow_untrained)
        shape = sample.image.shape[:2]
        pred, gt = union_mask(result.masks, shape), union_mask(sample.masks, shape)
        acc.add(pred, gt)
        counts["samples"] += 1
        counts["no_mask"] += not result.found
        counts["several_masks"] += len(result.masks) > 1
        images.add(sample.meta.get("image_id"))
        if writer:
            writer.save(index, f"ref{sample.meta.get('ref_id')}_sent{sample.meta.get('sent_id')}", sample.image,
                        f"{describe_references(sample.references)} -> {result.text}", pred, gt)
    counts["images"] = len(images)
    return RunOutput(acc.result(), counts, {"split_by": getattr(reader, "split_by", None)})


def run_gres(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
             allow_untrained: bool = False) -> RunOutput:
    """Generalised referring segmentation (ReLA's gIoU / cIoU / N-acc / T-acc) over a GrefReader; the predicted
    no-target flag is "the answer has no mask"."""
    acc, writer = GresAccumulator(), _writer(overlays)
    counts = {"samples": 0, "no_target_gt": 0, "no_target_predicted": 0}
    for index, sample in enumerate(_items(reader, limit, f"gres {reader.dataset} {reader.split}", progress)):
        result = _segment(model, sample, sample.references, allow_untrained)
        shape = sample.image.shape[:2]
        pred, gt = union_mask(result.masks, shape), union_mask(sample.masks, shape)
        no_target = bool(sample.meta.get("no_target", not gt.any()))
        acc.add(pred, gt, pred_no_target=not result.found, gt_no_target=no_target)
        counts["samples"] += 1
        counts["no_target_gt"] += no_target
        counts["no_target_predicted"] += not result.found
        if writer:
            writer.save(index, f"ref{sample.meta.get('ref_id')}_sent{sample.meta.get('sent_id')}", sample.image,
                        f"{describe_references(sample.references)} -> {result.text}", pred, gt)
    counts.update(acc.cases)
    return RunOutput(acc.result(), counts, {"split_by": getattr(reader, "split_by", None)})


def run_groups(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
               allow_untrained: bool = False) -> RunOutput:
    """Mask-group selection (ReLA's gIoU / cIoU / N-acc / T-acc on the groups' unions) over an
    ExpressionGroupReader (or any reader of "select" samples)."""
    acc, writer = GresAccumulator(), _writer(overlays)
    counts = {"samples": 0, "candidates": 0, "empty_groups_gt": 0, "empty_groups_predicted": 0}
    for index, sample in enumerate(_items(reader, limit, f"groups {reader.dataset} {reader.split}", progress)):
        result = model.select(sample.image, sample.references, candidates=sample.candidates,
                              allow_untrained=allow_untrained)
        shape = sample.image.shape[:2]
        pred, gt = result.union, union_mask(sample.candidates[sample.selected], shape)
        # the annotation's no-target flag where the reader has one; rule-drawn groups are empty when nothing is chosen
        empty = bool(sample.meta.get("no_target", not sample.selected.any()))
        acc.add(pred, gt, pred_no_target=not result.found, gt_no_target=empty)
        counts["samples"] += 1
        counts["candidates"] += len(sample.candidates)
        counts["empty_groups_gt"] += empty
        counts["empty_groups_predicted"] += not result.found
        if writer:
            writer.save(index, f"group{index}", sample.image, f"{describe_references(sample.references)} -> "
                        f"{len(result.indices)} of {len(sample.candidates)}", pred, gt)
    counts.update(acc.cases)
    return RunOutput(acc.result(), counts, {"split_by": getattr(reader.reader, "split_by", None)
                                            if hasattr(reader, "reader") else None})


def run_avs(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
            allow_untrained: bool = False) -> RunOutput:
    """AVSBench mIoU and F-score over an AvsReader, each video (its annotated frames) scored on its own;
    ``limit`` counts videos."""
    acc, writer = AvsAccumulator(), _writer(overlays)
    counts = {"videos": 0, "frames": 0, "frames_without_mask": 0}
    frame_index = 0
    for video in _items(reader, limit, f"avs {reader.dataset} {reader.split}", progress, unit="video"):
        logits, gts = [], []
        for sample in video:
            result = _segment(model, sample, sample.references, allow_untrained)
            shape = sample.image.shape[:2]
            logits.append(logit_map(result, shape))
            gts.append(union_mask(sample.masks, shape))
            counts["frames_without_mask"] += not result.found
            if writer:
                writer.save(frame_index, f"{sample.meta['video']}_{sample.meta['frame']}", sample.image,
                            f"{describe_references(sample.references)} -> {result.text}", logits[-1] > 0, gts[-1])
            frame_index += 1
        acc.add(np.stack(logits), np.stack(gts))
        counts["videos"] += 1
        counts["frames"] += len(video)
    return RunOutput(acc.result(), counts, {"subset": getattr(reader, "subset", None)})


def run_fewshot(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
                allow_untrained: bool = False) -> RunOutput:
    """Few-shot segmentation (HSNet's mIoU / FB-IoU over the fold's classes) over a FewShotReader: one segment call
    per support example, the K masks combined with :func:`vote_masks`."""
    acc, writer = FewShotAccumulator(reader.fold_classes), _writer(overlays)
    counts = {"episodes": 0, "segment_calls": 0, "no_mask": 0, "per_class": {}}
    for index, sample in enumerate(_items(reader, limit, f"fewshot {reader.dataset} fold{reader.fold}", progress,
                                          unit="episode")):
        shape = sample.image.shape[:2]
        shots = []
        for reference in sample.references:
            result = _segment(model, sample, [reference], allow_untrained)
            shots.append(union_mask(result.masks, shape))
            counts["segment_calls"] += 1
            counts["no_mask"] += not result.found
        pred = vote_masks(shots)
        gt = union_mask(sample.masks, shape).astype(np.uint8)
        gt[sample.meta["ignore"]] = 255
        class_id = sample.meta["class_id"]
        acc.add(class_id, pred, gt)
        counts["episodes"] += 1
        counts["per_class"][str(class_id)] = counts["per_class"].get(str(class_id), 0) + 1
        if writer:
            writer.save(index, f"ep{index}_{sample.meta['class_name']}", sample.image,
                        f"{sample.meta['class_name']}: {describe_references(sample.references)}", pred, gt == 1)
    # episodes and seed say whether the draw was HSNet's (the summary marks other draws next to the papers' numbers)
    settings = {"benchmark": reader.benchmark, "fold": reader.fold, "shot": reader.shot,
                "mask_crop": reader.mask_crop, "episodes": len(reader), "seed": reader.seed,
                "fold_classes": reader.fold_classes}
    return RunOutput(acc.result(), counts, settings)


def run_reg(model, reader, limit: Optional[int] = None, overlays=None, progress: bool = True,
            allow_untrained: bool = False) -> RunOutput:
    """Referring expression generation over a RegReader: describe each ref's box, then CIDEr-D and METEOR of all
    the run's captions in ONE call (CIDEr's IDF weights come from the whole set). Needs pycocoevalcap and java."""
    from eval.caption_metrics import caption_scores  # needs pycocoevalcap; only this runner does

    writer = _writer(overlays)
    predictions, references = {}, {}
    counts = {"refs": 0, "empty_captions": 0, "skipped_without_sentences": 0}
    for index, sample in enumerate(_items(reader, limit, f"reg {reader.dataset} {reader.split}", progress)):
        sentences = [s for s in sample.meta.get("sentences", []) if s.strip()]
        if not sentences:
            counts["skipped_without_sentences"] += 1
            continue
        text = model.describe(sample.image, sample.references, allow_untrained=allow_untrained)
        key = sample.meta.get("ref_id", index)
        predictions[key], references[key] = text, sentences
        counts["refs"] += 1
        counts["empty_captions"] += not text.strip()
        if writer:
            writer.save(index, f"ref{key}", sample.image, f"{text!r} (truth: {sentences[0]!r})",
                        boxes=[r for r in sample.references if hasattr(r, "as_tuple")])
    if not predictions:
        raise ValueError("no ref with a sentence to score against; check the split")
    return RunOutput(caption_scores(predictions, references), counts, {"split_by": getattr(reader, "split_by", None)})
