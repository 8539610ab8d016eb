"""The bounding box of each of a stack of masks: the one place a mask's box is computed (the square crops around
candidates, the verifier's region statistics, the trainer's SAM box prompts)."""
from __future__ import annotations

import torch

__all__ = ["mask_boxes"]


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K x H x W bool -> (K x 4 float32 boxes x0, y0, x1, y1 in pixels, x1 / y1 one past the last mask pixel (the
    convention of :class:`anyref.Box`); K bool: the mask has pixels). An empty mask's box is all zeros."""
    rows, cols = masks.any(2), masks.any(1)  # K x H, K x W
    found = rows.any(1)

    def span(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(present.shape[1], device=present.device)
        first = torch.where(present, steps, present.shape[1]).amin(1)
        last = torch.where(present, steps, -1).amax(1) + 1
        return first, last

    (y0, y1), (x0, x1) = span(rows), span(cols)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~found] = 0.0
    return boxes, found
