"""The image read a second time, after the answer: image tokens that know what was asked.

In LLaVA's layout the image comes before the question, and the LLM is causal, so the image tokens' states never see
the question: whatever an ``<obj>``'s location map compares (:class:`anyref.heads.ObjLocator`: the ``<obj>``'s
query against a linear map of each image token's last-layer state), the image side of that comparison is the same
for "the red circle" as for "the square left of the blue star". The ``<obj>`` state alone must carry the whole
description, relations included, into one dot product.

With ``AnyRefConfig.image_reread`` a sequence with an answer holds the image's tokens twice: once where LLaVA puts
them, and once more after the answer's eos, where each token attends to the question, the answer and the whole
image before it. Nothing attends to the second read and nothing is predicted from it, so the answer's tokens and
``<obj>`` states are what they would be without it; at inference it is one more pass after decoding, over the
answer and the image's tokens (the shared prefix reused). :class:`ImageReread` marks the second read with a
learned vector added to its input embeddings (zero at the start), and gives the location map (and the group
head's cell map) either the first read's states plus a learned linear map of the second's ("added": every new
weight zero, so a model given the second read later, ``AnyRefModel.add_image_reread``, answers exactly as before
until it trains) or the second read's states alone ("alone": every gradient of the map reaches the second read).
"""
from __future__ import annotations

import torch
from torch import nn

from anyref.config import IMAGE_REREADS

__all__ = ["ImageReread"]


class ImageReread(nn.Module):
    """The second read's input marker (hidden) and, with mode "added", its zero-started map into the image tokens'
    states."""

    def __init__(self, hidden: int, mode: str = "added"):
        super().__init__()
        if mode not in IMAGE_REREADS[1:]:  # "off" is no ImageReread at all
            raise ValueError(f"ImageReread mode must be one of {IMAGE_REREADS[1:]}, got {mode!r}")
        self.mode = mode
        # zeros, not nn.Linear's draw: a model gains this part without moving anyone's random stream
        self.marker = nn.Parameter(torch.zeros(hidden))
        if mode == "added":
            self.weight = nn.Parameter(torch.zeros(hidden, hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))

    def second_copy(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """B x T x H image-token embeddings -> the second read's input embeddings (B x T x H)."""
        return image_tokens + self.marker.to(image_tokens.dtype)

    def combine(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Last-layer states of the two reads (B x T x H each) -> the image tokens' states the heads read."""
        if self.mode == "alone":
            return second
        return first + nn.functional.linear(second, self.weight, self.bias)
