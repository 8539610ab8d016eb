"""Training configuration: one JSON file (presets in train/presets/), which may extend another ("extends":
read_config_data), validated once, never changed afterwards."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from train.trainable import POLICIES

__all__ = ["TrainConfig", "load_config", "read_config_data", "preset_path", "preset_lines", "config_changes",
           "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).parent / "presets"
TRAINABLE_POLICIES = tuple(POLICIES)
OBJECTIVES = ("anyref", "synthref_dense")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_PLAIN_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "dict": (dict,)}  # JSON's, by annotation


def _check_field_types(config, where: str) -> None:
    """Refuse a plain field (int, float, str, dict, each maybe None) of a JSON value of another type, naming it:
    "100" for steps or "1e-4" for lr would otherwise fail later, inside DeepSpeed, or train with a wrong value.
    Structured fields (stages, eval_tasks) are checked where they are read."""
    for spec in dataclasses.fields(config):
        kinds = [kind.strip() for kind in str(spec.type).split("|")]
        value = getattr(config, spec.name)
        allowed = tuple(t for kind in kinds for t in _PLAIN_TYPES.get(kind, ()))
        if not allowed or (value is None and "None" in kinds):
            continue
        if isinstance(value, bool) or not isinstance(value, allowed):  # JSON true is not a number here
            hint = "; write the number without quotes" if isinstance(value, str) else ""
            raise ValueError(f"{where}{spec.name} must be {' or '.join(kinds)}, not {value!r} "
                             f"({type(value).__name__}){hint}")


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule: ``steps`` optimiser steps with this trainable policy, objective and task mixture.

    trainable: "paper" (LoRA, mask decoder, gamma, audio projection, new-token embeddings and lm_head; encoders
    frozen), "all" (every parameter: for tiny models that start from random weights), "heads" (mask decoder,
    gamma and projections only), "encoders" (vision tower, SAM image encoder, audio encoder and the warm-up heads),
    "encoders_promptable" (the same plus SAM's mask decoder),
    "mask_projector" (RAS stage 1), "all_but_encoders" (RAS stage 2: everything but the vision, SAM image, audio
    and further mask encoders), "group_head" (a group head other than RAS's, alone). See train/trainable.py.
    objective: "anyref" (the model's loss) or "synthref_dense" (the encoder warm-up of train/objectives.py).
    lr, warmup_steps: this stage's peak learning rate and warmup (default: the config's); each stage warms up
    and then decays on a cosine of its own.
    pointer_weight: weight of the trainer's pointer loss (train/objectives.py) in this stage; 0 for the paper's
    loss alone.
    sam_prompt_weight: weight of SAM's box-prompted mask loss (train/sam_prompts.py): on every object of a scene
    in a synthref_dense stage, on the target masks in an anyref stage; needs a policy that trains the mask decoder.
    refine_weight: weight of the mask loss of one refinement pass (train/objectives.py; AnyRefConfig.
    mask_refinements): SAM's decoder drawing each mask again from its first mask's coverage of the image-token grid;
    an anyref stage of a model with a location map, on a policy that trains the mask decoder.
    box_prior_weight: weight of the mask loss of a one-box ``describe`` answer's first ``<obj>`` drawn from the
    box's coverage of the image-token grid, as inference draws it with ``AnyRefConfig.describe_box_prior``
    (train/objectives.py); the same needs as refine_weight.
    cell_attribute_weight: weight of a loss on what each image token the LLM read holds (the shape, colour and size
    of the objects under it, or background), read by a trainer-only linear head from the token's last-layer state
    (train/objectives.py); SynthRef samples only, an anyref stage on the "all" policy.
    new_layers_lr: the peak learning rate of the parts an "init_from" model is given in this run that start as a
    no-op and so far from trained weights: LLM layers ("add_language_layers", the identity at the start) and the
    image position map ("add_image_positions", zero) (default: the stage's).
    """

    name: str
    steps: int
    trainable: str = "paper"
    objective: str = "anyref"
    mixture: dict = field(default_factory=dict)
    lr: float | None = None
    warmup_steps: int | None = None
    pointer_weight: float = 0.0
    sam_prompt_weight: float = 0.0
    refine_weight: float = 0.0
    box_prior_weight: float = 0.0
    cell_attribute_weight: float = 0.0
    new_layers_lr: float | None = None

    def __post_init__(self) -> None:
        _check_field_types(self, f"stage {self.name!r}: ")
        if self.steps < 1:
            raise ValueError(f"stage {self.name!r}: steps must be >= 1")
        if self.trainable not in TRAINABLE_POLICIES:
            raise ValueError(f"stage {self.name!r}: trainable must be one of {TRAINABLE_POLICIES}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.name!r}: objective must be one of {OBJECTIVES}")
        if self.objective == "synthref_dense" and self.trainable not in ("encoders", "encoders_promptable"):
            raise ValueError(f"stage {self.name!r}: the synthref_dense objective trains the encoders only "
                             '(trainable "encoders", or "encoders_promptable" with SAM\'s decoder)')
        weights = {"pointer_weight": self.pointer_weight, "sam_prompt_weight": self.sam_prompt_weight,
                   "refine_weight": self.refine_weight, "box_prior_weight": self.box_prior_weight,
                   "cell_attribute_weight": self.cell_attribute_weight}
        if any(value < 0 for value in weights.values()):
            raise ValueError(f"stage {self.name!r}: {', '.join(weights)} must be >= 0")
        for name in ("refine_weight", "box_prior_weight"):
            if weights[name] and (self.objective != "anyref" or "mask_decoder" not in POLICIES[self.trainable]):
                raise ValueError(f"stage {self.name!r}: {name} trains SAM's mask decoder on the model's own "
                                 "<obj> prompts: it needs the anyref objective and a policy that trains the mask "
                                 "decoder")
        if self.cell_attribute_weight and (self.objective != "anyref" or "cell_heads" not in POLICIES[self.trainable]):
            raise ValueError(f"stage {self.name!r}: cell_attribute_weight trains the LLM's image tokens through a "
                             "trainer-only head: it needs the anyref objective and a policy that trains that head "
                             '("all")')
        if self.sam_prompt_weight and "mask_decoder" not in POLICIES[self.trainable]:
            raise ValueError(f"stage {self.name!r}: sam_prompt_weight trains SAM's mask decoder, which policy "
                             f"{self.trainable!r} freezes; use one that trains it (e.g. \"encoders_promptable\")")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"stage {self.name!r}: lr must be > 0")
        if self.new_layers_lr is not None and self.new_layers_lr <= 0:
            raise ValueError(f"stage {self.name!r}: new_layers_lr must be > 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"stage {self.name!r}: warmup_steps must be >= 0")


# what a continued ("init_from") model may be given, and what a "tiny" model takes instead
_CONTINUATION_KEYS = {
    "new_group_head": 'replaces the group head of an "init_from" model; a "tiny" model takes group_head_* fields '
                      "in its config_overrides",
    "add_nowhere": 'gives an "init_from" model a nowhere place; a "tiny" model takes "obj_nowhere": true in its '
                   "config_overrides",
    "add_region_geometry": 'gives an "init_from" model a region geometry code; a "tiny" model takes '
                           '"region_geometry": true in its config_overrides',
    "add_image_reread": 'gives an "init_from" model the image read again after the answer; a "tiny" model '
                        'takes "image_reread": "added" or "alone" in its config_overrides',
    "add_image_positions": 'gives an "init_from" model a position map on its image tokens; a "tiny" model takes '
                           '"image_positions": true in its config_overrides',
    "add_language_layers": 'deepens an "init_from" model\'s LLM by N new layers; a "tiny" model takes "text_layers"',
    "box_zoom": 'switches an "init_from" model to box tokens read from each box\'s crop; a "tiny" model takes '
                '"box_zoom": true in its config_overrides',
    "group_by_obj": 'switches an "init_from" model to deciding groups by an <obj>; a "tiny" model takes '
                    '"group_by_obj": true in its config_overrides',
    "group_obj_answer": 'says how an "init_from" model\'s group_by_obj answers ("given" or "generated"); a "tiny" '
                        'model takes "group_obj_answer" in its config_overrides',
}


def source_ratio(options: dict) -> float:
    """A mixture source's sampling ratio (1 when not given)."""
    return float(options.get("ratio", 1.0))


def source_kind(name: str, options: dict) -> str:
    """The source a mixture entry draws from: its "source" option, else its own name."""
    return options.get("source", name) if isinstance(options, dict) else name


def stage_options(mixture: dict, stage_mixture: dict | None) -> dict:
    """source -> the options it is drawn with in a stage: the config's, with the stage's override laid over."""
    return {name: {**options, **(stage_mixture or {}).get(name, {})} for name, options in mixture.items()}


def _check_ratios(mixture: dict, where: str) -> None:
    """Every source an object of options with a finite ratio >= 0, and at least one ratio > 0."""
    if not mixture:
        raise ValueError(f"{where} needs at least one source")
    ratios = []
    for name, options in mixture.items():
        if not isinstance(options, dict):
            raise ValueError(f"{where}: source {name!r} must be an object of options, e.g. {{\"ratio\": 1}}")
        try:
            ratio = source_ratio(options)
        except (TypeError, ValueError):
            ratio = math.nan
        if not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"{where}: source {name!r} has ratio {options.get('ratio')!r}; give a number >= 0")
        ratios.append(ratio)
    if not any(ratios):
        raise ValueError(f"{where} needs at least one source with a ratio > 0")


