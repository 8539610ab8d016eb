"""Checkpoint reading that never runs pickled code and never loads half a model silently."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = ["load_pth", "load_state_dict_strict", "CheckpointError", "atomic_file", "atomic_write_dir",
           "share_like_new_files", "write_text_atomically", "read_json_object", "read_weight_map"]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the keys."""


def load_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.bin`` state dict, read with ``weights_only=True`` (no pickled code runs).

    Accepts a bare state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"could not read {path} as a weights-only PyTorch checkpoint ({type(error).__name__}: {error}); "
            "it may be corrupt, truncated, or contain pickled objects other than tensors"
        ) from error
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def read_json_object(path: str | Path) -> dict:
    """The JSON object (field -> value) a checkpoint file holds; CheckpointError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"could not read {path} as JSON ({error}); the file is corrupt or truncated: "
                              "restore it, or save the checkpoint again") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object (field -> value); restore "
                              "the file, or save the checkpoint again")
    return data


def read_weight_map(path: str | Path) -> dict[str, str]:
    """tensor name -> shard file name, from a sharded checkpoint's index (``*.index.json``)."""
    weight_map = read_json_object(path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f'{path} is not a weights index: it lacks a "weight_map" of tensor name -> shard file; '
                              "restore the index, or save the checkpoint again")
    return weight_map


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with an error that names every offending key.

    what: the checkpoint's name in messages, e.g. "SAM checkpoint sam_vit_h_4b8939.pth".
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)})"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_short(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def share_like_new_files(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions a plainly created file or folder
    would get under the current umask: mkstemp and mkdtemp, which atomic writes go through, make them private."""
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_file(target: str | Path):
    """Context manager: yields a temporary path beside ``target`` to write the file to, renamed over ``target`` on
    success (with a plainly created file's permissions); an exception deletes it and leaves any old ``target``. A
    reader, or a run killed meanwhile, sees the old file or the new one, never half of one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    staged = Path(name)
    try:
        yield staged
        share_like_new_files(staged)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """``text`` written to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as staged:
        staged.write_text(text, encoding="utf-8")


class atomic_write_dir:
    """Context manager: write into a temporary sibling directory, then rename it over ``target`` on success.

    Nothing half-written is ever visible at ``target``; an exception leaves any previous ``target`` intact.
    """

    def __init__(self, target: str | Path):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        share_like_new_files(self.tmp)
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
