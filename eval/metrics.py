"""Segmentation benchmark metrics, reproducing each benchmark's reference evaluator to float tolerance.

The definitions are the reference evaluators' own, each spelled out in its accumulator's docstring:

- referring segmentation (RefCOCO family, ReasonSeg): LISA's gIoU / cIoU -> :class:`RefSegAccumulator`;
- generalised referring segmentation (gRefCOCO): ReLA's gIoU / cIoU / N-acc / T-acc / Pr@t ->
  :class:`GresAccumulator`;
- audio-visual segmentation (AVSBench S4, MS3): per-video mIoU and F-score -> :class:`AvsAccumulator`;
- few-shot segmentation (COCO-20i, PASCAL-5i): HSNet's mIoU / FB-IoU -> :class:`FewShotAccumulator`.

Accumulators stream over a dataset (``add`` per sample, ``result`` at the end); the pure functions (``ciou``,
``giou``, ``gres_scores``, ``avs_miou``, ``avs_fscore``, ``fewshot_scores``) are thin wrappers over them, so each
rule lives in one place. Inputs may be numpy arrays or torch tensors; every score is a fraction in [0, 1].
Where a reference accumulates in float32, so do we, so that results match it and not a float64 re-derivation.
"""
from __future__ import annotations

import operator
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "RefSegAccumulator",
    "GresAccumulator",
    "AvsAccumulator",
    "FewShotAccumulator",
    "ciou",
    "giou",
    "gres_scores",
    "avs_miou",
    "avs_fscore",
    "fewshot_scores",
    "GRES_PRECISION_THRESHOLDS",
]

GRES_PRECISION_THRESHOLDS = (0.7, 0.8, 0.9)  # ReLA's Pr@t

_F32 = torch.float32


def _to_tensor(x) -> torch.Tensor:
    """``x`` (numpy array, torch tensor or nested lists) as a CPU tensor, sharing memory where possible."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    # contiguous: torch cannot wrap numpy views with negative strides (e.g. np.flip)
    return torch.as_tensor(np.ascontiguousarray(x))


def _binary(x, name: str, ndim: int) -> torch.Tensor:
    """``x`` as a bool tensor with ``ndim`` dimensions; accepts bool or 0/1 numbers, rejects anything else
    (a logit map passed by mistake must fail loudly, not be read as "nonzero = foreground")."""
    t = _to_tensor(x)
    if t.dim() != ndim:
        dims = "[H, W]" if ndim == 2 else "[N, H, W]"
        raise ValueError(f"{name} must be {dims} ({ndim}-D), got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1); threshold logits first")
        t = t != 0
    return t


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _paired(preds: Sequence, gts: Sequence) -> list:
    """Zip two per-sample sequences, refusing a length mismatch (zip would silently truncate)."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predictions but {len(gts)} ground truths")
    return list(zip(preds, gts))


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


# ---------------------------------------------------------------------------------------------------------------
# Referring segmentation: LISA
# ---------------------------------------------------------------------------------------------------------------


class RefSegAccumulator:
    """LISA's gIoU and cIoU over a stream of masks (foreground class only is reported).

    Per mask iou = I / (U + 1e-5), plus 1.0 where U == 0 (empty prediction on empty ground truth scores 1.0).
    cIoU = sum I / (sum U + 1e-10); gIoU = sum iou / (count + 1e-5). Sums are float32 as in LISA.
    ``per_sample`` keeps each mask's "intersection", "union" (pixels) and "iou", in the order added.
    """

    def __init__(self) -> None:
        self._inter = torch.zeros((), dtype=_F32)
        self._union = torch.zeros((), dtype=_F32)
        self._iou_sum = torch.zeros((), dtype=_F32)
        self.count = 0
        self.per_sample: dict[str, list] = {"intersection": [], "union": [], "iou": []}

    def add(self, pred, gt) -> None:
        """pred, gt: H x W, bool (pred = logits > 0), both at the ORIGINAL image size."""
        pred, gt = _binary(pred, "pred", 2), _binary(gt, "gt", 2)
        _same_shape(pred, gt, "pred and gt")
        inter = torch.tensor(_count(pred & gt), dtype=_F32)
        union = torch.tensor(_count(pred | gt), dtype=_F32)
        iou = inter / (union + 1e-5)
        if union == 0:
            iou = iou + 1.0
        self._inter += inter
        self._union += union
        self._iou_sum += iou
        self.count += 1
        for key, value in (("intersection", int(inter)), ("union", int(union)), ("iou", float(iou))):
            self.per_sample[key].append(value)

    def result(self) -> dict[str, float]:
        """{"giou", "ciou"} as fractions."""
        if self.count == 0:
            raise ValueError("RefSegAccumulator: no masks were added")
        return {
            "giou": float(self._iou_sum / (self.count + 1e-5)),
            "ciou": float(self._inter / (self._union + 1e-10)),
        }


