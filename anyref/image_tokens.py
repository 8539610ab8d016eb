"""The image tokens the LLM reads: fewer of them (k x k blocks merged into one token), and where they are (a learned
2-D position map, shared with box references).

The LLM's cost grows with its sequence, and image tokens are most of it (256 of ~300 in the tiny SynthRef model).
The merge keeps everything the block holds - a linear map of the block's k*k tokens concatenated, in raster order
within the block - rather than averaging it away. Boxes, example images and mask references still pool the vision
tower's full-resolution grid; only the image tokens the prompt quotes are merged.

LLaVA's image tokens carry their place only as far as the vision tower's own position embedding survives into
its output, and the LLM's RoPE sees a raster sequence, not a grid. :class:`ImageTokenPositions` adds a learned map
over the grid the LLM reads to each image token and, RoIAligned with each box, to that box's tokens, so that a
box and the image tokens under it share one code of place.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

__all__ = ["ImageTokenMerger", "ImageTokenPositions"]


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


class ImageTokenPositions(nn.Module):
    """A learned position map over the g x g image-token grid the LLM reads (table: H x g x g, zero at the start,
    so a pretrained LLaVA is unchanged until it trains).

    Why: in a tiny SynthRef run without it (synthref-tiny-promptable, step 4,000), ridge probes fitted on 120
    images recover nothing of an image token's x or y from its input embedding on 40 others (R^2 below 0) and
    little of x from its last-layer state (R^2 0.11; y 0.78, which the raster order gives through RoPE); the shipped
    model finds the object of "the square left of the blue star" prompts 31% of the time. Trained with it
    (preset synthref-tiny-positions), the input embeddings give x and y at R^2 0.79 / 0.78, yet relational prompts
    found their object 28% of the time: the map puts the information in, the tiny LLM did not learn to compare
    positions in one 2-hour run (docs/training-experiments.md).
    cell: side of one grid cell in vision-input pixels (patch size x merge).
    """

    def __init__(self, grid: int, hidden: int, cell: int):
        super().__init__()
        self.cell = cell
        self.table = nn.Parameter(torch.zeros(hidden, grid, grid))

    def add_to_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x g*g x H image tokens (raster order) plus each cell's position."""
        if tokens.shape[1] != self.table[0].numel():
            raise ValueError(f"{tokens.shape[1]} image tokens for a {self.table.shape[1]} x {self.table.shape[2]} "
                             "position map")
        return tokens + self.table.flatten(1).T.to(tokens.dtype)

    def at_boxes(self, boxes: torch.Tensor, pool: int) -> torch.Tensor:
        """The map RoIAligned as box features are: boxes Nb x 5 (sample index, x0, y0, x1, y1 in vision-input
        pixels) -> Nb x pool*pool x H, one position per box token, in the tokens' order."""
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes[:, 1:]], 1).float()
        # in float32: torchvision's RoIAlign has no bfloat16 kernel
        sampled = roi_align(self.table[None].float(), rois, output_size=pool, spatial_scale=1.0 / self.cell,
                            sampling_ratio=2, aligned=True).to(self.table.dtype)  # Nb x H x pool x pool
        return sampled.flatten(2).transpose(1, 2)
