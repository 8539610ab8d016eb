"""What a group head reads, computed once by a frozen model: the inputs ``anyref fit-group-head`` trains on.

A sample's :class:`HeadInputs` are each candidate's [last-layer state, mask token] and each prompt position's
[last-layer state, input embedding], kept in float16, and each candidate's geometry against the prompt's
reference mask (``AnyRefModel.prompt_head_inputs``). A SynthRef training
stream is cached by several processes of one thread each (:func:`cache_stream_inputs`): on 2 cores two such
processes give 1.3x the samples per second of one process running two threads, as the tiny model's matrices are
too small to use both cores well. Sample ``i`` is always the stream's ``i``-th, so the cache does not depend on the
number of processes.

The text check head (``AnyRefConfig.text_check_head``) can also be fitted on the model's own answers
(:func:`answer_check_samples`, ``inputs="answers"`` in :func:`cache_stream_inputs`): each mask the model answers a
SynthRef text or no-target prompt with becomes a group of one candidate, labelled by whether it is the target. These
are the masks the check judges - drawn, not annotated, and wrong where the model errs - where text_select samples
show annotated masks of every object at once.

The text rank head (``AnyRefConfig.text_rank_head``) is fitted on the candidates it ranks (:func:`peak_rank_samples`,
``inputs="peaks"``): the masks the model draws at the peaks of its answer's location map, a group of at most one
labelled by IoU with the target.
"""
from __future__ import annotations

import multiprocessing
import queue
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from anyref.batching import collate, prepare
from anyref.samples import ReferringSample
from anyref.synthref import SynthRef
from eval.runners import union_mask

__all__ = ["HeadInputs", "cache_head_inputs", "cache_stream_inputs", "answer_check_samples", "cache_answer_inputs",
           "peak_rank_samples", "cache_peak_inputs",
           "GROUPS_ONLY", "TEXT_SELECT_ONLY", "ANSWERED_PROMPTS"]

GROUPS_ONLY = {"group": 1.0}  # the stream's task weights: group samples only
TEXT_SELECT_ONLY = {"text_select": 1.0}  # text and no-target expressions asked as groups of at most one
ANSWERED_PROMPTS = {"text": 1.0, "no_target": 1.0}  # the prompts whose answers the text check judges, half each


@dataclass
class HeadInputs:
    """One group sample as its head reads it: candidates C x 2H and prompt P x 2H (float16), selected C bool,
    geometry C x GEOMETRY_INPUTS (float32, ``anyref.group_heads.candidate_geometry``), and, when cached with
    ``crops=True`` (for a head that reads pixels), the candidates' crops C x CROP_CHANNELS x CROP_SIDE x CROP_SIDE
    (float16, ``AnyRefModel.candidate_crops``), else None."""

    candidates: torch.Tensor
    prompt: torch.Tensor
    selected: torch.Tensor
    geometry: torch.Tensor
    crops: torch.Tensor | None = None


@torch.no_grad()
def cache_head_inputs(model, samples, count: int, chunk: int = 16, desc: str = "cache", progress: bool = True,
                      on_chunk: Optional[Callable[[int], None]] = None, crops: bool = False) -> list[HeadInputs]:
    """The head inputs of the first ``count`` of ``samples`` (an iterable of "select" samples), ``chunk`` per
    forward pass of the (frozen) model; ``on_chunk(n)`` is told each chunk's size; ``crops``: with the candidates'
    crops (2 KB a candidate: only for a head that reads pixels)."""
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
            cut = model.candidate_crops(batch) if crops else None
            for row, sample in enumerate(part):
                out.append(HeadInputs(candidates[row][candidate_mask[row]].to(torch.float16),
                                      prompt[row][prompt_mask[row]].to(torch.float16),
                                      torch.as_tensor(sample.selected, dtype=torch.bool),
                                      geometry[row][candidate_mask[row]].float(),
                                      None if cut is None else cut[row][candidate_mask[row]].to(torch.float16)))
            bar.update(len(part))
            if on_chunk is not None:
                on_chunk(len(part))
    return out


