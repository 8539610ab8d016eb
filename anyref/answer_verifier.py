"""The answer verifier: a small network that checks a mask answered to a text prompt against the prompt's words by
the mask's own pixels (``AnyRefConfig.answer_verifier``; fitted alone on a finished model: ``anyref fit-verifier``).

Why it exists: the LLM reads the image as a grid of patch features. In the tiny SynthRef model a small star and a
large one, or a red square and an orange one, differ by a cell or two of those features, and the model answers such
a lookalike, one attribute away from what was asked, with full confidence (docs/training-experiments.md). The
mask's colour, size and outline are plain in its pixels, so a verifier that reads them can say "not this one".

What it reads of each question (one mask, one prompt):

- the image at ``IMAGE_SIDE`` x ``IMAGE_SIDE``, with the mask and two position channels, read by a CNN whose every
  layer the prompt modulates (FiLM): the scene a relation ("the square left of the blue star") needs;
- the mask's region statistics (``region_statistics``): its mean and spread of colour, area, centre and box size;
- its outline: the mask cut out square around its box, aspect kept (``outline_crops``), read by a small CNN;
- the prompt's words: the model tokenizer's ids of its text (special-token strings in it are plain text), embedded
  and read by a bidirectional GRU.

It answers one logit per question: whether the mask is what the prompt describes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from anyref.candidate_crops import square_boxes
from anyref.mask_boxes import mask_boxes
from anyref.tokens import encode_text

__all__ = ["AnswerVerifier", "VerifierInputs", "verifier_inputs", "prompt_ids", "region_statistics", "outline_crops",
           "IMAGE_SIDE", "OUTLINE_SIDE", "STATISTICS"]

IMAGE_SIDE = 64  # the whole image, as the scene CNN reads it
OUTLINE_SIDE = 16  # the mask's outline crop
OUTLINE_MARGIN = 0.1
STATISTICS = 11  # mean rgb 3, std rgb 3, area 1, centre 2, box size 2
_AREA_SCALE = 10.0  # areas are a few percent of the image: scaled to about the other statistics' range


def region_statistics(pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """N x STATISTICS of N masks on one image: mean and standard deviation of the colour inside each (0-1), its
    area (share of the image, times 10), centre (x, y) and box size (width, height), as shares of the image side.
    pixels: 3 x H x W in [0, 1]; masks: N x H x W bool. An empty mask gives zeros."""
    weights = masks.to(pixels.dtype)
    count = weights.sum((1, 2))
    share = weights / count.clamp_min(1.0)[:, None, None]
    mean = torch.einsum("chw,nhw->nc", pixels, share)
    spread = (torch.einsum("chw,nhw->nc", pixels ** 2, share) - mean ** 2).clamp_min(0.0).sqrt()
    height, width = masks.shape[1:]
    ys = (torch.arange(height, dtype=pixels.dtype, device=pixels.device) + 0.5) / height
    xs = (torch.arange(width, dtype=pixels.dtype, device=pixels.device) + 0.5) / width
    centre = torch.stack([(share.sum(1) * xs).sum(1), (share.sum(2) * ys).sum(1)], dim=1)
    boxes = mask_boxes(masks)[0].to(pixels.dtype)
    size = torch.stack([(boxes[:, 2] - boxes[:, 0]) / width, (boxes[:, 3] - boxes[:, 1]) / height], dim=1)
    area = (count / (height * width))[:, None] * _AREA_SCALE
    return torch.cat([mean, spread, area, centre, size], dim=1)


def outline_crops(masks: torch.Tensor, side: int = OUTLINE_SIDE) -> torch.Tensor:
    """N x 1 x side x side: each of N x H x W bool masks cut out square around its box (its aspect kept, a margin
    of OUTLINE_MARGIN), resized. An empty mask gives zeros."""
    if not len(masks):
        return torch.zeros((0, 1, side, side))
    boxes, found = square_boxes(masks, OUTLINE_MARGIN)
    rois = torch.cat([torch.arange(len(masks), dtype=torch.float32, device=masks.device)[:, None], boxes], dim=1)
    crops = roi_align(masks[:, None].float(), rois, side, aligned=True)
    crops[~found] = 0.0
    return crops


@dataclass
class VerifierInputs:
    """A batch of questions over B images and prompts: N masks, each asked with its image's prompt.

    images: B x 3 x IMAGE_SIDE x IMAGE_SIDE in [0, 1]; masks: N x IMAGE_SIDE x IMAGE_SIDE (the share of each cell
    inside the mask); statistics: N x STATISTICS; outlines: N x 1 x OUTLINE_SIDE x OUTLINE_SIDE; owner: N, the
    image and prompt of each mask; token_ids: B x L (0-padded); lengths: B."""
    images: torch.Tensor
    masks: torch.Tensor
    statistics: torch.Tensor
    outlines: torch.Tensor
    owner: torch.Tensor
    token_ids: torch.Tensor
    lengths: torch.Tensor

    def to(self, device, dtype: torch.dtype = torch.float32) -> "VerifierInputs":
        """On ``device``, the float tensors in ``dtype`` (the verifier's own)."""
        moved = [getattr(self, name) for name in self.__dataclass_fields__]
        return VerifierInputs(*(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in moved))


def prompt_ids(tokenizer, texts: list[str]) -> list[int]:
    """The token ids the verifier reads of a prompt of text alone (its texts joined by a space), special-token
    strings read as plain text."""
    return encode_text(tokenizer, " ".join(texts))


def verifier_inputs(images: list[np.ndarray], masks: list[np.ndarray], prompts: list[list[int]]) -> VerifierInputs:
    """The questions ``masks[b]`` (K_b x H x W bool, on ``images[b]``, H x W x 3 uint8) asked with the prompt token
    ids ``prompts[b]`` (at least one id each), for every b."""
    if not len(images) == len(masks) == len(prompts):
        raise ValueError(f"give as many images, mask stacks and prompts, got {len(images)}, {len(masks)} and "
                         f"{len(prompts)}")
    if any(len(ids) == 0 for ids in prompts):
        raise ValueError("a prompt has no tokens: the verifier checks a mask against the prompt's words")
    small_images, small_masks, statistics, outlines, owner = [], [], [], [], []
    for b, (image, stack) in enumerate(zip(images, masks)):
        image, stack = np.asarray(image), np.asarray(stack, dtype=bool)
        if image.ndim != 3 or image.shape[2] != 3 or stack.ndim != 3 or stack.shape[1:] != image.shape[:2]:
            raise ValueError(f"question {b}: an H x W x 3 image and K x H x W masks at its size are needed, got "
                             f"{image.shape} and {stack.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        inside = torch.from_numpy(stack)
        small_images.append(F.interpolate(pixels[None], size=(IMAGE_SIDE, IMAGE_SIDE), mode="area")[0])
        small_masks.append(F.interpolate(inside[:, None].float(), size=(IMAGE_SIDE, IMAGE_SIDE), mode="area")[:, 0])
        statistics.append(region_statistics(pixels, inside))
        outlines.append(outline_crops(inside))
        owner += [b] * len(stack)
    token_ids = torch.zeros((len(prompts), max(len(ids) for ids in prompts)), dtype=torch.long)
    for b, ids in enumerate(prompts):
        token_ids[b, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return VerifierInputs(torch.stack(small_images), torch.cat(small_masks), torch.cat(statistics),
                          torch.cat(outlines), torch.as_tensor(owner, dtype=torch.long), token_ids,
                          torch.as_tensor([len(ids) for ids in prompts], dtype=torch.long))


class AnswerVerifier(nn.Module):
    """(questions) -> N logits: whether each mask is what its prompt describes (module docstring).

    vocab_size: the model tokenizer's; width: the scene CNN's first channels (then twice that); text_width: the word
    embedding and each GRU direction's."""

    def __init__(self, vocab_size: int, width: int = 32, text_width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, text_width)
        self.words = nn.GRU(text_width, text_width, batch_first=True, bidirectional=True)
        prompt = 2 * text_width
        channels = [3 + 1 + 2, width, 2 * width, 2 * width]  # rgb, the mask, x and y
        self.scene = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels, channels[1:]))
        self.scene_norms = nn.ModuleList(nn.GroupNorm(8, b) for b in channels[1:])
        self.scene_films = nn.ModuleList(nn.Linear(prompt, 2 * b) for b in channels[1:])
        self.outline = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (OUTLINE_SIDE // 4) ** 2, 64), nn.ReLU())
        self.region = nn.Sequential(nn.Linear(STATISTICS + 64, 128), nn.ReLU(), nn.Linear(128, 128))
        self.prompt = nn.Linear(prompt, 128)
        self.judge = nn.Sequential(nn.Linear(3 * 128 + 2 * channels[-1], 128), nn.ReLU(), nn.Linear(128, 1))
        positions = torch.linspace(-1.0, 1.0, IMAGE_SIDE)
        ys, xs = torch.meshgrid(positions, positions, indexing="ij")
        self.register_buffer("positions", torch.stack([xs, ys]), persistent=False)

    def prompt_vectors(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """B x 2 text_width: the GRU's last state in each direction."""
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(token_ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, last = self.words(packed)
        return torch.cat([last[0], last[1]], dim=-1)

    def forward(self, inputs: VerifierInputs) -> torch.Tensor:
        prompt = self.prompt_vectors(inputs.token_ids, inputs.lengths)[inputs.owner]  # N x 2 text_width
        masks = inputs.masks[:, None]
        x = torch.cat([inputs.images[inputs.owner], masks, self.positions.expand(len(masks), -1, -1, -1)], dim=1)
        for conv, norm, film in zip(self.scene, self.scene_norms, self.scene_films):
            scale, shift = film(prompt).chunk(2, dim=-1)
            x = F.relu(norm(conv(x)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        cover = F.interpolate(masks, size=x.shape[-2:], mode="area")
        inside = (x * cover).sum((2, 3)) / cover.sum((2, 3)).clamp_min(1e-3)  # the scene features on the mask
        region = self.region(torch.cat([inputs.statistics, self.outline(inputs.outlines)], dim=1))
        words = self.prompt(prompt)
        return self.judge(torch.cat([region, words, region * words, inside, x.amax((2, 3))], dim=1))[:, 0]
