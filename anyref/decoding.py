"""Greedy decoding of AnyRef answers: a KV cache, the shared prompt prefix run once, and each ``<obj>``'s state
refocused on the answer tokens before it once decoding ends.

``AnyRefModel.generate`` is the entry point; these functions take the model as their first argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from anyref.batching import Batch
from anyref.kv_cache import cache_argument, preallocated_cache
from anyref.outputs import Generation
from anyref.prefix import PrefixCache, split_prefix
from anyref.refocus import LastLayerAttentionTap, attention_rows, refocus

if TYPE_CHECKING:
    from anyref.model import AnyRefModel

__all__ = ["greedy_generate"]


@dataclass
class Emission:
    """The ``<obj>`` tokens one decoding step emitted: their batch rows (N), raw last-layer states (N x H), the
    last layer's query projection and rotary embeddings at that step (N x heads*D, N x D, N x D), and how many key
    positions the cache held then (``reach``)."""

    rows: torch.Tensor
    states: torch.Tensor
    query: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    reach: int


@dataclass
class Prefill:
    """A prompt batch run into a decoding cache: its ids, attention and position ids (B x L, rows reordered to
    [prefix][padding][rest] when a prefix was shared), the cache, the last-layer states of the tokens after the
    shared prefix (B x (L - shared) x H), and the PrefixCache used (None when none was shared)."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    positions: torch.Tensor
    cache: object
    hidden: torch.Tensor
    shared: int
    prefix: PrefixCache | None

    def full_hidden(self) -> torch.Tensor:
        """Every position's last-layer state, B x L x H (the prefix's repeated in each row)."""
        if not self.shared:
            return self.hidden
        return torch.cat([self.prefix.hidden.expand(len(self.hidden), -1, -1), self.hidden], dim=1)


@torch.no_grad()
def greedy_generate(model: AnyRefModel, batch: Batch, max_new_tokens: int | None = None,
                    grids: torch.Tensor | None = None, refocus_obj: bool = True, stop_at_eos: bool = True,
                    sam_embeddings: torch.Tensor | None = None, prefix: PrefixCache | None = None, keep_prefix=None,
                    share_prefix: bool = True) -> list[Generation]:
    """Greedy decoding of a left-padded batch; the arguments are ``AnyRefModel.generate``'s."""
    max_new_tokens = max_new_tokens or model.config.max_new_tokens
    lm = model.llava.model.language_model
    ids = model.ids
    prompt_embeds = model.input_embeddings(batch, grids, sam_embeddings)
    batch_size, prompt_length = batch.attention_mask.shape
    with LastLayerAttentionTap(model.language_model) as tap:
        run = prefill(model, batch.input_ids, batch.attention_mask, prompt_embeds, prompt_length + max_new_tokens,
                      prefix, keep_prefix, share_prefix)
        prefix, cache, attention, positions = run.prefix, run.cache, run.attention, run.positions
        step_hidden = run.hidden[:, -1]
        answer_hidden: list[torch.Tensor] = []  # B x H per generated position (prompt_length + i)
        tokens = [[] for _ in range(batch_size)]
        emitted: list[Emission] = []
        done = torch.zeros(batch_size, dtype=torch.bool, device=attention.device)
        position = positions[:, -1]
        cache_kwarg = cache_argument(lm, cache)
        for _ in range(max_new_tokens):
            next_ids = model.llava.lm_head(step_hidden).argmax(-1)
            next_ids = torch.where(done, torch.full_like(next_ids, ids.pad), next_ids)
            emitting = (next_ids == ids.obj) & ~done
            if emitting.any():
                rows = emitting.nonzero(as_tuple=True)[0]
                # refocusing needs this step's query (the tap) and how far the cache reaches now; it runs
                # once for all <obj> of the answers after decoding, since no <obj> state feeds back
                emitted.append(Emission(rows, step_hidden[rows], tap.queries[rows, -1], tap.cos[rows, -1],
                                        tap.sin[rows, -1], attention.shape[1]))
            for row in range(batch_size):
                if not done[row] and next_ids[row] != ids.eos:
                    tokens[row].append(int(next_ids[row]))
            if stop_at_eos:
                done |= next_ids == ids.eos
            if done.all():
                break
            attention = torch.cat([attention, attention.new_ones((batch_size, 1))], dim=1)
            position = position + 1
            step_hidden = lm(inputs_embeds=model.llava.get_input_embeddings()(next_ids[:, None]),
                             attention_mask=attention, position_ids=position[:, None],
                             use_cache=True, **cache_kwarg).last_hidden_state[:, -1]
            answer_hidden.append(step_hidden)
    states = [[] for _ in range(batch_size)]
    if emitted:
        final = (emitted_obj_states(model, emitted, cache, attention, answer_hidden, prompt_length) if refocus_obj
                 else torch.cat([e.states for e in emitted]))
        for row, state in zip(torch.cat([e.rows for e in emitted]).tolist(), final):
            states[row].append(state)
    hidden_size = step_hidden.shape[-1]
    image_states = [None] * batch_size
    if model.image_reread is not None:  # the image's second read, after each row's answer
        image_states = reread_image_states(model, batch, prompt_embeds, tokens, prefix, share_prefix)
    elif model.obj_locator is not None:  # the prompt's last-layer states in the (reordered) row layout
        image_states = model.image_token_states(run.input_ids, run.full_hidden())
    return [Generation(tokens[row],
                       torch.stack(states[row]) if states[row] else step_hidden.new_zeros((0, hidden_size)),
                       model.decode_text(tokens[row]), image_states[row])
            for row in range(batch_size)]