@dataclass(frozen=True)
class TrainConfig:
    """model: {"tiny": {sizes...}} to build a tiny model, or {"init_from": DIR} to start from an AnyRef directory
    (with "new_group_head": {group_head_* fields of AnyRefConfig}, DIR's model gets a new, untrained group head;
    with "add_nowhere": true, its location map a new, untrained nowhere place: AnyRefConfig.obj_nowhere; with
    "add_region_geometry": true, a new, zero size-and-place code on its box and mask tokens:
    AnyRefConfig.region_geometry; with "add_image_reread": "added" or "alone", the image read again after the
    answer, its weights zero: AnyRefConfig.image_reread; with "add_image_positions": true, a new, zero position map
    on its image tokens: AnyRefConfig.image_positions; with "add_language_layers": N, N new LLM decoder layers
    before its last, each the identity at the start: AnyRefModel.add_language_layers; with "group_by_obj": true,
    its select decides groups by an <obj>: AnyRefConfig.group_by_obj, and "group_obj_answer": "generated" has it
    write its own answer first: AnyRefConfig.group_obj_answer).
    mixture: entry name -> {"ratio": r, ...source options}, the entry's source its name or its "source" option
    (several entries of one source: several datasets); sources: "synthref" (options: tasks weights, image_size,
    world_seed, no_target_answer, group_answer, verify_answer, relational_prob, relational_answer). stages: the
    schedule; each stage has its own warmup and cosine decay (lr, warmup_steps and min_lr_ratio here are the
    defaults of every stage)."""

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
    eval_every: int = 0                # SynthRef val figures every N steps into val.jsonl (0: never)
    eval_n: int = 50                   # val samples per task
    eval_tasks: tuple[str, ...] | None = None  # default: every scored SynthRef task

    def __post_init__(self) -> None:
        _check_field_types(self, "")
        if not self.stages:
            raise ValueError("config needs at least one stage")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.micro_batch < 1 or self.grad_accumulation < 1:
            raise ValueError("micro_batch and grad_accumulation must be >= 1")
        if ("tiny" in self.model) == ("init_from" in self.model):
            raise ValueError('model needs exactly one of "tiny" (build) or "init_from" (an AnyRef directory)')
        for key, what in _CONTINUATION_KEYS.items():
            if key in self.model and "init_from" not in self.model:
                raise ValueError(f'"{key}" {what}')
        if "group_obj_answer" in self.model and not self.model.get("group_by_obj"):
            raise ValueError('"group_obj_answer" says how group_by_obj answers: it needs "group_by_obj": true')
        _check_ratios(self.mixture, "mixture")
        for stage in self.stages:
            for name, options in stage.mixture.items():
                if name not in self.mixture:  # the sources are built once, from the config's own mixture
                    raise ValueError(f"stage {stage.name!r} names source {name!r}, which the config's mixture lacks; "
                                     "add it there (with ratio 0 to draw it only in this stage)")
                synthref = source_kind(name, self.mixture[name]) == "synthref"  # its world is built once
                other = sorted(set(options) - ({"ratio", "tasks"} if synthref else {"ratio"}))
                if other:
                    what = "SynthRef's ratio and tasks" if synthref else f"{name}'s ratio"
                    raise ValueError(f"stage {stage.name!r}: a stage's mixture may change {what} only, not {other}; "
                                     "set them in the config's mixture")
            _check_ratios(stage_options(self.mixture, stage.mixture), f"stage {stage.name!r}'s mixture")
        if self.eval_every < 0 or self.eval_n < 1:
            raise ValueError("eval_every must be >= 0 and eval_n >= 1")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> Stage:
        """The stage that optimiser step ``step`` (0-based) belongs to."""
        return self.stage_position(step)[0]

    def stage_position(self, step: int) -> tuple[Stage, int]:
        """(stage, step within it) of optimiser step ``step`` (0-based); past the end, the last stage's end."""
        for stage in self.stages:
            if step < stage.steps:
                return stage, step
            step -= stage.steps
        return self.stages[-1], self.stages[-1].steps

    def stage_lr(self, stage: Stage) -> float:
        return self.lr if stage.lr is None else stage.lr

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
        stages = data.get("stages")
        if not isinstance(stages, (list, tuple)) or not all(isinstance(stage, dict) for stage in stages):
            raise ValueError('"stages" must be a list of stages, each an object with "name" and "steps" '
                             "(docs/training.md)")
        stage_fields = {f.name for f in dataclasses.fields(Stage)}
        for stage in stages:
            unknown, missing = sorted(set(stage) - stage_fields), sorted({"name", "steps"} - set(stage))
            if unknown or missing:
                raise ValueError(f"stage {stage.get('name', '?')!r}: " + (f"unknown fields {unknown}; a stage takes "
                                 f"{sorted(stage_fields)}" if unknown else f"needs {' and '.join(missing)}"))
        data["stages"] = tuple(Stage(**s) for s in stages)
        if data.get("eval_tasks") is not None:
            data["eval_tasks"] = tuple(data["eval_tasks"])
        return cls(**data)