def _refseg(preds: Sequence, gts: Sequence) -> dict[str, float]:
    acc = RefSegAccumulator()
    for pred, gt in _paired(preds, gts):
        acc.add(pred, gt)
    return acc.result()


def ciou(preds: Sequence, gts: Sequence) -> float:
    """LISA cIoU. preds, gts: sequences of H x W bool masks (sizes may differ between samples)."""
    return _refseg(preds, gts)["ciou"]


def giou(preds: Sequence, gts: Sequence) -> float:
    """LISA gIoU (empty prediction on empty ground truth = 1.0). preds, gts: sequences of H x W bool masks."""
    return _refseg(preds, gts)["giou"]


# ---------------------------------------------------------------------------------------------------------------
# Generalised referring segmentation: ReLA
# ---------------------------------------------------------------------------------------------------------------


class GresAccumulator:
    """ReLA's gRefCOCO evaluator: gIoU, cIoU, N-acc, T-acc and Pr@0.7/0.8/0.9 over a stream of samples.

    Cases, in ReLA's naming (a "positive" is a no-target expression):
      TP: GT no target, flag predicted     -> iou 1, nothing added to the cIoU sums;
      FN: GT no target, flag not predicted -> iou 0, cIoU's union gets the predicted area;
      FP: GT has targets, flag predicted   -> I = 0, union kept;
      TN: GT has targets, flag not predicted -> the plain I / U.
    Sums are in Python ints / float64, as in ReLA. ``per_sample`` keeps each sample's contribution - its
    "intersection" and "union" as added to the cIoU sums, its "iou" and its "case" - in the order added.
    """

    def __init__(self) -> None:
        self._iou_sum = 0.0
        self._inter = 0
        self._union = 0
        self.cases = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
        self.count = 0
        self.per_sample: dict[str, list] = {"intersection": [], "union": [], "iou": [], "case": []}

    def add(self, pred, gt, pred_no_target, gt_no_target: Optional[bool] = None) -> None:
        """pred, gt: H x W bool masks; pred_no_target: the model's own "no target" flag (not derived from an
        empty mask); gt_no_target: the annotation's flag, by default ``gt`` is empty."""
        pred, gt = _binary(pred, "pred", 2), _binary(gt, "gt", 2)
        _same_shape(pred, gt, "pred and gt")
        if gt_no_target is None:
            gt_no_target = not bool(gt.any())
        inter, union = _count(pred & gt), _count(pred | gt)
        if gt_no_target:
            if pred_no_target:
                case, iou, inter, union = "tp", 1.0, 0, 0
            else:
                # With an empty GT the union is exactly the predicted area.
                case, iou, inter = "fn", 0.0, 0
        else:
            if pred_no_target:
                case, inter = "fp", 0  # the target is missed: nothing found, the union stays
            else:
                case = "tn"
            iou = 0.0 if union == 0 else inter / union
        self._iou_sum += iou
        self._inter += inter
        self._union += union
        self.cases[case] += 1
        self.count += 1
        for key, value in (("intersection", inter), ("union", union), ("iou", iou), ("case", case)):
            self.per_sample[key].append(value)

    def result(self) -> dict[str, float]:
        """{"giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"} as fractions; Pr@t is the share of the
        samples with targets (TN and FP) whose iou reaches t, as ReLA counts it; each is 0 when undefined."""
        if self.count == 0:
            raise ValueError("GresAccumulator: no samples were added")
        c = self.cases
        targeted = [iou for iou, case in zip(self.per_sample["iou"], self.per_sample["case"]) if case in ("tn", "fp")]
        return {
            "giou": self._iou_sum / self.count,
            "ciou": self._inter / self._union if self._union else 0.0,
            "n_acc": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0,
            "t_acc": c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else 0.0,
            **{f"pr@{t}": sum(iou >= t for iou in targeted) / len(targeted) if targeted else 0.0
               for t in GRES_PRECISION_THRESHOLDS},
        }