def prefill(model: AnyRefModel, input_ids: torch.Tensor, attention: torch.Tensor, embeds: torch.Tensor,
            capacity: int, prefix: PrefixCache | None, keep_prefix, share_prefix: bool) -> Prefill:
    """A left-padded batch (ids and attention B x L, embeds B x L x H) through the LLM into a fresh cache for
    ``capacity`` tokens; the tokens every row starts with (up to the image's end) run once as a PrefixCache,
    ``prefix`` when its ids match (``keep_prefix`` is called with a newly computed one)."""
    lm = model.llava.model.language_model
    shared = 0
    if share_prefix:
        wrap_ids = model.builder.image_wrap_ids
        image_ids = (model.ids.image,) + (() if wrap_ids is None else wrap_ids)
        shared, order = split_prefix(input_ids, attention, embeds, image_ids)
    cache = preallocated_cache(lm.config.num_hidden_layers, capacity)
    if shared:
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        attention = attention.gather(1, order)
        input_ids = input_ids.gather(1, order)
        ids = tuple(input_ids[0, :shared].tolist())
        if prefix is None or prefix.ids != ids:
            prefix = PrefixCache.run(lm, ids, embeds[:1, :shared])
            if keep_prefix is not None:
                keep_prefix(prefix)
        cache = prefix.expanded(len(input_ids), capacity)
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    hidden = lm(inputs_embeds=embeds[:, shared:], attention_mask=attention, position_ids=positions[:, shared:],
                use_cache=True, **cache_argument(lm, cache)).last_hidden_state  # B x (L - shared) x H
    return Prefill(input_ids, attention, positions, cache, hidden, shared, prefix if shared else None)


def reread_image_states(model: AnyRefModel, batch: Batch, prompt_embeds: torch.Tensor, tokens: list[list[int]],
                        prefix: PrefixCache | None, share_prefix: bool) -> torch.Tensor:
    """``image_reread``: each row's prompt (B x L ids, B x L x H embeds), its generated answer and eos, then the
    image's second read, through the LLM as training saw them (the shared prefix reused) -> the image tokens'
    states, B x T x H."""
    ids = model.ids
    block = torch.tensor(model.builder.image_block(), device=batch.input_ids.device)
    rows_ids, rows_embeds = [], []
    for row, answer in enumerate(tokens):
        keep = batch.attention_mask[row].bool()
        prompt_ids, prompt_row = batch.input_ids[row][keep], prompt_embeds[row][keep]
        first = prompt_row[prompt_ids == ids.image]  # T x H: the first read's inputs
        answer_ids = torch.tensor(answer + [ids.eos], dtype=block.dtype, device=block.device)
        tail = torch.cat([answer_ids, block])
        tail_embeds = model.llava.get_input_embeddings()(tail.masked_fill(tail == ids.image, ids.pad))
        tail_embeds = tail_embeds.masked_scatter((tail == ids.image)[:, None].expand_as(tail_embeds),
                                                 model.image_reread.second_copy(first).to(tail_embeds.dtype))
        rows_ids.append(torch.cat([prompt_ids, tail]))
        rows_embeds.append(torch.cat([prompt_row, tail_embeds]))
    length = max(len(row) for row in rows_ids)
    input_ids = torch.stack([F.pad(row, (length - len(row), 0), value=ids.pad) for row in rows_ids])
    attention = torch.stack([F.pad(torch.ones_like(row), (length - len(row), 0)) for row in rows_ids])
    embeds = torch.stack([F.pad(row, (0, 0, length - len(row), 0)) for row in rows_embeds])
    run = prefill(model, input_ids, attention, embeds, length, prefix, None, share_prefix)
    return model.image_token_states(run.input_ids, run.full_hidden())


def emitted_obj_states(model: AnyRefModel, emitted: list[Emission], cache, attention: torch.Tensor,
                       answer_hidden: list[torch.Tensor], prompt_length: int) -> torch.Tensor:
    """Refocused states of every emitted ``<obj>`` (E x H, in emission order), in one batched computation:
    each one's attention row over the keys the cache held when it was emitted (rotary keys from the cache)."""
    rows = torch.cat([e.rows for e in emitted])
    keys = cache.layers[-1].keys[rows]  # E x KVH x K x D, K = every position of the finished decode
    span = torch.arange(keys.shape[2], device=keys.device)
    reach = torch.cat([torch.full_like(e.rows, e.reach) for e in emitted])[:, None]  # keys visible then
    key_mask = attention[rows].bool() & (span[None] < reach)  # attention: B x K, the final decode's
    weights = attention_rows(model.language_model.layers[-1].self_attn, torch.cat([e.query for e in emitted]),
                             torch.cat([e.cos for e in emitted]), torch.cat([e.sin for e in emitted]), keys,
                             key_mask)
    # key positions prompt_length .. reach-1 are the answer tokens generated before each <obj>
    answer = weights[:, prompt_length:]
    answer_mask = (span[None, prompt_length:] < reach).expand(len(rows), -1)
    states = torch.cat([e.states for e in emitted])
    if not answer_hidden:  # every <obj> came first in its answer: nothing to refocus on
        return states
    history = torch.stack(answer_hidden, dim=1)[rows]
    return refocus(states, history, answer, answer_mask, model.refocus_lambda)
