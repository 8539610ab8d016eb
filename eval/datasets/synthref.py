"""SynthRef's fixed evaluation splits as a reader, like the real datasets' (``anyref.synthref``, no files)."""
from __future__ import annotations

from typing import Iterator

from anyref.samples import ReferringSample
from anyref.synthref import SYNTHREF_TASKS, SynthRef, SynthRefConfig

__all__ = ["SynthRefReader"]


class SynthRefReader:
    """The first ``n`` samples of SynthRef's fixed ``split`` ("val" or "test") for one task; drawn on iteration
    (``split(name, task, n)`` is a prefix of any longer split, so a smaller n scores the same first samples)."""

    def __init__(self, task: str, split: str = "test", n: int = 200, config: SynthRefConfig = SynthRefConfig()) -> None:
        if task not in SYNTHREF_TASKS:
            raise ValueError(f"unknown SynthRef task {task!r}; choose from {SYNTHREF_TASKS}")
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r} for SynthRef; available: test, val")
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.world, self.task, self.split, self.n = SynthRef(config), task, split, n
        self.dataset = "synthref"

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[ReferringSample]:
        return iter(self.world.split(self.split, self.task, self.n))