def preset_path(name: str) -> Path:
    """train/presets/NAME.json, or a ValueError that names the closest presets."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name, sorted(p.stem for p in PRESETS_DIR.glob("*.json")), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r} (anyref train --list-presets shows them){hint}")
    return path


def read_config_data(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's JSON with its ``"extends"`` resolved: the file's keys laid over the config it names (a
    preset name, or a path ending in .json relative to the file). Dicts merge key by key, at any depth; any other
    value (``stages`` included: a list) replaces the inherited one; null removes an inherited key, so the field's
    default applies. ``description`` is never inherited."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    if path.resolve() in _chain:
        cycle = " -> ".join(p.stem for p in (*_chain, path.resolve()))
        raise ValueError(f'"extends" goes round in a circle: {cycle}')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (the config's fields)")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f'{path}: "extends" names a preset or a .json file, got {base!r}')
    base_path = path.parent / base if base.endswith(".json") else preset_path(base)
    inherited = read_config_data(base_path, (*_chain, path.resolve()))
    inherited.pop("description", None)
    return _overlay(inherited, data)


def _overlay(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(preset: str | None = None, path: str | Path | None = None, init_from: str | None = None,
                **overrides) -> TrainConfig:
    """A config from a preset name (train/presets/NAME.json) or a JSON file path, ``"extends"`` resolved
    (read_config_data), with keyword overrides; ``init_from`` replaces the model directory of a config that
    continues a finished model (e.g. a preset that continues the shipped model, started from a run of one's own
    that rebuilt it)."""
    if (preset is None) == (path is None):
        raise ValueError("give exactly one of a preset name or a config file")
    path = preset_path(preset) if preset is not None else Path(path)
    data = read_config_data(path)
    if init_from is not None:
        if "init_from" not in data.get("model", {}):
            raise ValueError(f"{path} builds a new model; an init_from override needs a config whose model has "
                             '"init_from"')
        data["model"] = {**data["model"], "init_from": str(init_from)}
    return TrainConfig.from_dict(data, **overrides)


def preset_lines(width: int = 118) -> list[str]:
    """One line per preset, as a tree of what extends what (children indented under their base, by name), each
    with the start of its description cut to ``width`` characters."""
    raw = {path.stem: json.loads(path.read_text()) for path in sorted(PRESETS_DIR.glob("*.json"))}
    children: dict[str | None, list[str]] = {}
    for name, data in raw.items():
        children.setdefault(data.get("extends"), []).append(name)
    lines: list[str] = []

    def walk(name: str, depth: int) -> None:
        label = "  " * depth + name
        text = " ".join(raw[name].get("description", "").split())
        line = f"{label:<40} {text}"
        lines.append(line if len(line) <= width else line[:width - 3] + "...")
        for child in sorted(children.get(name, [])):
            walk(child, depth + 1)

    for root in sorted(children.get(None, [])):
        walk(root, 0)
    return lines


def config_changes(saved: dict, config: TrainConfig) -> list[str]:
    """The fields (dotted paths, e.g. "stages.1.steps") in which ``config`` differs from a run's saved
    train_config.json; fields added to TrainConfig since the run was saved count at their defaults."""
    try:
        before = TrainConfig.from_dict(saved)
    except (ValueError, TypeError, KeyError) as error:
        return [f"(the saved config cannot be read: {error})"]
    before_json, now_json = (json.loads(json.dumps(c.to_dict())) for c in (before, config))  # tuples as lists
    return _differences(before_json, now_json, "")


def _differences(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}.{i}")]
    return [] if a == b else [where]