def gres_scores(preds: Sequence, gts: Sequence, no_target: Sequence,
                gt_no_target: Optional[Sequence] = None) -> dict[str, float]:
    """ReLA's gRefCOCO scores. preds, gts: sequences of H x W bool masks; no_target: predicted flags (bool per
    sample); gt_no_target: annotated flags, by default "gt mask is empty". Returns giou, ciou, n_acc, t_acc."""
    pairs = _paired(preds, gts)
    flags = list(no_target)
    gt_flags = [None] * len(pairs) if gt_no_target is None else list(gt_no_target)
    if len(flags) != len(pairs) or len(gt_flags) != len(pairs):
        raise ValueError(f"got {len(pairs)} samples but {len(flags)} no_target flags"
                         + ("" if gt_no_target is None else f" and {len(gt_flags)} gt_no_target flags"))
    acc = GresAccumulator()
    for (pred, gt), flag, gt_flag in zip(pairs, flags, gt_flags):
        acc.add(pred, gt, bool(flag), None if gt_flag is None else bool(gt_flag))
    return acc.result()


# ---------------------------------------------------------------------------------------------------------------
# Audio-visual segmentation: AVSBench
# ---------------------------------------------------------------------------------------------------------------


def _avs_video(logits, gt) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (sigmoid probabilities N x H x W float32, ground truth N x H x W bool)."""
    logits = _to_tensor(logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, H, W], got shape {tuple(logits.shape)}")
    if logits.numel() == 0:
        raise ValueError(f"empty video: logits shape {tuple(logits.shape)}")
    gt = _binary(gt, "gt", 3)
    _same_shape(logits, gt, "logits and gt")
    # AVSBench's model outputs are float32; the sigmoid must round as there or pixels near 0.5 flip.
    logits = logits.to(_F32)
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    return torch.sigmoid(logits), gt


def _avs_miou(probs: torch.Tensor, gt: torch.Tensor) -> float:
    n, h, w = gt.shape
    pred = (probs > 0.5).flatten(1)
    gt = gt.flatten(1)
    inter = (pred & gt).sum(1).to(_F32)
    union = (pred | gt).sum(1).to(_F32)
    # An empty-GT frame is scored on its true negatives over the whole frame, so an empty prediction gets 1.0.
    empty = ~gt.any(1)
    inter = torch.where(empty, (~pred).sum(1).to(_F32), inter)
    union = torch.where(empty, torch.tensor(float(h * w), dtype=_F32), union)
    return float((inter / (union + 1e-7)).sum() / n)


def _thresholds_reached(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many of the (ascending, evenly spaced) thresholds each probability reaches, i.e. the count of t <= p.

    probs: any shape, float32 in [0, 1]; returns the same shape, int32 in 0..T. Equal to
    ``torch.bucketize(probs, thresholds, right=True)`` but several times faster: on an even grid
    floor(p * (T - 1)) + 1 is the count up to float rounding (at most one step off), and one comparison each way
    against the real float32 thresholds makes it exact.
    """
    t = thresholds.numel()
    flat = probs.reshape(-1)
    # p >= 0, so truncation is floor; p <= 1, so the guess stays in 1..T.
    reached = (flat * (t - 1)).to(torch.int32) + 1
    inf = torch.full((1,), float("inf"), dtype=thresholds.dtype)
    above = torch.cat([thresholds, inf])  # above[c]: the next threshold not yet counted (inf when all are)
    below = torch.cat([-inf, thresholds])  # below[c]: the last threshold counted (-inf when none is)
    reached += (above.index_select(0, reached) <= flat).to(torch.int32)
    reached -= (below.index_select(0, reached) > flat).to(torch.int32)
    return reached.view(probs.shape)


