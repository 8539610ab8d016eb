"""The LLM and its vision tower: transformers' ``LlavaForConditionalGeneration``, built tiny or loaded from a checkpoint.

AnyRef needs three things from LLaVA beyond the stock forward:
- the vision tower's patch features as a 2-D grid *before* the projector (boxes are RoIAligned on that grid);
- the projector, applied to any such features (image patches, RoI features, pooled example features);
- the decoder stack run on ``inputs_embeds`` that the caller assembled (:mod:`anyref.model`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from encoders.checkpoints import CheckpointError

__all__ = ["tiny_llava_config", "build_llava", "load_llava", "patch_grid_size", "vision_patch_grid", "project_vision"]


def tiny_llava_config(
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    image_size: int = 128,
    patch_size: int = 16,
    vision_width: int = 64,
    vision_layers: int = 3,
    text_width: int = 128,
    text_layers: int = 2,
    text_heads: int = 4,
    max_positions: int = 512,
) -> LlavaConfig:
    """A LLaVA configuration of the same classes as LLaVA-7B, at test/demo size.

    The vision tower runs ``vision_layers`` layers; like LLaVA, features come from the second-to-last one.
    """
    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=vision_width * 4,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_width // 32),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=text_width * 3,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_llava(config: LlavaConfig) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA of the given configuration (sdpa attention everywhere)."""
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config)


def load_llava(path: str | Path, dtype: torch.dtype = torch.float32) -> LlavaForConditionalGeneration:
    """An HF-format LLaVA checkpoint directory (e.g. llava-hf/llava-1.5-7b-hf), loaded with ``from_pretrained``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an HF LLaVA checkpoint directory (no config.json in it)")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{path / 'config.json'} is not a JSON object: {error}") from None
    if model_type != "llava":
        # transformers would build a default LlavaConfig, whose shapes are LLaVA-1.5-7B's, load what matches by name
        # (little of the original repository's layout) and only warn: a model of random weights
        raise CheckpointError(f"{path} holds a {model_type!r} model, not an HF-format LLaVA (model_type 'llava'); "
                              "for the original liuhaotian/llava-v1.5-* repositories use their HF conversion "
                              "(llava-hf/llava-1.5-7b-hf), or transformers' convert_llava_weights_to_hf.py")
    model, info = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                                output_loading_info=True)
    problems = {name: sorted(map(str, info.get(name) or ())) for name in ("missing_keys", "unexpected_keys",
                                                                            "mismatched_keys")}
    problems = {name: keys for name, keys in problems.items() if keys}
    if problems:  # transformers only logs these; a half-loaded LLaVA answers, wrongly
        listed = "; ".join(f"{len(keys)} {name.replace('_', ' ')} (e.g. {', '.join(keys[:3])})"
                           for name, keys in problems.items())
        raise CheckpointError(f"{path}: the checkpoint does not fit LlavaForConditionalGeneration: {listed}")
    return model


def patch_grid_size(config: LlavaConfig) -> int:
    """Side of the vision tower's patch grid: image_size / patch_size (224/14 -> 16, 336/14 -> 24)."""
    vision = config.vision_config
    if vision.image_size % vision.patch_size:
        raise ValueError(f"vision image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}")
    return vision.image_size // vision.patch_size


def vision_patch_grid(llava: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features of the layer LLaVA feeds to its projector, as a grid.

    pixel_values: B x 3 x S x S, normalised for the vision tower. Returns B x C_v x G x G (G = S / patch),
    the same features ``get_image_features`` projects, CLS dropped for the "default" strategy.
    """
    config = llava.config
    if not isinstance(config.vision_feature_layer, int):
        raise NotImplementedError("AnyRef supports a single vision_feature_layer (as LLaVA-1.5 and LLaVA-v1 use)")
    outputs = llava.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    features = outputs.hidden_states[config.vision_feature_layer]
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    batch, count, channels = features.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"vision tower gave {count} patch features, not a square grid")
    return features.transpose(1, 2).reshape(batch, channels, side, side)


def project_vision(llava: LlavaForConditionalGeneration, features: torch.Tensor) -> torch.Tensor:
    """The vision-language projector on features ... x C_v -> ... x H (LLM width)."""
    return llava.model.multi_modal_projector(features)
