"""What a group head reads, computed once by a frozen model: the inputs ``anyref fit-group-head`` trains on.

A sample's :class:`HeadInputs` are each candidate's [last-layer state, mask token] and each prompt position's
[last-layer state, input embedding], kept in float16, and each candidate's geometry against the prompt's
reference mask (``AnyRefModel.prompt_head_inputs``). A SynthRef training
stream is cached by several processes of one thread each (:func:`cache_stream_inputs`): on 2 cores two such
processes give 1.3x the samples per second of one process running two threads, as the tiny model's matrices are
too small to use both cores well. Sample ``i`` is always the stream's ``i``-th, so the cache does not depend on the
number of processes.
"""
from __future__ import annotations

import multiprocessing
import queue
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from anyref.batching import collate, prepare
from anyref.synthref import SynthRef

__all__ = ["HeadInputs", "cache_head_inputs", "cache_stream_inputs", "GROUPS_ONLY", "TEXT_SELECT_ONLY"]

GROUPS_ONLY = {"group": 1.0}  # the stream's task weights: group samples only
TEXT_SELECT_ONLY = {"text_select": 1.0}  # text and no-target expressions asked as groups of at most one


@dataclass
class HeadInputs:
    """One group sample as its head reads it: candidates C x 2H and prompt P x 2H (float16), selected C bool,
    geometry C x GEOMETRY_INPUTS (float32, ``anyref.group_heads.candidate_geometry``)."""

    candidates: torch.Tensor
    prompt: torch.Tensor
    selected: torch.Tensor
    geometry: torch.Tensor


@torch.no_grad()
def cache_head_inputs(model, samples, count: int, chunk: int = 16, desc: str = "cache", progress: bool = True,
                      on_chunk: Optional[Callable[[int], None]] = None) -> list[HeadInputs]:
    """The head inputs of the first ``count`` of ``samples`` (an iterable of "select" samples), ``chunk`` per
    forward pass of the (frozen) model; ``on_chunk(n)`` is told each chunk's size."""
    out: list[HeadInputs] = []
    samples = iter(samples)
    with tqdm(total=count, desc=desc, unit="sample", disable=not progress) as bar:
        while len(out) < count:
            part = list(islice(samples, min(chunk, count - len(out))))
            if not part:
                raise ValueError(f"the samples ran out after {len(out)} of {count}")
            batch = collate([prepare(s, model.builder) for s in part], model.ids.pad)
            hidden, embeds = model.select_states(batch)
            candidates, candidate_mask, prompt, prompt_mask, geometry = model.prompt_head_inputs(hidden, embeds, batch)
            for row, sample in enumerate(part):
                out.append(HeadInputs(candidates[row][candidate_mask[row]].to(torch.float16),
                                      prompt[row][prompt_mask[row]].to(torch.float16),
                                      torch.as_tensor(sample.selected, dtype=torch.bool),
                                      geometry[row][candidate_mask[row]].float()))
            bar.update(len(part))
            if on_chunk is not None:
                on_chunk(len(part))
    return out


def _pack(items: list[HeadInputs]) -> dict[str, torch.Tensor]:
    """Few large tensors instead of many small ones (cheap to save and load)."""
    return {"candidates": torch.cat([i.candidates for i in items]), "prompt": torch.cat([i.prompt for i in items]),
            "selected": torch.cat([i.selected for i in items]), "geometry": torch.cat([i.geometry for i in items]),
            "candidate_counts": torch.tensor([len(i.candidates) for i in items]),
            "prompt_counts": torch.tensor([len(i.prompt) for i in items])}


def _unpack(packed: dict[str, torch.Tensor]) -> list[HeadInputs]:
    counts = packed["candidate_counts"].tolist()
    return [HeadInputs(c, p, s, g) for c, p, s, g in zip(packed["candidates"].split(counts),
                                                           packed["prompt"].split(packed["prompt_counts"].tolist()),
                                                           packed["selected"].split(counts),
                                                           packed["geometry"].split(counts))]


def _stream_worker(model_name: str, seed: int, task_weights: dict, start: int, stop: int, chunk: int, path: str,
                   done) -> None:
    torch.set_num_threads(1)
    from anyref import AnyRef

    model = AnyRef.from_pretrained(model_name).eval()
    world = SynthRef.for_model(model.config)
    samples = (world.sample_at(seed, index, task_weights) for index in range(start, stop))
    torch.save(_pack(cache_head_inputs(model, samples, stop - start, chunk, progress=False, on_chunk=done.put)),
               path)


def cache_stream_inputs(model_name: str, seed: int, count: int, workers: int = 2, chunk: int = 16,
                        progress: bool = True, task_weights: dict | None = None) -> list[HeadInputs]:
    """The head inputs of samples 0 .. count-1 of SynthRef's training stream ``seed`` with ``task_weights``
    ("select" tasks only; None: GROUPS_ONLY) under the model ``model_name`` (a shipped name or directory), in
    stream order, computed by ``workers`` processes of one thread each, each a contiguous share of the samples."""
    if count < 1 or workers < 1:
        raise ValueError(f"need at least one sample and one worker, got {count} and {workers}")
    context = multiprocessing.get_context("spawn")  # a forked copy of a process running torch threads can hang
    done = context.Queue()
    bounds = [count * w // workers for w in range(workers + 1)]
    with tempfile.TemporaryDirectory(prefix="anyref-head-cache-") as tmp:
        paths = [str(Path(tmp) / f"part-{w}.pt") for w in range(workers)]
        processes = [context.Process(target=_stream_worker, daemon=True,
                                     args=(model_name, seed, task_weights or GROUPS_ONLY, bounds[w], bounds[w + 1],
                                           chunk, paths[w], done))
                     for w in range(workers)]
        for process in processes:
            process.start()
        with tqdm(total=count, desc="cache train", unit="sample", disable=not progress) as bar:
            while any(p.is_alive() for p in processes) or not done.empty():
                try:
                    bar.update(done.get(timeout=1.0))
                except queue.Empty:
                    pass
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"a caching process failed (exit codes {failed}); its error is printed above")
        return [item for path in paths for item in _unpack(torch.load(path, weights_only=True))]
