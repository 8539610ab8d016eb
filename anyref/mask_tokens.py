"""Mask tokens (RAS): a mask becomes ONE LLM token by mask pooling over feature maps, then the mask projector.

Each mask is downsampled to each feature map's own grid as area fractions (prepared on the CPU with the sample,
:func:`pooling_weights`), the features under it are averaged, the averages of every enabled source are concatenated
and a 2-layer MLP maps them to the LLM's width. Sources (``AnyRefConfig.mask_features``):

- "vision": the LLaVA vision tower's patch grid (always on; the features boxes are RoIAligned on);
- "position": a fixed 2-D sinusoidal position map (32 x 32 by default), so a token knows where its mask lies;
- "sam": SAM's image embedding (its finest feature map);
- "timm:NAME": a further timm encoder (e.g. SigLIP, ConvNeXt-CLIP, DINOv2) built with ``timm.create_model(NAME)``;
  its weights come from a file given when the model is built (:mod:`encoders.timm_features`).

Reference masks (``MaskRef``) follow a ``<mask-ref-pre>`` token, candidates a ``<mask-pool-pre>`` token; the same
pooling and projector make both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskSource", "position_map", "pooling_weights", "pool_masks", "MaskProjector"]


@dataclass(frozen=True)
class MaskSource:
    """One feature map mask tokens pool: its channels, the side of its square input frame, the side of its grid,
    and (for encoders with an input of their own) how an H x W x 3 uint8 image becomes that input."""

    channels: int
    side: int
    grid: int
    preprocess: Callable | None = None


def position_map(grid: int, channels: int) -> torch.Tensor:
    """A 2-D sinusoidal position map, grid*grid x channels: sin and cos of x and y (cell centres in [0, 1]) at
    ``channels / 4`` octave-spaced frequencies."""
    if channels % 4:
        raise ValueError(f"position map channels must be a multiple of 4, got {channels}")
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    frequencies = math.pi * 2.0 ** torch.arange(channels // 4, dtype=torch.float32)
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    angles = torch.cat([x.reshape(-1, 1) * frequencies, y.reshape(-1, 1) * frequencies], dim=1)  # P^2 x C/2
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def warp_mask(mask: torch.Tensor, scale: tuple[float, float], offset: tuple[float, float], side: int) -> torch.Tensor:
    """An H x W mask carried into a square input frame (x' = x * scale + offset, as the image was): side x side
    float coverage in [0, 1], 0 where the input shows no image (padding, cropped-off parts)."""
    height, width = mask.shape
    centres = torch.arange(side, dtype=torch.float32) + 0.5
    x = ((centres - offset[0]) / scale[0]) * 2.0 / width - 1.0
    y = ((centres - offset[1]) / scale[1]) * 2.0 / height - 1.0
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)[None]  # 1 x side x side x 2 (x, y)
    return F.grid_sample(mask.float()[None, None], grid, mode="bilinear", align_corners=False)[0, 0]


def pooling_weights(mask, frames: dict[str, tuple[tuple, tuple, int, int]]) -> dict[str, torch.Tensor]:
    """Area fractions of an H x W bool mask in each source's cells.

    frames: source -> (scale (sx, sy), offset (ox, oy), input side, grid side): how the image was carried into that
    source's square input, and the side of its feature grid. Returns source -> grid x grid float.
    """
    mask = torch.as_tensor(mask)
    out = {}
    for name, (scale, offset, side, grid) in frames.items():
        out[name] = F.adaptive_avg_pool2d(warp_mask(mask, scale, offset, side)[None], grid)[0]
    return out


def pool_masks(features: torch.Tensor, weights: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """Weighted averages of feature maps under masks.

    features: B x C x h x w (one map per image) or (h*w) x C (one map shared by all images, e.g. positions);
    weights: M x h x w area fractions of each mask in each cell; owners: M, the image of each mask.
    Returns M x C. Works per image, so no M x C x h x w tensor is ever built.
    """
    count = weights.shape[0]
    flat = weights.flatten(1).to(features.dtype)  # M x hw
    flat = flat / flat.sum(1, keepdim=True).clamp_min(1e-6)
    if features.dim() == 2:
        return flat @ features
    out = features.new_zeros((count, features.shape[1]))
    for image in owners.unique().tolist():
        mine = owners == image
        out[mine] = flat[mine] @ features[image].flatten(1).T
    return out


class MaskProjector(nn.Module):
    """Per-source LayerNorm (the sources' scales differ), concatenation, Linear -> GELU -> Linear to the LLM width.

    source_dims: source name -> channels, in concatenation order. token_norm > 0 rescales every output token to
    that L2 norm, without parameters, so that it can be switched on in a run that continues another
    (AnyRefConfig.mask_token_norm).
    """

    def __init__(self, source_dims: dict[str, int], hidden: int, token_norm: float = 0.0):
        super().__init__()
        self.token_norm = token_norm
        self.sources = list(source_dims)
        self.norms = nn.ModuleDict({name.replace(".", "_"): nn.LayerNorm(dim) for name, dim in source_dims.items()})
        self.mlp = nn.Sequential(nn.Linear(sum(source_dims.values()), hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """pooled: source name -> M x C_source. Returns M x hidden."""
        parts = [self.norms[name.replace(".", "_")](pooled[name]) for name in self.sources]
        tokens = self.mlp(torch.cat(parts, dim=-1))
        if self.token_norm > 0:
            tokens = F.normalize(tokens, dim=-1) * self.token_norm
        return tokens
