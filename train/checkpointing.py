"""Training checkpoints: DeepSpeed's engine state plus each rank's RNG, published atomically.

Layout: OUT/checkpoints/step-000500/ (DeepSpeed files + rng_rank{r}.pt) and OUT/checkpoints/latest (the tag).
The two latest are kept, and every ``keep_tags`` one (the trainer's stage ends, which later runs can branch from).
A checkpoint is written into a staging directory and renamed into place only when every rank has finished, so a
run killed mid-save leaves the previous checkpoint as ``latest``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from encoders.checkpoints import write_text_atomically

__all__ = ["save_checkpoint", "load_latest", "check_pickled_globals", "latest_tag", "checkpoint_tag", "truncate_logs"]


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def latest_tag(root: Path) -> str | None:
    marker = root / "latest"
    return marker.read_text().strip() if marker.is_file() else None


def checkpoint_tag(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(engine, root: Path, step: int, keep: int = 2, keep_tags: frozenset[str] = frozenset()) -> str:
    """Save the engine and RNG states as tag ``step-{step:06d}``; returns the tag. Older checkpoints beyond the
    ``keep`` latest are deleted, except those named in ``keep_tags``."""
    tag = checkpoint_tag(step)
    staging = root / f".staging-{tag}"
    if _rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(staging), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save(_rng_state(), staging / tag / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        final = root / tag
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / tag, final)
        shutil.rmtree(staging, ignore_errors=True)
        write_text_atomically(root / "latest", tag)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            if old.name not in keep_tags:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return tag


# Everything a ZeRO-2 checkpoint pickles besides tensors and builtins (deepspeed/runtime/zero/stage_1_and_2.py
# state_dict: the loss scaler, ZeRO's stage enum and its parameter-slice records). Nothing else may be imported.
DEEPSPEED_PICKLED_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address"})


def check_pickled_globals(folder: Path) -> None:
    """Refuse a checkpoint folder whose ``.pt`` files would import anything beyond DeepSpeed's known state when
    unpickled. DeepSpeed loads its files with ``weights_only=False`` (any pickled callable would run); this reads
    only the pickles' opcodes (torch.serialization.get_unsafe_globals_in_checkpoint) and executes nothing."""
    for path in sorted(folder.glob("*.pt")):
        unknown = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - DEEPSPEED_PICKLED_GLOBALS
        if unknown:
            raise ValueError(f"{path} would import {sorted(unknown)} when loaded; a trainer checkpoint holds only "
                             "tensors and DeepSpeed's own state, so it was not loaded. Use a checkpoint this "
                             "trainer wrote, or delete the folder to start over")


def load_latest(engine, root: Path) -> int:
    """Restore the latest checkpoint under ``root`` (engine, scheduler, RNG); returns the step to continue from
    (0 when there is none)."""
    tag = latest_tag(root)
    if tag is None:
        return 0
    saved = len(list((root / tag).glob("rng_rank*.pt")))  # one per rank that saved it
    world = dist.get_world_size() if dist.is_initialized() else 1
    if saved != world:  # sample positions and ZeRO's optimizer partitions both follow the number of ranks
        raise ValueError(f"checkpoint {root / tag} was saved by {saved} rank(s), this run has {world}; resume it "
                         f"with {saved} (deepspeed --num_gpus {saved}, or torchrun --nproc_per_node {saved} on CPU)")
    check_pickled_globals(root / tag)
    path, client = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"could not load checkpoint {root / tag}; delete it to start over")
    _set_rng_state(torch.load(root / tag / f"rng_rank{_rank()}.pt", weights_only=True))
    return int(client["step"])


def _rng_state() -> dict:
    """torch (CPU, and on a GPU the current device's), numpy and python RNG states as tensors and plain values
    (loadable with weights_only=True). On a GPU, LoRA dropout and SAM's box jitter draw from the CUDA generator."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy": (kind, pos, has_gauss, gauss), "python": (version, list(internal), gauss_next)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a checkpoint saved on CPU has none to restore
        torch.cuda.set_rng_state(state["cuda"])
    kind, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def truncate_logs(paths: list[Path], step: int) -> None:
    """Drop the JSONL entries logged after ``step`` (a run killed after its last checkpoint logged steps that the
    resumed run logs again, and maybe half a line), each file rewritten atomically; missing files are left alone."""
    for path in paths:
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line, logged in zip(lines, map(_step_of, lines)) if logged is not None and logged <= step]
        if len(kept) == len(lines):
            continue
        write_text_atomically(path, "".join(kept))


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by the kill, or not an entry
        return None
