"""SAM's promptable segmentation as a training loss: each target mask drawn by SAM's own prompt encoder and mask
decoder from a jittered box around it.

Pretrained SAM comes able to draw an object's outline from a box; a SAM built from random weights learns to draw only
through ``<obj>`` prompts. A stage's ``sam_prompt_weight`` adds this loss: in the encoder warm-up on every object of
the scene, in the joint stage on the batch's target masks (any dataset's). Measured on SynthRef
(docs/training-experiments.md, "SAM trained on box prompts"): the tiny SAM learns to draw objects from boxes (IoU 0.85
after 1,500 steps alone), but a model trained with it drew its ``<obj>`` masks no better by step 5,000 - what limits
them there is where the LLM places them, not how SAM draws.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import Sam

from anyref.heads import decode_masks, upscale_masks
from anyref.losses import mask_bce, mask_dice
from anyref.mask_boxes import mask_boxes as boxes_and_found

__all__ = ["mask_boxes", "jitter_boxes", "box_prompt_loss"]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """K x H x W bool (each non-empty) -> K x 4 float boxes (x0, y0, x1, y1) in pixels, x1 / y1 one past the last
    mask pixel (the convention of :class:`anyref.Box`)."""
    boxes, found = boxes_and_found(masks)
    if not bool(found.all()):
        raise ValueError("mask_boxes: every mask needs at least one pixel")
    return boxes


def jitter_boxes(boxes: torch.Tensor, fraction: float) -> torch.Tensor:
    """K x 4 boxes with each side moved by up to ``fraction`` of the box's width / height (uniform, from torch's
    global generator, which the trainer's checkpoints restore)."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # w, h, w, h
    return boxes + (torch.rand(boxes.shape, device=boxes.device) * 2 - 1) * fraction * sides


def box_prompt_loss(sam: Sam, embeddings: torch.Tensor, masks: list[torch.Tensor], sam_sizes: list[tuple[int, int]],
                    image_sizes: list[tuple[int, int]], jitter: float = 0.1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(BCE, dice, mean IoU) of SAM drawing every non-empty mask of ``masks`` from a jittered box around it.

    embeddings: B x C x g x g SAM image embeddings; masks: per sample K_i x H_i x W_i targets at the image's size;
    sam_sizes / image_sizes: per sample the resized (h, w) inside SAM's input and the original (H, W). BCE and dice
    are per-mask means (each mask weighs the same), IoU is detached, for logs. A batch without masks gives zeros
    that still reach every module of the prompt path, so data-parallel ranks build the same graph.
    """
    owners, boxes, pieces = [], [], []
    for row, sample_masks in enumerate(masks):
        kept = sample_masks[sample_masks.flatten(1).any(1)].bool()
        if not len(kept):
            continue
        (h, w), (height, width) = sam_sizes[row], image_sizes[row]
        scale = torch.tensor([w / width, h / height, w / width, h / height], device=kept.device)
        boxes.append(jitter_boxes(mask_boxes(kept), jitter) * scale)
        owners += [row] * len(kept)
        pieces.append((row, kept))
    # one zero box on the first image, weighted 0 below, keeps the prompt path in the graph for any batch
    boxes.append(embeddings.new_zeros((1, 4)))
    sparse, _ = sam.prompt_encoder(points=None, boxes=torch.cat(boxes).to(embeddings.dtype), masks=None)
    low = decode_masks(sam, embeddings[torch.tensor(owners + [0], device=embeddings.device)], sparse)
    zero = low[-1].sum() * 0.0
    bce, dice, ious, start = zero, zero, [], 0
    for row, target in pieces:
        logits = upscale_masks(sam, low[start:start + len(target)], sam_sizes[row], image_sizes[row])
        start += len(target)
        bce = bce + mask_bce(logits, target) * len(target)
        dice = dice + mask_dice(logits, target) * len(target)
        predicted = logits.detach() > 0
        ious.append((predicted & target).flatten(1).sum(1) / (predicted | target).flatten(1).sum(1).clamp_min(1))
    if not owners:
        return zero, zero, zero.detach()
    return bce / len(owners), dice / len(owners), torch.cat(ious).float().mean()