def answer_check_samples(model, prompts: list, min_iou: float = 0.5) -> list[ReferringSample]:
    """The model's own answers to ``prompts`` (SynthRef text and no_target samples), with its text check off, as the
    check judges them (so the answer verifier's check, which comes after it, is off too): one "select" sample per
    non-empty answer mask, that mask its one candidate, selected when its IoU with the prompt's target (the union of
    its masks; empty for a no-target prompt) is at least ``min_iou``. All prompts are answered in one
    ``segment_batch``."""
    before = model.config.check_by_group_head, model.config.verify_by_pixels
    model.set_check_by_group_head(None)
    model.set_verify_by_pixels(None)
    try:
        results = model.segment_batch([p.image for p in prompts], [p.references for p in prompts])
    finally:
        model.set_check_by_group_head(before[0])
        model.set_verify_by_pixels(before[1])
    checks = []
    for prompt, result in zip(prompts, results):
        target = union_mask(prompt.masks, prompt.image.shape[:2])
        for mask in result.masks:
            if mask.any():
                checks.append(ReferringSample(image=prompt.image, references=prompt.references, task="select",
                                              answer=[], candidates=mask[None],
                                              selected=np.array([_target_iou(mask, target) >= min_iou])))
    return checks


def cache_answer_inputs(model, prompts, count: int, chunk: int = 16, desc: str = "cache answers",
                        progress: bool = True, on_chunk: Optional[Callable[[int], None]] = None,
                        crops: bool = False) -> list[HeadInputs]:
    """The head inputs of :func:`answer_check_samples` for the first ``count`` of ``prompts`` (an iterable),
    ``chunk`` prompts at a time; ``on_chunk(n)`` is told each chunk's number of prompts. A prompt answered without
    a mask gives nothing, so there are usually fewer items than prompts. crops: as in :func:`cache_head_inputs`."""
    return _cache_derived(answer_check_samples, model, prompts, count, chunk, desc, progress, on_chunk, crops)


def _target_iou(mask: np.ndarray, target: np.ndarray) -> float:
    union = (mask | target).sum()
    return float((mask & target).sum() / union) if union else 0.0


def peak_rank_samples(model, prompts: list, min_iou: float = 0.5) -> list[ReferringSample]:
    """The candidates the text rank head ranks for ``prompts`` (SynthRef text and no_target samples), as it ranks
    them: one "select" sample per prompt whose answer has an ``<obj>``, its candidates ``AnyRef.location_candidates``,
    each selected when its IoU with the prompt's target (the union of its masks; empty for a no-target prompt) is
    at least ``min_iou``. A prompt without candidates gives nothing. All prompts are answered in one batch
    (``AnyRef.location_candidates_batch``: the same candidates as one at a time, at about 60% of the cost)."""
    out = []
    drawn = model.location_candidates_batch([p.image for p in prompts], [p.references for p in prompts])
    for prompt, candidates in zip(prompts, drawn):
        if not len(candidates):
            continue
        target = union_mask(prompt.masks, prompt.image.shape[:2])
        selected = np.array([target.any() and _target_iou(c, target) >= min_iou for c in candidates])
        out.append(ReferringSample(image=prompt.image, references=prompt.references, task="select", answer=[],
                                   candidates=candidates, selected=selected))
    return out


def cache_peak_inputs(model, prompts, count: int, chunk: int = 16, desc: str = "cache peaks", progress: bool = True,
                      on_chunk: Optional[Callable[[int], None]] = None, crops: bool = False) -> list[HeadInputs]:
    """The head inputs of :func:`peak_rank_samples` for the first ``count`` of ``prompts`` (an iterable), ``chunk``
    prompts at a time; ``on_chunk(n)`` is told each chunk's number of prompts; crops: as in
    :func:`cache_head_inputs`."""
    return _cache_derived(peak_rank_samples, model, prompts, count, chunk, desc, progress, on_chunk, crops)


def _cache_derived(derive, model, prompts, count: int, chunk: int, desc: str, progress: bool,
                   on_chunk: Optional[Callable[[int], None]], crops: bool) -> list[HeadInputs]:
    """The head inputs of the "select" samples ``derive(model, prompts)`` makes of the first ``count`` of
    ``prompts``, ``chunk`` prompts at a time."""
    out: list[HeadInputs] = []
    prompts = iter(prompts)
    with tqdm(total=count, desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, count, chunk):
            part = list(islice(prompts, min(chunk, count - start)))
            if not part:
                raise ValueError(f"the prompts ran out after {start} of {count}")
            derived = derive(model, part)
            if derived:
                out += cache_head_inputs(model, derived, len(derived), chunk, progress=False, crops=crops)
            bar.update(len(part))
            if on_chunk is not None:
                on_chunk(len(part))
    return out


