"""The shared prompt prefix: computed once, its KV cache reused by every query on the same image.

Every prompt on one image starts with the same tokens - [bos] (system) "USER: " and the image's patch tokens - which
are most of the prompt (256 of ~300 tokens for a 16 x 16 grid). :func:`split_prefix` finds how many tokens all rows
of a left-padded batch share and moves them to the front of each row ([prefix][padding][rest]: positions stay
contiguous, since position ids count only attended tokens); the prefix then runs once, as ONE row, and its keys and
values are expanded to the batch (:class:`PrefixCache`). ``AnyRef.set_image`` keeps the PrefixCache, so later queries
skip the prefix entirely.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache

from anyref.kv_cache import cache_argument, preallocated_cache

__all__ = ["PrefixCache", "split_prefix"]


@dataclass
class PrefixCache:
    """The prefix's token ids (P), per decoder layer its keys and values (1 x KVH x P x D each), and its last-layer
    states (1 x P x H: the image tokens' states, for models that locate ``<obj>`` among them)."""

    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: torch.Tensor

    @classmethod
    def run(cls, language_model, ids: tuple[int, ...], embeds: torch.Tensor) -> "PrefixCache":
        """The prefix through the decoder stack: embeds 1 x P x H (position ids 0..P-1)."""
        cache = DynamicCache()
        positions = torch.arange(embeds.shape[1], device=embeds.device)[None]
        hidden = language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(positions), position_ids=positions,
                                use_cache=True, **cache_argument(language_model, cache)).last_hidden_state
        return cls(ids, [(layer.keys, layer.values) for layer in cache.layers], hidden)

    def expanded(self, rows: int, capacity: int) -> Cache:
        """A fresh decoding cache for ``capacity`` tokens holding the prefix in each of ``rows`` rows (copied into
        the cache's buffers; appending never touches this PrefixCache)."""
        cache = preallocated_cache(len(self.layers), capacity)
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        return cache


def split_prefix(input_ids: torch.Tensor, attention: torch.Tensor, embeds: torch.Tensor,
                 image_ids: tuple[int, ...]) -> tuple[int, torch.Tensor]:
    """(P, order): the length of the run of tokens every row starts with - the same ids AND the same embeddings
    (placeholders of image patches or reference features agree in id, not always in content) - up to the end of
    the image (the end of the first run of ``image_ids``: what later queries on the image share too), and a B x L
    index that puts each row's first P real tokens first and keeps the rest in order (apply with ``gather`` on
    dim 1). Every row keeps at least its last token out of the prefix (the one whose state predicts the answer).

    input_ids, attention: B x L of a left-padded batch; embeds: B x L x H.
    """
    starts = (attention == 0).sum(1)  # left padding of each row
    row = input_ids[0, int(starts[0]):]
    image = torch.isin(row, torch.tensor(image_ids, device=row.device)).nonzero()
    if not len(image):
        return 0, torch.arange(attention.shape[1], device=input_ids.device).expand_as(input_ids)
    # the first run of image ids ends the prefix (image_reread's second read, after an answer, is the row's own)
    image = image[:, 0]
    run = int((image - image[0] == torch.arange(len(image), device=image.device)).long().cumprod(0).sum())
    limit = min(int((attention.shape[1] - starts).min()) - 1, int(image[run - 1]) + 1)
    first = int(starts[0])
    same = torch.ones(max(limit, 0), dtype=torch.bool, device=input_ids.device)
    for r in range(1, len(input_ids)):
        start = int(starts[r])
        same &= input_ids[r, start:start + limit] == input_ids[0, first:first + limit]
        same &= (embeds[r, start:start + limit] == embeds[0, first:first + limit]).all(-1)
    prefix = int(same.long().cumprod(0).sum())
    span = torch.arange(attention.shape[1], device=input_ids.device)
    order = []
    for r in range(len(input_ids)):
        start = int(starts[r])
        order.append(torch.cat([span[start:start + prefix], span[:start], span[start + prefix:]]))
    return prefix, torch.stack(order)
