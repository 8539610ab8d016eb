"""AnyRef directories: ``config.json`` + safetensors weights (sharded when large) + tokenizer [+ ``adapter/``].

Written atomically (a temporary sibling directory renamed into place); read strictly, naming any key that does
not fit.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlavaConfig

from anyref.config import AnyRefConfig
from anyref.lora import base_state_dict, lora_enabled
from encoders.checkpoints import (
    CheckpointError, atomic_write_dir, load_state_dict_strict, read_json_object, read_weight_map,
)
from encoders.imagebind_audio import ImageBindAudioEncoder
from encoders.llava import build_llava
from encoders.sam import build_sam
from encoders.timm_features import TimmFeatures, timm_sources

__all__ = ["save_directory", "load_directory", "resolve_model_path", "weight_files", "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# what transformers records in tokenizer_config.json about how the tokenizer was loaded, not what it is: a saved
# model must not carry one session's loading state (nor an "offline or not" into the next load)
TOKENIZER_LOAD_STATE_KEYS = ("is_local", "local_files_only")
# fields every saved config has and AnyRefConfig.from_dict cannot do without
REQUIRED_CONFIG_FIELDS = ("llava", "sam")


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A directory path, or the name of a model shipped with the library (e.g. "synthref-tiny")."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = PRETRAINED_DIR / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []
    raise FileNotFoundError(f"no AnyRef model directory at {path}; shipped models: {names or 'none'}")


def save_directory(model, directory: str | Path, max_shard_size: str = "4GB",
                   extra_files: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (an AnyRefModel) to ``directory``, replacing it atomically.

    The whole folder is replaced, so it must be new, empty, or an earlier AnyRef directory (refused otherwise).
    ``extra_files`` (file name -> text) go into the same folder in the same replacement, so a report about the
    weights (e.g. a fit's ``group_fit.json``) never sits beside other weights than its own."""
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME, *TOKENIZER_JSON_FILES):
            raise ValueError(f"extra file {name!r}: give a plain file name that is not one of the model's own")
    _check_replaceable(Path(directory))
    state = {k: v.detach().contiguous() for k, v in base_state_dict(model).items()}
    with atomic_write_dir(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
        model.tokenizer.save_pretrained(tmp)
        _drop_tokenizer_load_state(tmp / "tokenizer_config.json")
        split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                                   max_shard_size=max_shard_size)
        for filename, keys in split.filename_to_tensors.items():
            save_file({k: state[k] for k in keys}, tmp / filename, metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": {}, "weight_map": split.tensor_to_filename}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
        if lora_enabled(model):
            model.llava.model.language_model.save_pretrained(tmp / "adapter")
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(directory)


def _drop_tokenizer_load_state(path: Path) -> None:
    """Remove TOKENIZER_LOAD_STATE_KEYS from a just-written tokenizer_config.json, keeping transformers' layout."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if any(key in data for key in TOKENIZER_LOAD_STATE_KEYS):
        kept = {k: v for k, v in data.items() if k not in TOKENIZER_LOAD_STATE_KEYS}
        path.write_text(json.dumps(kept, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _is_anyref_directory(directory: Path) -> bool:
    """Whether ``directory`` holds an AnyRef config.json (one :func:`_read_config` accepts)."""
    try:
        _read_config(directory)
    except CheckpointError:
        return False
    return True


def _check_replaceable(directory: Path) -> None:
    """Refuse a ``directory`` that saving would wrongly replace: a file, or a folder of other things."""
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir():
        raise ValueError(f"cannot save the model to {directory}: it exists and is not a folder; give a new folder")
    if any(directory.iterdir()) and not _is_anyref_directory(directory):
        raise ValueError(f"cannot save the model to {directory}: the folder holds other files and is not an earlier "
                         f"AnyRef model directory (no AnyRef {CONFIG_NAME}), and saving replaces the whole folder; "
                         "give a new or empty folder")


def _read_config(directory: Path) -> AnyRefConfig:
    """The directory's AnyRefConfig; CheckpointError naming config.json and what is wrong with it."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an AnyRef directory (no {CONFIG_NAME})")
    data = read_json_object(path)
    missing = [name for name in REQUIRED_CONFIG_FIELDS if name not in data]
    if missing:
        raise CheckpointError(f"{path} lacks the fields {missing} that every AnyRef config has; it is damaged or "
                              "not an AnyRef config: restore it, or save the model again")
    try:
        return AnyRefConfig.from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{path} is not a valid AnyRef config ({type(error).__name__}: {error})") from error


def _read_tokenizer(directory: Path):
    """The directory's tokenizer; CheckpointError naming the tokenizer file that could not be read."""
    for name in TOKENIZER_JSON_FILES:
        if (directory / name).is_file():
            read_json_object(directory / name)  # names the file, where transformers' JSON error would not
    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # transformers and tokenizers raise many types for a damaged tokenizer
        raise CheckpointError(f"could not load the tokenizer in {directory} ({type(error).__name__}: {error}); "
                              f"restore its {' / '.join(TOKENIZER_JSON_FILES)}, or save the model again") from error


def weight_files(directory: str | Path) -> list[str]:
    """The names of the files that hold a model directory's weights, in name order: its shards when it has a
    sharded index, else model.safetensors. CheckpointError when it has neither."""
    directory = Path(directory)
    if (directory / INDEX_NAME).is_file():
        return sorted(set(read_weight_map(directory / INDEX_NAME).values()))
    if (directory / WEIGHTS_NAME).is_file():
        return [WEIGHTS_NAME]
    raise CheckpointError(f"{directory} has no {WEIGHTS_NAME} (nor a sharded index)")


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name in weight_files(directory):
        try:
            state.update(load_file(directory / name))
        except Exception as error:
            raise CheckpointError(f"could not read weights file {directory / name}: {error}") from error
    return state


def load_directory(cls, name_or_path: str | Path, device: str | torch.device = "cpu"):
    """Build ``cls`` (AnyRef) from a directory written by :func:`save_directory`; strict key check."""
    directory = resolve_model_path(name_or_path)
    config = _read_config(directory)
    tokenizer = _read_tokenizer(directory)
    try:
        llava = build_llava(LlavaConfig.from_dict(config.llava))
    except Exception as error:  # transformers' config classes raise many types for a bad field
        raise CheckpointError(f'{directory / CONFIG_NAME}: its "llava" entry does not make a LLaVA config '
                              f"({type(error).__name__}: {error}); restore the file, or save the model "
                              "again") from error
    audio = None if config.audio is None else ImageBindAudioEncoder(config.audio)
    # further mask-token encoders are built random here; their weights are in the directory's safetensors
    mask_encoders = {name: TimmFeatures(name) for name in timm_sources(config.mask_features)}
    try:
        # the model checks its tokens here: each known, and special (typed text never produces it)
        model = cls(config, llava, build_sam(config.sam), tokenizer, audio, mask_encoders)
    except ValueError as error:
        raise CheckpointError(f"{directory} does not make an AnyRef model: {error}") from error
    load_state_dict_strict(model, _read_weights(directory), what=f"AnyRef weights in {directory}")
    if (directory / "adapter").is_dir():
        lm = model.llava.model.language_model
        model.llava.model.language_model = PeftModel.from_pretrained(lm, directory / "adapter")
    return model.to(device).eval()
