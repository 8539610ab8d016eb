"""Each candidate mask's own pixels, cut out at a fixed size: what a head that reads pixels
(:class:`anyref.group_heads.RelationGroupHead` with ``reads_pixels``) sees of a candidate.

A candidate's mask token pools the encoders' feature maps over the mask, at their grid's resolution; in the tiny
SynthRef model those maps are 8 x 8 to 16 x 16 cells over the image, where a small red square and a small orange
one are a cell or two of mixed colour. The crop keeps the pixels: a square around the mask's box (its aspect kept,
so that the silhouette is not stretched; grown by CROP_MARGIN on each side), RoIAligned to CROP_SIDE x CROP_SIDE
from SAM's input pixels, with the mask itself as a fourth channel and the pixels outside it zeroed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from anyref.mask_boxes import mask_boxes

__all__ = ["candidate_crops", "square_boxes", "CROP_SIDE", "CROP_CHANNELS", "CROP_MARGIN"]

CROP_SIDE = 16
CROP_CHANNELS = 4  # the masked pixels (3, SAM's normalisation) and the mask
CROP_MARGIN = 0.15  # of the box's longer side, on each side: the mask's outline stays inside the crop


def candidate_crops(pixels: torch.Tensor, sam_size: tuple[int, int], masks: torch.Tensor,
                    side: int = CROP_SIDE) -> torch.Tensor:
    """N x CROP_CHANNELS x side x side crops of N candidate masks.

    pixels: 3 x S x S, one image as SAM reads it (resized to ``sam_size`` (h, w), normalised, padded to S);
    masks: N x H x W bool at the image's own size. An empty mask gets an all-zero crop."""
    if masks.dim() != 3 or pixels.dim() != 3:
        raise ValueError(f"candidate_crops takes pixels 3 x S x S and masks N x H x W, got {tuple(pixels.shape)} and "
                         f"{tuple(masks.shape)}")
    count = len(masks)
    if count == 0:
        return pixels.new_zeros((0, CROP_CHANNELS, side, side))
    height, width = sam_size
    frame = F.interpolate(masks[:, None].to(pixels.dtype), size=(height, width), mode="bilinear",
                          align_corners=False)
    frame = F.pad(frame, (0, pixels.shape[2] - width, 0, pixels.shape[1] - height))  # N x 1 x S x S
    inside = frame[:, 0] > 0.5
    boxes, found = square_boxes(inside, CROP_MARGIN)
    boxes = torch.cat([torch.arange(count, device=pixels.device, dtype=pixels.dtype)[:, None],
                       boxes.to(pixels.dtype)], dim=1)
    image_boxes = boxes.clone()
    image_boxes[:, 0] = 0.0  # every crop from the one image
    rgb = roi_align(pixels[None], image_boxes, side, aligned=True)
    mask = roi_align(frame, boxes, side, aligned=True)
    crops = torch.cat([rgb * mask, mask], dim=1)
    crops[~found] = 0.0
    return crops


def square_boxes(inside: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 4 boxes x0, y0, x1, y1 in pixels, N bool: the mask has pixels) of N x H x W bool masks: the square
    around each mask's box, centred on it, its side the box's longer side grown by ``margin`` of it on each side (so
    that the aspect is kept when it is resized). An empty mask's box is all zeros."""
    boxes, found = mask_boxes(inside)
    x0, y0, x1, y1 = boxes.unbind(1)
    half = torch.maximum(x1 - x0, y1 - y0) * (0.5 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)
    boxes[~found] = 0.0
    return boxes, found
