"""A decoding KV cache whose keys and values live in buffers allocated once for the whole answer.

transformers' DynamicCache concatenates every layer's whole cache with each new token, so B rows of L tokens are
copied per layer per generated token: profiled on CPU, that copying was a third of an 8-query ``segment_many``.
Here each step writes its keys and values in place and the layer hands out views of the filled part; the
attention code sees the same tensors as with DynamicCache (tests/test_engine.py checks the answers are equal).
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from anyref.lora import unwrapped

__all__ = ["cache_argument", "preallocated_cache"]


class PreallocatedLayer(DynamicLayer):
    """One decoder layer's cache: buffers B x KVH x capacity x D, allocated at the first update (which fixes B)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device = key_states.device
            rows, heads, _, dim = key_states.shape
            self._keys = key_states.new_empty((rows, heads, self.capacity, dim))
            self._values = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # longer than planned: grow (once per doubling, not once per token)
            size = max(end, 2 * self._keys.shape[-2])
            self._keys, self._values = _grown(self._keys, size), _grown(self._values, size)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def _grown(buffer: torch.Tensor, size: int) -> torch.Tensor:
    """``buffer`` (B x KVH x T x D) with room for ``size`` positions, its contents kept."""
    spare = buffer.new_empty((*buffer.shape[:2], size - buffer.shape[2], buffer.shape[3]))
    return torch.cat([buffer, spare], dim=2)


def preallocated_cache(num_layers: int, capacity: int) -> Cache:
    """An empty cache for ``num_layers`` decoder layers, each sized for ``capacity`` tokens (prompt + answer)."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


def cache_argument(decoder: nn.Module, cache: Cache) -> dict[str, Cache]:
    """``cache`` as the keyword argument ``decoder``'s forward takes it by: ``cache`` from transformers 5.25 on,
    ``past_key_values`` before. 5.25 to 5.39 take the old name too, but warn on every call. A PEFT wrapper passes
    keywords through to the model it wraps, so that model's forward decides."""
    return {_cache_keyword(type(unwrapped(decoder))): cache}


@functools.cache
def _cache_keyword(decoder_class: type) -> str:
    # inspect.signature follows the deprecation wrapper (functools.wraps) to the forward it wraps
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"
