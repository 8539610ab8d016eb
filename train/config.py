"""Training configuration: one JSON file (presets in train/presets/), validated once, never changed afterwards."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainConfig", "load_config", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).parent / "presets"
TRAINABLE_POLICIES = ("paper", "all", "heads")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule: ``steps`` optimiser steps with this trainable policy and task mixture.

    trainable: "paper" (LoRA, mask decoder, gamma, audio projection, new-token embeddings and lm_head; encoders
    frozen), "all" (every parameter: for tiny models that start from random weights), "heads" (mask decoder,
    gamma and projections only).
    """

    name: str
    steps: int
    trainable: str = "paper"
    mixture: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"stage {self.name!r}: steps must be >= 1")
        if self.trainable not in TRAINABLE_POLICIES:
            raise ValueError(f"stage {self.name!r}: trainable must be one of {TRAINABLE_POLICIES}")


@dataclass(frozen=True)
class TrainConfig:
    """model: {"tiny": {sizes...}} to build a tiny model, or {"init_from": DIR} to start from an AnyRef directory.
    mixture: source name -> {"ratio": r, ...source options}; sources: "synthref" (options: tasks weights,
    image_size, seed). stages: the schedule; the learning-rate schedule spans all stages.
    """

    model: dict
    mixture: dict
    stages: tuple[Stage, ...]
    lora: dict | None = None           # {"r": 8, "alpha": 16, "dropout": 0.05} or None for no LoRA
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.0
    micro_batch: int = 6
    grad_accumulation: int = 8
    grad_clip: float = 1.0
    precision: str = "auto"            # auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU
    deepspeed_config: str = "deepspeed_zero2.json"
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    refocus_lambda: float | None = None  # override the model's lambda (refocusing ablations)
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("config needs at least one stage")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.micro_batch < 1 or self.grad_accumulation < 1:
            raise ValueError("micro_batch and grad_accumulation must be >= 1")
        if ("tiny" in self.model) == ("init_from" in self.model):
            raise ValueError('model needs exactly one of "tiny" (build) or "init_from" (an AnyRef directory)')
        if not self.mixture or any(float(v.get("ratio", 0)) < 0 for v in self.mixture.values()):
            raise ValueError("mixture needs at least one source with a ratio >= 0")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> Stage:
        """The stage that optimiser step ``step`` (0-based) belongs to."""
        for stage in self.stages:
            if step < stage.steps:
                return stage
            step -= stage.steps
        return self.stages[-1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "TrainConfig":
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"description"}
        if unknown:
            raise ValueError(f"unknown training config fields {sorted(unknown)}")
        data.pop("description", None)
        data["stages"] = tuple(Stage(**s) for s in data["stages"])
        return cls(**data)


def load_config(preset: str | None = None, path: str | Path | None = None, **overrides) -> TrainConfig:
    """A config from a preset name (train/presets/NAME.json) or a JSON file path, with keyword overrides."""
    if (preset is None) == (path is None):
        raise ValueError("give exactly one of a preset name or a config file")
    if preset is not None:
        path = PRESETS_DIR / f"{preset}.json"
        if not path.is_file():
            names = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
            raise ValueError(f"unknown preset {preset!r}; presets: {names}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    return TrainConfig.from_dict(data, **overrides)