def _avs_fscore(probs: torch.Tensor, gt: torch.Tensor, beta2: float, num_thresholds: int) -> float:
    n = gt.shape[0]
    probs, gt = probs.reshape(n, -1), gt.reshape(n, -1)
    # Frames with an empty GT are skipped. They need not be removed: with no positives, tp = 0 at every threshold,
    # so their F is 0/0 -> 0 and adds nothing to the sum; only the divisor must leave them out.
    kept = int(gt.any(1).sum())
    if kept == 0:
        return 0.0
    # linspace in float32 makes the last threshold exactly 1.0 (1 - 1e-10 rounds up), as in AVSBench.
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds, dtype=_F32)
    # Instead of one pass per threshold: bin each pixel by how many thresholds it reaches, histogram the bins per
    # (gt value, frame) in a single bincount, then a reversed cumulative sum over bins gives, for every
    # threshold, the pixels at or above it.
    bins = num_thresholds + 1
    index = _thresholds_reached(probs, thresholds)
    index += (torch.arange(n, dtype=torch.int32) * bins).unsqueeze(1) + gt.to(torch.int32) * (n * bins)
    hist = torch.bincount(index.reshape(-1), minlength=2 * n * bins).view(2, n, bins)
    at_or_above = hist.flip(2).cumsum(2).flip(2)[:, :, 1:].to(_F32)  # 2 x N x T: counts for gt = 0, gt = 1
    true_pos = at_or_above[1]
    predicted = at_or_above[0] + true_pos
    positives = gt.sum(1, keepdim=True).to(_F32)
    prec = true_pos / (predicted + 1e-20)
    rec = true_pos / (positives + 1e-20)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    f = torch.where(torch.isnan(f), torch.zeros((), dtype=_F32), f)  # prec = rec = 0 gives 0/0
    return float((f.sum(0) / kept).max())


class AvsAccumulator:
    """AVSBench mIoU and F-score: each video scored on its own, the dataset score is the mean over videos
    (a video whose frames all have an empty GT scores F = 0 and still counts). ``miou`` and ``fscore`` keep each
    video's score, in the order added."""

    def __init__(self, beta2: float = 0.3, num_thresholds: int = 255) -> None:
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        self.beta2 = beta2
        self.num_thresholds = num_thresholds
        self.miou: list[float] = []
        self.fscore: list[float] = []

    def add(self, logits, gt) -> None:
        """logits: N x H x W float (before sigmoid); gt: N x H x W, {0, 1} or bool. One video."""
        probs, gt = _avs_video(logits, gt)
        self.miou.append(_avs_miou(probs, gt))
        self.fscore.append(_avs_fscore(probs, gt, self.beta2, self.num_thresholds))

    def result(self) -> dict[str, float]:
        """{"miou", "fscore"}: means over the videos added."""
        if not self.miou:
            raise ValueError("AvsAccumulator: no videos were added")
        return {"miou": float(np.mean(self.miou)), "fscore": float(np.mean(self.fscore))}


def avs_miou(logits, gt) -> float:
    """AVSBench mIoU of one video. logits: N x H x W float; gt: N x H x W {0, 1}."""
    probs, gt = _avs_video(logits, gt)
    return _avs_miou(probs, gt)


def avs_fscore(logits, gt, beta2: float = 0.3, num_thresholds: int = 255) -> float:
    """AVSBench F-score of one video: max over ``num_thresholds`` thresholds of the F-beta curve averaged over
    the frames with a non-empty GT. logits: N x H x W float; gt: N x H x W {0, 1}."""
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    probs, gt = _avs_video(logits, gt)
    return _avs_fscore(probs, gt, beta2, num_thresholds)


