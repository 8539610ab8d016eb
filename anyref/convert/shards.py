"""Released checkpoints read one shard at a time: sharded pickles (``pytorch_model-0000k-of-0000n.bin`` plus
``pytorch_model.bin.index.json``), a single ``pytorch_model.bin``, or the safetensors equivalents.

Pickles are read with ``weights_only=True`` (no pickled code runs). A shard's keys must be exactly those the
index assigns to it, so a truncated download or a mixed-up folder fails before anything is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

from encoders.checkpoints import CheckpointError, load_pth, read_weight_map

__all__ = ["shard_files", "read_shard", "iter_shards"]

INDEXES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
SINGLE_FILES = ("pytorch_model.bin", "model.safetensors")


def _index(directory: Path) -> tuple[Path, dict[str, str]] | None:
    for name in INDEXES:
        path = directory / name
        if path.is_file():
            return path, read_weight_map(path)
    return None


def shard_files(directory: str | Path) -> list[tuple[Path, set[str] | None]]:
    """The weight files of a checkpoint directory, in index order, each with the keys the index puts in it
    (None for an unsharded checkpoint). Raises if the index names a file that is not there."""
    directory = Path(directory)
    found = _index(directory)
    if found is None:
        for name in SINGLE_FILES:
            if (directory / name).is_file():
                return [(directory / name, None)]
        raise FileNotFoundError(f"{directory} has no weights: expected one of {INDEXES + SINGLE_FILES}")
    index_path, weight_map = found
    files: dict[str, set[str]] = {}
    for key, name in weight_map.items():
        files.setdefault(name, set()).add(key)
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path.name} names shards that are not in {directory}: {sorted(missing)} "
                                "(incomplete download?)")
    return [(directory / name, keys) for name, keys in files.items()]


def read_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one weight file (pickles with ``weights_only=True``)."""
    path = Path(path)
    if path.name.endswith(".safetensors"):
        try:
            return load_file(path)
        except Exception as error:
            raise CheckpointError(f"could not read weights file {path}: {error}") from error
    return load_pth(path)


def iter_shards(directory: str | Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """(file, its tensors) for each shard in turn. The caller should drop each dict before asking for the next:
    then at most one shard is held here at a time."""
    for path, expected in shard_files(directory):
        state = read_shard(path)
        if expected is not None and set(state) != expected:
            missing = sorted(expected - set(state))
            extra = sorted(set(state) - expected)
            raise CheckpointError(f"{path.name} does not hold the keys its index lists: missing {missing[:8]}, "
                                  f"not in the index {extra[:8]} (corrupt or mismatched shard?)")
        yield path, state
        del state
