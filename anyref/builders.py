"""Builders: the tiny configuration of the real classes, and the full model from real weights.

    model = build_tiny()                                   # random weights, for tests and SynthRef training
    model = build_from_weights("llava-1.5-7b-hf", "sam_vit_h_4b8939.pth", "vit_h", "imagebind_huge.pth")
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlavaConfig

from anyref.api import AnyRef
from anyref.config import CLIP_MEAN, CLIP_STD, AnyRefConfig
from anyref.prompts import DESCRIBE_TEMPLATE, SEGMENT_TEMPLATES, SELECT_TEMPLATE
from anyref.tokens import SPECIAL_TOKENS, add_special_tokens, build_tiny_tokenizer
from encoders.imagebind_audio import ImageBindAudioConfig, ImageBindAudioEncoder, load_imagebind_audio
from encoders.llava import build_llava, load_llava, tiny_llava_config
from encoders.sam import SamConfig, build_sam, load_sam_checkpoint
from encoders.timm_features import TimmFeatures, timm_sources

__all__ = ["build_tiny", "build_from_weights", "template_corpus", "LLAVA_V1_SYSTEM", "full_size_parts",
           "build_full_size_random", "full_size_llava_config"]

LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the human's questions.")


def template_corpus() -> list[str]:
    """Text every AnyRef prompt contains (templates, role names), for training a tiny tokenizer. The "verify"
    template is left out, as SynthRef's vocabulary leaves out its answers (anyref.synthref.vocabulary.UNLISTED_WORDS):
    the shipped model's chain builds its tokenizer from this text, and one more word renumbers its tokens."""
    templates = [*SEGMENT_TEMPLATES.values(), DESCRIBE_TEMPLATE, SELECT_TEMPLATE]
    return ["USER: ASSISTANT: " + t.replace("{}", "the object") for t in templates]


def build_tiny(corpus: list[str] | None = None, audio: bool = True, seed: int = 0, sam: str = "tiny",
               config_overrides: dict | None = None, **sizes) -> AnyRef:
    """A small AnyRef of the same upstream classes, randomly initialised (deterministic in ``seed``).

    corpus: extra text for the byte-level BPE tokenizer (e.g. SynthRef's vocabulary). sam: a SAM_SIZES name.
    config_overrides: AnyRefConfig fields (refocus_lambda, loss weights, mask_features...); "timm:NAME" mask
    features get a random timm encoder. sizes: keyword overrides of :func:`encoders.llava.tiny_llava_config`
    (image_size, patch_size, vision_width, text_width, text_layers...).
    """
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(template_corpus() + list(corpus or []))
    llava_config = tiny_llava_config(
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image"]),
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    # JSON configs (training presets) give lists where the config keeps tuples
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (config_overrides or {}).items()}
    config = AnyRefConfig(
        llava=llava_config.to_dict(),
        sam=SamConfig.named(sam),
        audio=ImageBindAudioConfig.tiny() if audio else None,
        **overrides,
    )
    audio_encoder = ImageBindAudioEncoder(config.audio) if audio else None
    mask_encoders = {name: TimmFeatures(name) for name in timm_sources(config.mask_features)}
    return AnyRef(config, build_llava(llava_config), build_sam(config.sam), tokenizer, audio_encoder,
                  mask_encoders).eval()


