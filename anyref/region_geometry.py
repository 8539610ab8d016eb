"""Where a box or mask reference lies and how large it is, as a code added to its tokens.

RoIAlign resamples every box to the same pool x pool grid and mask pooling averages the features under a mask, so a
box's tokens and a mask's token keep what the region looks like but not how large it is: a 20 px and a 40 px circle
give nearly the same tokens. On the shipped tiny SynthRef model half of the wrong box captions are wrong only in
the size word ("the small green cross" for a large one: 24 of 46 on the test split), where the box itself says the
size. :class:`RegionGeometry` encodes five numbers of the region - centre x and y, width, height and the square
root of its area, each a fraction of the vision tower's input frame - as sinusoids and maps them with a small MLP
to the LLM's width; the code is added to each of a box's tokens and to each mask token (references and candidates
alike, so that the same code means the same place and size for both). The MLP's last layer starts at zero, so a
model given the code later (``AnyRefModel.add_region_geometry``) answers as before until it trains.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GEOMETRY_FEATURES", "box_geometry", "mask_geometry", "RegionGeometry"]

GEOMETRY_FEATURES = 5  # centre x, centre y, width, height, sqrt(area)

# the width of a uniform interval is sqrt(12) times its standard deviation: a mask's spread read as a box's side
_SPREAD_TO_SIDE = math.sqrt(12.0)


def box_geometry(boxes: torch.Tensor, side: float) -> torch.Tensor:
    """boxes: N x 4 (x0, y0, x1, y1) in pixels of a side x side frame -> N x 5 (cx, cy, w, h, sqrt(w * h)), fractions
    of the frame."""
    x0, y0, x1, y1 = (boxes.float() / float(side)).unbind(-1)
    width, height = (x1 - x0).clamp_min(0.0), (y1 - y0).clamp_min(0.0)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, width, height, (width * height).sqrt()], dim=-1)


def mask_geometry(weights: torch.Tensor) -> torch.Tensor:
    """weights: M x g x g area fractions of each mask in the cells of a square frame (``mask_tokens.pooling_weights``)
    -> M x 5 (cx, cy, w, h, sqrt(area)), fractions of the frame. The centre is the mask's centroid, width and height
    its spread along x and y as the sides of a uniform box of the same spread, the area its exact share of the frame.
    An empty mask (never passed on: references and candidates are checked) gives zeros."""
    grid = weights.shape[-1]
    weights = weights.float()
    area = weights.flatten(1).sum(1)  # in cells
    share = weights / area.clamp_min(1e-6)[:, None, None]
    centres = (torch.arange(grid, dtype=torch.float32, device=weights.device) + 0.5) / grid
    along_x, along_y = share.sum(1), share.sum(2)  # M x g: the mask's mass per column, per row
    cx, cy = along_x @ centres, along_y @ centres
    # each cell's share spread evenly over the cell (its own variance 1 / (12 g^2)), so that a mask that fills whole
    # cells gets its exact sides, and one inside a single cell the cell's
    within = 1.0 / (12.0 * grid * grid)
    var_x = (along_x @ centres.square() - cx.square()).clamp_min(0.0) + within
    var_y = (along_y @ centres.square() - cy.square()).clamp_min(0.0) + within
    width, height = var_x.sqrt() * _SPREAD_TO_SIDE, var_y.sqrt() * _SPREAD_TO_SIDE
    out = torch.stack([cx, cy, width, height, (area / (grid * grid)).sqrt()], dim=-1)
    return out * (area > 0).float()[:, None]


class RegionGeometry(nn.Module):
    """N x 5 region geometry -> N x hidden code: each number as itself and sin / cos at ``frequencies``
    octave-spaced frequencies, then Linear -> GELU -> Linear (the last zero at the start)."""

    def __init__(self, hidden: int, frequencies: int = 4):
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32),
                             persistent=False)
        width = GEOMETRY_FEATURES * (1 + 2 * frequencies)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, geometry: torch.Tensor) -> torch.Tensor:
        if geometry.shape[-1] != GEOMETRY_FEATURES:
            raise ValueError(f"region geometry has {GEOMETRY_FEATURES} numbers per region, got {geometry.shape[-1]}")
        dtype = self.mlp[0].weight.dtype
        angles = geometry.float()[..., None] * self.frequencies  # N x 5 x F
        code = torch.cat([geometry.float(), angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return self.mlp(code.to(dtype))
