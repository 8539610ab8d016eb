"""Fewer image tokens for the LLM: each k x k block of projected patch tokens merged into one token.

The LLM's cost grows with its sequence, and image tokens are most of it (256 of ~300 in the tiny SynthRef model).
The merge keeps everything the block holds - a linear map of the block's k*k tokens concatenated, in raster order
within the block - rather than averaging it away. Boxes, example images and mask references still pool the vision
tower's full-resolution grid; only the image tokens the prompt quotes are merged.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ImageTokenMerger"]


class ImageTokenMerger(nn.Module):
    """B x G*G x H patch tokens (raster order) -> B x (G/k)*(G/k) x H, one per k x k block.

    Initialised as the block's mean, so an untrained merger is plain k x k average pooling.
    """

    def __init__(self, merge: int, hidden: int):
        super().__init__()
        if merge < 2:
            raise ValueError(f"an ImageTokenMerger merges k x k blocks with k >= 2, got {merge}")
        self.merge = merge
        self.linear = nn.Linear(merge * merge * hidden, hidden)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(hidden).repeat(1, merge * merge) / (merge * merge))
            self.linear.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, hidden = tokens.shape
        side, k = int(round(count ** 0.5)), self.merge
        if side * side != count or side % k:
            raise ValueError(f"{count} image tokens are not a square grid whose side is a multiple of {k}")
        blocks = tokens.view(batch, side // k, k, side // k, k, hidden).permute(0, 1, 3, 2, 4, 5)
        return self.linear(blocks.reshape(batch, (side // k) ** 2, k * k * hidden))
