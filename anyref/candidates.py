"""Candidate masks for mask-group selection: the caller's (e.g. an instance segmenter's), or SAM's automatic ones."""
from __future__ import annotations

import numpy as np
import torch

from anyref.images import binary_mask

__all__ = ["check_candidates", "sam_candidates", "distinct_masks", "grows", "NoCandidatesFound"]

# a drawn candidate smaller than this (pixels) is a speck of a decoder's output, not an object
MIN_CANDIDATE_PIXELS = 10
# two drawn candidates overlapping this much (IoU) are one object drawn twice: the first is kept
DUPLICATE_IOU = 0.5
# a candidate drawn again with a wider window replaces it only when it keeps this share of the candidate's pixels: it
# grows the same object rather than moving to another (the rule fixed before the val runs that adopted it)
REDRAW_COVER = 0.9


class NoCandidatesFound(ValueError):
    """SAM's automatic mask generator found no masks in an image (with its filters as given)."""


def check_candidates(candidates, height: int, width: int) -> np.ndarray:
    """The caller's candidates as N x H x W bool; a clear error for anything that cannot be one."""
    if isinstance(candidates, torch.Tensor):
        candidates = candidates.detach().cpu().numpy()
    if isinstance(candidates, (list, tuple)):
        if not candidates:
            raise ValueError("candidates is empty: pass at least one H x W mask, or candidates=None for SAM's "
                             "automatic masks")
        candidates = np.stack([np.asarray(c) for c in candidates])
    candidates = np.asarray(candidates)
    if candidates.ndim != 3 or candidates.shape[1:] != (height, width):
        raise ValueError(f"candidates must be N x {height} x {width} masks (the image's size), got shape "
                         f"{candidates.shape}")
    if len(candidates) == 0:
        raise ValueError("candidates is empty: pass at least one mask, or candidates=None for SAM's automatic masks")
    masks = binary_mask(candidates, "candidates")
    empty = [i for i, m in enumerate(masks) if not m.any()]
    if empty:
        raise ValueError(f"candidate masks {empty[:10]} are empty (no pixel set); drop them")
    return np.ascontiguousarray(masks)


def sam_candidates(sam, image: np.ndarray, **options) -> np.ndarray:
    """N x H x W bool masks from ``segment_anything.SamAutomaticMaskGenerator`` on ``sam`` (its keyword options,
    e.g. points_per_side, pred_iou_thresh), largest first; raises if it finds none."""
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, **options)
    with torch.no_grad():
        records = generator.generate(image)
    masks = [r["segmentation"] for r in sorted(records, key=lambda r: -r["area"]) if r["segmentation"].any()]
    if not masks:
        raise NoCandidatesFound("SAM's automatic mask generator found no masks in this image; pass candidates= "
                                "yourself, or loosen its filters (e.g. sam_options={'pred_iou_thresh': 0.5, "
                                "'stability_score_thresh': 0.5})")
    return np.stack(masks).astype(bool)


def distinct_masks(logits: torch.Tensor, min_pixels: int = MIN_CANDIDATE_PIXELS,
                   duplicate_iou: float = DUPLICATE_IOU) -> list[int]:
    """Indices of the masks (logits > 0) of K x H x W mask logits worth asking about, in order: those with at least
    ``min_pixels`` pixels, less any whose IoU with an earlier kept one reaches ``duplicate_iou``."""
    masks = (logits > 0).flatten(1)
    kept: list[int] = []
    for k in range(len(masks)):
        if int(masks[k].sum()) < min_pixels:
            continue
        inter = (masks[kept] & masks[k]).sum(1).float()
        union = (masks[kept] | masks[k]).sum(1).float()
        if not kept or bool((inter / union < duplicate_iou).all()):
            kept.append(k)
    return kept


def grows(mask: torch.Tensor, redrawn: torch.Tensor, cover: float = REDRAW_COVER) -> bool:
    """Whether the H x W bool ``redrawn`` keeps at least ``cover`` of the H x W bool ``mask``'s pixels (an empty
    ``mask`` is kept by anything)."""
    area = int(mask.sum())
    return area == 0 or int((mask & redrawn).sum()) >= cover * area
