"""More depth for a finished model's LLM: new decoder layers that start as the identity.

A continuation that asks whether a deeper LLM judges descriptions better (docs/training-experiments.md) must start
where the finished model is: each new layer's attention output (``o_proj``) and MLP output (``down_proj``) projections
are zero, so its residual branches add nothing until it trains, and the model answers exactly as before. The new
layers go just before the last one, whose attention the ``<obj>`` refocusing reads and whose states every head was
trained on."""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

__all__ = ["insert_identity_layers"]


def insert_identity_layers(language_model: nn.Module, count: int, seed: int = 0) -> tuple[nn.Module, ...]:
    """Insert ``count`` new LLaMA decoder layers before the last layer of ``language_model`` (a LlamaModel), in
    place, their output projections zero (the identity at the start) and their other weights drawn as a new
    LLaMA's are (from ``seed``, aside from the global random stream). Updates the config's layer count and every
    layer's cache index. Returns the new layers."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive number of layers, got {count!r}")
    config = language_model.config
    layers = language_model.layers
    if len(layers) != config.num_hidden_layers:
        raise ValueError(f"the LLM holds {len(layers)} layers but its config says {config.num_hidden_layers}")
    reference = next(layers[-1].parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = [_identity_layer(config).to(device=reference.device, dtype=reference.dtype) for _ in range(count)]
    language_model.layers = nn.ModuleList([*layers[:-1], *new, layers[-1]])
    config.num_hidden_layers = len(language_model.layers)
    for index, layer in enumerate(language_model.layers):
        # the KV cache is indexed by this number: it must follow the layer's place in the stack
        layer.self_attn.layer_idx = index
    return tuple(new)


def _identity_layer(config) -> LlamaDecoderLayer:
    layer = LlamaDecoderLayer(config, layer_idx=0)  # renumbered by the caller
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for output in (layer.self_attn.o_proj, layer.mlp.down_proj):
        nn.init.zeros_(output.weight)
    return layer