# ---------------------------------------------------------------------------------------------------------------
# Few-shot segmentation: HSNet
# ---------------------------------------------------------------------------------------------------------------


class FewShotAccumulator:
    """HSNet's mIoU and FB-IoU: background and foreground I / U summed per class (float32) across episodes.

    mIoU = mean over the fold's classes of sum I_fg / max(sum U_fg, 1) (a fold class never seen scores 0);
    FB-IoU = mean over {bg, fg} of (sum over classes of I) / (sum over classes of U).
    fold_classes: the fold's class ids; by default the distinct classes added.
    """

    def __init__(self, fold_classes: Optional[Iterable[int]] = None, ignore_index: int = 255) -> None:
        self.fold_classes = None if fold_classes is None else sorted({operator.index(c) for c in fold_classes})
        if self.fold_classes is not None and not self.fold_classes:
            raise ValueError("fold_classes is empty")
        self.ignore_index = ignore_index
        self._inter: dict[int, torch.Tensor] = {}  # class id -> [I_bg, I_fg]
        self._union: dict[int, torch.Tensor] = {}

    def add(self, class_id: int, pred, gt) -> None:
        """class_id: the episode's class; pred: H x W bool; gt: H x W with values {0, 1, ignore_index}."""
        class_id = operator.index(class_id)
        if self.fold_classes is not None and class_id not in self.fold_classes:
            raise ValueError(f"class {class_id} is not in fold_classes {self.fold_classes}")
        pred = _binary(pred, "pred", 2)
        gt = _to_tensor(gt)
        _same_shape(pred, gt, "pred and gt")
        valid = gt != self.ignore_index
        if not ((gt == 0) | (gt == 1) | ~valid).all():
            raise ValueError(f"gt values must be 0, 1 or ignore_index={self.ignore_index}")
        # Ignored pixels count for neither class, in either I or U.
        p, g = pred[valid], gt[valid] == 1
        inter = torch.tensor([_count(~p & ~g), _count(p & g)], dtype=_F32)
        union = torch.tensor([_count(~p | ~g), _count(p | g)], dtype=_F32)
        zeros = torch.zeros(2, dtype=_F32)
        self._inter[class_id] = self._inter.get(class_id, zeros) + inter
        self._union[class_id] = self._union.get(class_id, zeros) + union

    def result(self) -> dict[str, float]:
        """{"miou", "fbiou"} as fractions."""
        if not self._inter:
            raise ValueError("FewShotAccumulator: no episodes were added")
        classes = self.fold_classes if self.fold_classes is not None else sorted(self._inter)
        zeros = torch.zeros(2, dtype=_F32)
        inter = torch.stack([self._inter.get(c, zeros) for c in classes])  # C x 2 (bg, fg)
        union = torch.stack([self._union.get(c, zeros) for c in classes])
        miou = (inter[:, 1] / union[:, 1].clamp(min=1)).mean()
        # clamp: HSNet would give NaN for a class-free (all-ignored) fold; 0 is the useful answer there.
        fbiou = (inter.sum(0) / union.sum(0).clamp(min=1)).mean()
        return {"miou": float(miou), "fbiou": float(fbiou)}


def fewshot_scores(classes: Sequence[int], preds: Sequence, gts: Sequence, ignore_index: int = 255,
                   fold_classes: Optional[Iterable[int]] = None) -> dict[str, float]:
    """HSNet mIoU / FB-IoU. classes: class id per episode; preds: H x W bool per episode; gts: H x W
    {0, 1, ignore_index} per episode; fold_classes: the fold's classes (default: the distinct ``classes``)."""
    pairs = _paired(preds, gts)
    classes = list(classes)
    if len(classes) != len(pairs):
        raise ValueError(f"got {len(pairs)} episodes but {len(classes)} class ids")
    acc = FewShotAccumulator(fold_classes, ignore_index)
    for class_id, (pred, gt) in zip(classes, pairs):
        acc.add(class_id, pred, gt)
    return acc.result()
