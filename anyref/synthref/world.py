"""SynthRef: a procedural referring world, deterministic from a seed, to train and evaluate a tiny AnyRef on CPU.

    from anyref.synthref import SynthRef, SynthRefConfig
    world = SynthRef(SynthRefConfig(image_size=128))
    train = world.stream(seed=0)                 # endless; next(train) -> ReferringSample
    val = world.split("val", "text", n=200)      # fixed, never drawn by any training stream

Random streams: every sample has its own generator, ``SeedSequence(config.seed, spawn_key=(purpose, ...))`` with
purpose 0 for training streams (spawn_key (0, stream seed, index)), 1 for "val" and 2 for "test" (spawn_key
(purpose, task index, index)), so streams and splits never share a generator, and ``split(name, task, n)`` is a
prefix of ``split(name, task, n + k)``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from anyref.samples import ReferringSample
from anyref.synthref.config import SynthRefConfig
from anyref.synthref.tasks import TASK_BUILDERS
from anyref.synthref.vocabulary import vocabulary_words

__all__ = ["SYNTHREF_TASKS", "SynthRefConfig", "SynthRef", "drawn_tasks"]

# appended tasks keep the splits of the earlier ones (a split's generators are keyed by the task's index here)
SYNTHREF_TASKS = ("text", "box", "example", "example_masked", "audio1", "audio2", "no_target", "group",
                  "mask_caption", "verify", "text_select")
assert set(SYNTHREF_TASKS) == set(TASK_BUILDERS)


def drawn_tasks(task_weights: dict[str, float] | None) -> dict[str, float]:
    """task -> weight of the tasks a stream with ``task_weights`` draws (weight > 0), in SYNTHREF_TASKS order;
    None: every task, equally often."""
    weights = dict.fromkeys(SYNTHREF_TASKS, 1.0) if task_weights is None else task_weights
    return {task: weights[task] for task in SYNTHREF_TASKS if weights.get(task, 0) > 0}

_PURPOSE = {"train": 0, "val": 1, "test": 2}


class SynthRef:
    """The world. Holds only its (immutable) config; every method is a pure function of its arguments."""

    @classmethod
    def for_model(cls, model_config, seed: int = 0) -> "SynthRef":
        """The world (seed ``seed``) at the image size of the model an ``AnyRefConfig`` describes (its vision
        tower's input side), as the SynthRef diagnostics and the group head's fit draw it."""
        return cls(SynthRefConfig(image_size=model_config.llava["vision_config"]["image_size"], seed=seed))

    def __init__(self, config: SynthRefConfig = SynthRefConfig()) -> None:
        if not isinstance(config, SynthRefConfig):
            raise TypeError(f"SynthRef takes a SynthRefConfig, got {type(config).__name__}")
        self.config = config

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=key))

    @staticmethod
    def _check_task(task: str) -> None:
        if task not in SYNTHREF_TASKS:
            raise ValueError(f"unknown SynthRef task {task!r}; choose one of {SYNTHREF_TASKS}")

    def sample(self, task: str, rng: np.random.Generator) -> ReferringSample:
        """One sample of ``task`` drawn with ``rng`` (the same generator state gives the same arrays)."""
        self._check_task(task)
        return TASK_BUILDERS[task](self.config, rng)

    def stream(self, seed: int, task_weights: dict[str, float] | None = None) -> Iterator[ReferringSample]:
        """Endless training samples, deterministic in ``seed`` (>= 0). task_weights: relative frequency of each task
        (missing tasks are never drawn); default: all tasks equally often."""
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"stream seed must be an int >= 0, got {seed!r}")
        weights = dict.fromkeys(SYNTHREF_TASKS, 1.0) if task_weights is None else dict(task_weights)
        for task, weight in weights.items():
            self._check_task(task)
            if not weight >= 0:
                raise ValueError(f"task weight for {task!r} must be >= 0, got {weight!r}")
        drawn = drawn_tasks(weights)
        if not drawn:
            raise ValueError("task_weights gives no task a positive weight")
        tasks = list(drawn)
        probs = np.array(list(drawn.values()), dtype=np.float64)
        probs /= probs.sum()
        index = 0
        while True:
            yield self._draw(tasks, probs, seed, index)
            index += 1

    def sample_at(self, seed: int, index: int, task_weights: dict[str, float] | None = None) -> ReferringSample:
        """The ``index``-th sample of ``stream(seed, task_weights)``, without drawing the ones before it (so a
        resumed or sharded training run can start anywhere)."""
        drawn = drawn_tasks(task_weights)
        probs = np.array(list(drawn.values()), dtype=np.float64)
        return self._draw(list(drawn), probs / probs.sum(), seed, index)

    def _draw(self, tasks: list[str], probs: np.ndarray, seed: int, index: int) -> ReferringSample:
        rng = self._rng(_PURPOSE["train"], int(seed), int(index))
        return self.sample(tasks[int(rng.choice(len(tasks), p=probs))], rng)

    def split(self, name: str, task: str, n: int = 200) -> list[ReferringSample]:
        """A fixed evaluation split: ``n`` samples of ``task`` for ``name`` in {"val", "test"}."""
        if name not in ("val", "test"):
            raise ValueError(f"split name must be 'val' or 'test', got {name!r}")
        self._check_task(task)
        if n < 0:
            raise ValueError(f"split size must be >= 0, got {n}")
        index = SYNTHREF_TASKS.index(task)
        return [self.sample(task, self._rng(_PURPOSE[name], index, i)) for i in range(n)]

    def vocabulary(self) -> list[str]:
        """Every word and punctuation mark any prompt text or answer can use (for training a small tokenizer)."""
        return vocabulary_words()