# cache_stream_inputs' kinds of items: the function that caches them, and the stream's task weights by default
INPUT_KINDS = {"select": (cache_head_inputs, GROUPS_ONLY), "answers": (cache_answer_inputs, ANSWERED_PROMPTS),
               "peaks": (cache_peak_inputs, ANSWERED_PROMPTS)}


def _pack(items: list[HeadInputs]) -> dict[str, torch.Tensor]:
    """Few large tensors instead of many small ones (cheap to save and load)."""
    if not items:  # a share of prompts all answered without a mask
        return {}
    return {"candidates": torch.cat([i.candidates for i in items]), "prompt": torch.cat([i.prompt for i in items]),
            "selected": torch.cat([i.selected for i in items]), "geometry": torch.cat([i.geometry for i in items]),
            **({} if items[0].crops is None else {"crops": torch.cat([i.crops for i in items])}),
            "candidate_counts": torch.tensor([len(i.candidates) for i in items]),
            "prompt_counts": torch.tensor([len(i.prompt) for i in items])}


def _unpack(packed: dict[str, torch.Tensor]) -> list[HeadInputs]:
    if not packed:
        return []
    counts = packed["candidate_counts"].tolist()
    crops = packed["crops"].split(counts) if "crops" in packed else [None] * len(counts)
    return [HeadInputs(*parts) for parts in zip(packed["candidates"].split(counts),
                                                 packed["prompt"].split(packed["prompt_counts"].tolist()),
                                                 packed["selected"].split(counts), packed["geometry"].split(counts),
                                                 crops)]


def _stream_worker(model_name: str, seed: int, task_weights: dict, start: int, stop: int, chunk: int, path: str,
                   done, inputs: str, crops: bool) -> None:
    torch.set_num_threads(1)
    from anyref import AnyRef

    model = AnyRef.from_pretrained(model_name).eval()
    world = SynthRef.for_model(model.config)
    samples = (world.sample_at(seed, index, task_weights) for index in range(start, stop))
    cache = INPUT_KINDS[inputs][0]
    torch.save(_pack(cache(model, samples, stop - start, chunk, progress=False, on_chunk=done.put, crops=crops)),
               path)


def cache_stream_inputs(model_name: str, seed: int, count: int, workers: int = 2, chunk: int = 16,
                        progress: bool = True, task_weights: dict | None = None,
                        inputs: str = "select", crops: bool = False) -> list[HeadInputs]:
    """The head inputs of samples 0 .. count-1 of SynthRef's training stream ``seed`` with ``task_weights``
    (None: the kind's own, INPUT_KINDS) under the model ``model_name`` (a shipped name or directory), in stream
    order, computed by ``workers`` processes of one thread each, each a contiguous share of the samples. inputs:
    "select" (the samples are "select" samples), "answers" (prompts, the items their answers',
    :func:`cache_answer_inputs`) or "peaks" (prompts, the items their location candidates',
    :func:`cache_peak_inputs`); crops: as in :func:`cache_head_inputs`."""
    if count < 1 or workers < 1:
        raise ValueError(f"need at least one sample and one worker, got {count} and {workers}")
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {sorted(INPUT_KINDS)}, got {inputs!r}")
    context = multiprocessing.get_context("spawn")  # a forked copy of a process running torch threads can hang
    done = context.Queue()
    bounds = [count * w // workers for w in range(workers + 1)]
    with tempfile.TemporaryDirectory(prefix="anyref-head-cache-") as tmp:
        paths = [str(Path(tmp) / f"part-{w}.pt") for w in range(workers)]
        processes = [context.Process(target=_stream_worker, daemon=True,
                                     args=(model_name, seed,
                                           task_weights or INPUT_KINDS[inputs][1],
                                           bounds[w], bounds[w + 1], chunk, paths[w], done, inputs, crops))
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
