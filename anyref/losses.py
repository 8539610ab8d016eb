"""Mask losses as pure tensor functions, normalised per mask (each mask counts once, whatever its size)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mask_bce", "mask_dice"]


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of the per-pixel sigmoid BCE averaged within each mask.

    logits: N x H x W float; targets: N x H x W (bool or {0, 1}). Returns a scalar (0 for N = 0).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_pixel.flatten(1).mean(dim=1).mean()


def mask_dice(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over masks of 1 - (2 sum(p t) + s) / (sum p + sum t + s), p = sigmoid(logits).

    logits: N x H x W float; targets: N x H x W. Returns a scalar (0 for N = 0).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    probs = logits.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    numerator = 2 * (probs * targets).sum(dim=1) + smooth
    denominator = probs.sum(dim=1) + targets.sum(dim=1) + smooth
    return (1 - numerator / denominator).mean()
