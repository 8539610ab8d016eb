"""Refocusing: h_obj' = h_obj + lambda * sum_i a_i h_i over the answer tokens before ``<obj>``.

a = the last decoder layer's attention row of the position that emits ``<obj>``, averaged over heads and
renormalised over those answer tokens. Only the rows needed are computed: the last layer's query and key
projections are captured by hooks during the normal (sdpa) forward, and the scores of one query row are computed
from them. No layer switches to eager attention and no L x L matrix is materialised. The projections are captured,
not recomputed, because in training LoRA dropout on q_proj (or any projection) draws a new mask on each call: a
recomputed query would give another attention row than the one the forward used.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

__all__ = ["LastLayerAttentionTap", "attention_rows", "project_keys", "refocus"]


class LastLayerAttentionTap:
    """Captures the last decoder layer's query and key projections and rotary embeddings during a forward.

    Use as a context manager around a language-model forward; afterwards ``queries`` is B x L x (heads * D),
    ``keys`` B x L x (kv_heads * D) (both before the rotary embedding) and ``cos``/``sin`` are B x L x D: the rows
    of this forward only; with a KV cache, only the new positions.
    """

    def __init__(self, language_model: nn.Module):
        self.attention = language_model.layers[-1].self_attn
        self.queries: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def _rotary_hook(self, module, args, kwargs):
        self.cos, self.sin = kwargs["position_embeddings"]

    def _query_hook(self, module, args, output):
        self.queries = output

    def _key_hook(self, module, args, output):
        self.keys = output

    def __enter__(self) -> "LastLayerAttentionTap":
        self._handles = [
            self.attention.register_forward_pre_hook(self._rotary_hook, with_kwargs=True),
            self.attention.q_proj.register_forward_hook(self._query_hook),
            self.attention.k_proj.register_forward_hook(self._key_hook),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def _heads(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """... x (heads * D) -> ... x heads x D."""
    heads = projected.shape[-1] // attention.head_dim
    return projected.view(*projected.shape[:-1], heads, attention.head_dim)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LLaMA's rotary embedding: x ... x heads x L x D, cos/sin ... x L x D."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    return x * cos + rotate_half(x) * sin


def project_keys(attention: nn.Module, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary keys of the last layer: its k_proj output B x L x (KVH * D) -> B x KVH x L x D (what a KV cache
    would hold)."""
    return _rotary(_heads(attention, keys).transpose(1, 2), cos, sin)


def attention_rows(
    attention: nn.Module,
    query_rows: torch.Tensor,
    cos_rows: torch.Tensor,
    sin_rows: torch.Tensor,
    keys: torch.Tensor,
    key_mask: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged attention probabilities of N query rows, as the layer's own softmax gives them.

    query_rows: N x (heads * D) (the layer's q_proj output at the query positions, as the tap captured it); cos_rows, sin_rows: N x D;
    keys: N x KVH x K x D rotary keys; key_mask: N x K bool, True where the query may attend (causal + padding).
    Returns N x K float32.
    """
    queries = _heads(attention, query_rows)[:, :, None, :]  # N x heads x 1 x D
    queries = _rotary(queries, cos_rows[:, None], sin_rows[:, None])
    groups = queries.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)  # grouped-query attention: KV heads shared by query heads
    # scores in float32, as SDPA keeps them: bfloat16 products would move the weights by percents
    scores = (queries.float() @ keys.float().transpose(-1, -2)).squeeze(2) * attention.scaling  # N x heads x K
    scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


def refocus(
    h_obj: torch.Tensor, answer_states: torch.Tensor, weights: torch.Tensor, answer_mask: torch.Tensor,
    lam: torch.Tensor | float, answer_grad: float = 1.0,
) -> torch.Tensor:
    """h_obj + lam * sum_i a_i h_i with a renormalised over the answer tokens before ``<obj>``.

    h_obj: N x H; answer_states: N x K x H (last-layer states at the key positions); weights: N x K (attention
    row); answer_mask: N x K bool (answer tokens before the ``<obj>``). Rows with no such token are unchanged.
    answer_grad scales the gradient that reaches ``answer_states`` through this sum (the forward value is the
    same): 1.0 is the paper, 0.0 detaches them. At 1.0 the mask loss reaches those states lam times over, next to
    their own next-token loss; scaling it down did not restore the tiny model's captions (docs/training-experiments.md).
    """
    if answer_grad != 1.0:
        answer_states = answer_grad * answer_states + (1.0 - answer_grad) * answer_states.detach()
    masked = weights * answer_mask
    total = masked.sum(dim=-1, keepdim=True)
    normalised = torch.where(total > 0, masked / total.clamp_min(1e-12), torch.zeros_like(masked))
    context = torch.einsum("nk,nkh->nh", normalised.to(answer_states.dtype), answer_states)
    return h_obj + lam * context