def _vision_normalisation(llava_dir: Path) -> tuple[tuple, tuple]:
    processor = llava_dir / "preprocessor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text())
        return tuple(data.get("image_mean", CLIP_MEAN)), tuple(data.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def build_from_weights(llava_dir: str | Path, sam_checkpoint: str | Path, sam_type: str = "vit_h",
                       imagebind_checkpoint: str | Path | None = None, dtype: torch.dtype = torch.bfloat16,
                       vision_resize: str = "pad", mask_encoders: dict[str, str | Path] | None = None) -> AnyRef:
    """AnyRef assembled from released weights: an HF LLaVA directory, an official SAM checkpoint, and
    optionally ImageBind-huge for audio and further timm encoders for mask tokens (timm model name -> weights
    file, e.g. {"vit_large_patch14_dinov2.lvd142m": "dinov2.safetensors"}). The new parts (gamma, audio
    projection, mask projector, group head, new token rows) are untrained until fine-tuned, and the config says so."""
    llava_dir = Path(llava_dir)
    tokenizer = AutoTokenizer.from_pretrained(llava_dir)
    llava = load_llava(llava_dir, dtype=dtype)
    texts = {k: v for k, v in SPECIAL_TOKENS.items() if k != "image"}
    add_special_tokens(tokenizer, texts)
    llava.resize_token_embeddings(len(tokenizer))
    mean, std = _vision_normalisation(llava_dir)
    config = AnyRefConfig(
        llava=llava.config.to_dict(),
        sam=SamConfig.named(sam_type),
        audio=ImageBindAudioConfig.huge() if imagebind_checkpoint else None,
        vision_resize=vision_resize,
        vision_mean=mean,
        vision_std=std,
        system_prompt=LLAVA_V1_SYSTEM,
        join_prompt_text=True,  # as LLaVA tokenizes its prompts
        mask_features=("vision", "position", *(f"timm:{name}" for name in mask_encoders or {})),
        untrained_references=("text", "box", "example", "audio", "mask"),
    )
    sam = build_sam(config.sam)
    load_sam_checkpoint(sam, sam_checkpoint)
    audio_encoder = None
    if imagebind_checkpoint:
        audio_encoder = ImageBindAudioEncoder(config.audio)
        load_imagebind_audio(audio_encoder, imagebind_checkpoint)
    extra = {name: TimmFeatures(name, weights) for name, weights in (mask_encoders or {}).items()}
    model = AnyRef(config, llava, sam, tokenizer, audio_encoder, extra)
    return model.to(dtype).eval()


def full_size_llava_config(vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaConfig:
    """LLaVA-1.5-7B's architecture: LLaMA-7B (4096 wide, 32 layers) and CLIP ViT-L/14 at 336 px (24 x 24 patches),
    the two-layer GELU projector."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=pad_token_id, bos_token_id=None, eos_token_id=None,
                       tie_word_embeddings=False)  # vicuna-7b-v1.5's eps, as llava-hf/llava-1.5-7b-hf
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu")


def full_size_parts(vocab_size: int = 32002 + len(SPECIAL_TOKENS) - 1) -> dict:
    """The full-size modules (LLaVA-1.5-7B, SAM ViT-H, ImageBind-H audio) on the meta device: shapes and parameter
    counts without memory. The vocabulary is llava-hf's (LLaMA's 32,000, ``<image>`` and ``<pad>``) plus AnyRef's
    tokens but ``<image>``, which it already has."""
    with torch.device("meta"):
        llava = build_llava(full_size_llava_config(vocab_size, 32000, 0))
        return {"llava": llava, "sam": build_sam(SamConfig.named("vit_h")),
                "audio_encoder": ImageBindAudioEncoder(ImageBindAudioConfig.huge())}


def build_full_size_random(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> AnyRef:
    """The full-size architecture with random weights, built directly on ``device`` in ``dtype`` (for timing and
    memory on a GPU). Its tokenizer is the tiny one, so the vocabulary is smaller than LLaMA's 32000."""
    tokenizer = build_tiny_tokenizer(template_corpus())
    llava_config = full_size_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image"]),
                                          tokenizer.pad_token_id)
    config = AnyRefConfig(llava=llava_config.to_dict(), sam=SamConfig.named("vit_h"), audio=ImageBindAudioConfig.huge(),
                          vision_resize="pad")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AnyRef(config, build_llava(llava_config), build_sam(config.sam), tokenizer,
                           ImageBindAudioEncoder(config.audio))
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()
