"""LISA -> AnyRef: turn a released LISA checkpoint (e.g. ``xinlai/LISA-7B-v1``) into an AnyRef directory.

    anyref convert lisa LISA-7B-v1 --clip clip-vit-large-patch14 --out anyref-lisa-7b
    convert_lisa("LISA-7B-v1", "clip-vit-large-patch14", "anyref-lisa-7b")

LISA is AnyRef with text references only: a LLaVA-v1 (LLaMA, CLIP ViT-L/14 at 224 px, ONE Linear projector), SAM
ViT-H, and LISA's ``text_hidden_fcs`` = AnyRef's gamma. ``[SEG]`` plays the role of ``<obj>``: its mask state is
the last-layer state of the position that emits it. Where each tensor goes:

    LISA                                   AnyRef
    model.embed_tokens.*, lm_head.*        llava.model.language_model.embed_tokens.*, llava.lm_head.*  (+ rows)
    model.layers.*, model.norm.*           llava.model.language_model.layers.*, ...norm.*
    model.mm_projector.*                   llava.model.multi_modal_projector.linear_1.*
    -                                      ...linear_2 = identity, activation = identity ("linear")
    model.visual_model.*                   sam.*               (segment-anything's own names)
    model.text_hidden_fcs.0.{0,2}.*        obj_projection.{0,2}.*
    *.rotary_emb.inv_freq                  dropped (recomputed from the config)
    CLIP (not in LISA's release)           llava.model.vision_tower.*   from the user's HF CLIP directory
    -                                      refocus_lambda = 0 (LISA has no refocusing)

Token ids: LISA's ids are kept (``[SEG]`` is 32003 in the 7B release, 32000 in the 13B one; always looked up by
id, never by text). AnyRef's other special tokens (``<image>``, ``<img.ref>``...) are appended after LISA's
vocabulary; their embedding and lm_head rows start as the mean of LISA's rows. LISA's own added tokens become
special tokens, so text typed by a user can never produce ``[SEG]``. bos/eos/pad are 1/2/0 (``<s>``, ``</s>``,
``<unk>``), whatever ``generation_config.json`` says. Prompts follow LISA's training: the LLaVA-v1 system prompt,
``<im_start>`` + the image features + ``<im_end>``, CLIP input resized on the short side and centre-cropped. The
reference kinds LISA never saw are listed in ``untrained_references``: the model refuses them until fine-tuned.

Memory. The AnyRef model is built on the meta device (no storage). Shards are read one at a time, and each tensor
read is put into the model by reference (``load_state_dict(assign=True)``): it becomes the model's parameter, it
is not copied, and the shard's dict is emptied before the next shard is read. At any moment the process holds the
weights assigned so far, the one shard being read, and, while rows are added to the embedding or lm_head, one
extra copy of that single matrix. Saving (safetensors) writes from the tensors' own memory. Peak: at most one copy
of the weights plus one shard. LISA-7B-v1: bf16 LLaMA 13.5 GB + fp32 SAM-H 2.56 GB + gamma 0.07 GB, plus CLIP-L's
vision tower (1.21 GB fp32) and the identity layer (0.03 GB) = 17.4 GB written; the embedding growth adds
0.26 GB for a moment, so the peak is about 17.7 GB, under the 27 GB of one copy + one 10 GB shard. Reading a
CLIP or ImageBind checkpoint that holds more than the vision / audio weights costs, for a moment, that file.
Tensors keep their released dtypes (bf16 LLM, fp32 SAM).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AddedToken, CLIPVisionModel, LlamaConfig, LlamaTokenizer, LlavaConfig
from transformers.utils import logging as hf_logging

from anyref.api import AnyRef
from anyref.builders import LLAVA_V1_SYSTEM
from anyref.config import CLIP_MEAN, CLIP_STD, AnyRefConfig
from anyref.convert.shards import iter_shards
from anyref.group_heads import GroupHead
from anyref.mask_tokens import MaskProjector, position_map
from anyref.tokens import SPECIAL_TOKENS, add_special_tokens
from encoders.checkpoints import CheckpointError
from encoders.imagebind_audio import ImageBindAudioConfig, ImageBindAudioEncoder, load_imagebind_audio
from encoders.llava import build_llava
from encoders.sam import SamConfig, build_sam

__all__ = ["convert_lisa", "LisaSpec", "lisa_key", "LISA_UNTRAINED", "SEG_TOKEN"]

SEG_TOKEN = "[SEG]"
# LISA was trained on text references only; the other encoders are AnyRef's, untrained after a conversion.
LISA_UNTRAINED = ("box", "example", "audio", "mask")
BOS, EOS, UNK = ("<s>", 1), ("</s>", 2), ("<unk>", 0)
# texts the converted tokenizer must encode exactly as LISA's sentencepiece model does
TOKENIZER_PROBES = (LLAVA_V1_SYSTEM + " USER:", "Can you segment the dog in this image? Sure, it is the dog.",
                    "What is 42 + 7?\nNaïve café, 東京.")

# LISA key prefix -> AnyRef key prefix (first match wins)
KEY_MAP = (
    ("model.embed_tokens.", "llava.model.language_model.embed_tokens."),
    ("model.layers.", "llava.model.language_model.layers."),
    ("model.norm.", "llava.model.language_model.norm."),
    ("lm_head.", "llava.lm_head."),
    ("model.mm_projector.", "llava.model.multi_modal_projector.linear_1."),
    ("model.visual_model.", "sam."),
    ("model.text_hidden_fcs.0.0.", "obj_projection.0."),
    ("model.text_hidden_fcs.0.2.", "obj_projection.2."),
)
DROPPED_SUFFIXES = (".rotary_emb.inv_freq",)
# CLIP towers LISA names in its config -> (image size, patch size) it was trained with
KNOWN_CLIPS = {"openai/clip-vit-large-patch14": (224, 14), "openai/clip-vit-large-patch14-336": (336, 14)}
ROW_KEYS = ("llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight")  # one row per token
PROJECTOR_2 = "llava.model.multi_modal_projector.linear_2."
VISION_TOWER = "llava.model.vision_tower."


def lisa_key(key: str) -> str | None:
    """The AnyRef key of a LISA key; None for a buffer AnyRef recomputes. Raises KeyError for an unknown key."""
    if key.endswith(DROPPED_SUFFIXES):
        return None
    for source, target in KEY_MAP:
        if key.startswith(source):
            return target + key[len(source):]
    raise KeyError(key)


@dataclass(frozen=True)
class LisaSpec:
    """What a LISA ``config.json`` says about the network (LLaVA-v1's fields plus ``out_dim``)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    max_positions: int
    rope_theta: float
    vocab_size: int
    out_dim: int
    vision_layer: int
    vision_strategy: str
    image_wrap: bool
    mm_hidden_size: int | None
    vision_tower: str | None = None

    @classmethod
    def read(cls, directory: Path) -> "LisaSpec":
        path = directory / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a LISA checkpoint directory (no config.json)")
        data = json.loads(path.read_text())
        architectures = data.get("architectures") or []
        if "LISAForCausalLM" not in architectures:
            raise ValueError(f"{path} describes {architectures or 'no architecture'}, not LISAForCausalLM; "
                             "give the directory of a released LISA model such as LISA-7B-v1")
        if data.get("hidden_act", "silu") != "silu" or data.get("rope_scaling") is not None:
            raise ValueError(f"{path}: hidden_act {data.get('hidden_act')!r} / rope_scaling "
                             f"{data.get('rope_scaling')!r} are not LLaMA's (silu, none); not a LISA release?")
        if data.get("mm_projector_type", "linear") != "linear":
            raise ValueError(f"{path}: mm_projector_type {data['mm_projector_type']!r}; LISA's is one Linear")
        if data.get("tie_word_embeddings", False):
            raise ValueError(f"{path}: tied embeddings; LISA's lm_head is a separate matrix")
        feature = data.get("mm_vision_select_feature", "patch")
        if feature not in ("patch", "cls_patch"):
            raise ValueError(f"{path}: unknown mm_vision_select_feature {feature!r}")
        try:
            return cls._from_dict(data)
        except KeyError as error:
            raise ValueError(f"{path} lacks {error}; not a LISA config") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "LisaSpec":
        heads = int(data["num_attention_heads"])
        return cls(
            hidden_size=int(data["hidden_size"]),
            intermediate_size=int(data["intermediate_size"]),
            num_layers=int(data["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(data.get("num_key_value_heads") or heads),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            max_positions=int(data.get("max_position_embeddings", 2048)),
            rope_theta=float(data.get("rope_theta", 10000.0)),
            vocab_size=int(data["vocab_size"]),
            out_dim=int(data.get("out_dim", 256)),
            vision_layer=int(data.get("mm_vision_select_layer", -2)),
            vision_strategy="default" if data.get("mm_vision_select_feature", "patch") == "patch" else "full",
            image_wrap=bool(data.get("mm_use_im_start_end", True)),
            mm_hidden_size=data.get("mm_hidden_size"),
            vision_tower=data.get("mm_vision_tower") or data.get("vision_tower"),
        )


# ------------------------------------------------------------------------------------------------- tokenizer
def _load_tokenizer(directory: Path):
    """LISA's LLaMA tokenizer. Loaded as ``LlamaTokenizer`` by name: ``AutoTokenizer`` sees LISA's config.json
    (model_type llava) and builds a generic tokenizer without LLaMA's leading-space handling."""
    if not (directory / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.model (LISA's sentencepiece tokenizer)")
    lacking = [m for m, spec in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if importlib.util.find_spec(spec) is None]
    if lacking:
        raise ValueError(f"reading LISA's sentencepiece tokenizer.model needs {' and '.join(lacking)}: "
                         f"pip install {' '.join(lacking)}")
    import sentencepiece

    tokenizer = LlamaTokenizer.from_pretrained(directory)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    for text in TOKENIZER_PROBES:
        ours, theirs = tokenizer(text, add_special_tokens=False).input_ids, pieces.encode(text)
        if ours != theirs:
            raise ValueError(f"the tokenizer read from {directory} encodes {text!r} as {ours[:12]}..., "
                             f"sentencepiece as {theirs[:12]}...; refusing to convert with a different tokenizer")
    return tokenizer


def lisa_tokenizer(directory: Path, vocab_size: int):
    """LISA's tokenizer, ids unchanged, ready for AnyRef (``vocab_size``: LISA's, from its config.json).

    LISA's added tokens (``[SEG]``, ``<im_start>``, ``<im_end>``, and ``<im_patch>`` in the 7B release) become
    special, so user text never encodes to them; pad = ``<unk>``; AnyRef's missing special tokens are appended.
    """
    tokenizer = _load_tokenizer(directory)
    added_path = directory / "added_tokens.json"
    added = json.loads(added_path.read_text()) if added_path.is_file() else {}
    if SEG_TOKEN not in added and SEG_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"{directory}'s tokenizer has no {SEG_TOKEN} token; is it a LISA checkpoint?")
    wrong = {text: (tokenizer.convert_tokens_to_ids(text), i) for text, i in added.items()
             if tokenizer.convert_tokens_to_ids(text) != i}
    if wrong:
        raise ValueError(f"tokenizer ids differ from added_tokens.json (got, file): {wrong}")
    for text, token_id in (BOS, EOS, UNK):
        if tokenizer.convert_tokens_to_ids(text) != token_id:
            raise ValueError(f"LISA's tokenizer should have {text} = {token_id}, has "
                             f"{tokenizer.convert_tokens_to_ids(text)}; not a LLaMA tokenizer?")
    if len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but config.json says vocab_size {vocab_size}")
    own = sorted(added, key=added.get)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in own], special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token = BOS[0], EOS[0], UNK[0], UNK[0]
    add_special_tokens(tokenizer, dict(SPECIAL_TOKENS, obj=SEG_TOKEN))
    kept = {t: tokenizer.convert_tokens_to_ids(t) for t in own}
    if kept != added:
        raise ValueError(f"adding AnyRef's tokens moved LISA's ids: {kept} vs {added}")
    return tokenizer


# ------------------------------------------------------------------------------------------------ vision tower
def _read_clip(clip_dir: Path) -> CLIPVisionModel:
    """CLIPVisionModel from an HF CLIP directory (CLIPModel or CLIPVisionModel); every vision weight required."""
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"{clip_dir} is not an HF CLIP directory (no config.json); download e.g. "
                                "openai/clip-vit-large-patch14")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the text tower's weights are "unexpected" for a vision model: expected
    hf_logging.disable_progress_bar()
    try:
        clip, info = CLIPVisionModel.from_pretrained(clip_dir, dtype="auto", output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise CheckpointError(f"CLIP in {clip_dir} lacks vision weights: missing {sorted(info['missing_keys'])[:8]}, "
                              f"mismatched {list(info.get('mismatched_keys') or [])[:8]}")
    return clip


def _clip_normalisation(clip_dir: Path) -> tuple[tuple, tuple]:
    path = clip_dir / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    data = json.loads(path.read_text())
    return tuple(data.get("image_mean", CLIP_MEAN)), tuple(data.get("image_std", CLIP_STD))


# --------------------------------------------------------------------------------------------------- building
def _llava_config(spec: LisaSpec, vision_config, vocab_size: int, image_token_id: int) -> LlavaConfig:
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        rms_norm_eps=spec.rms_norm_eps,
        max_position_embeddings=spec.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        hidden_act="silu",
        pad_token_id=UNK[1],
        bos_token_id=BOS[1],
        eos_token_id=EOS[1],
        tie_word_embeddings=False,
    )
    grid = vision_config.image_size // vision_config.patch_size
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=grid * grid,
        vision_feature_layer=spec.vision_layer,
        vision_feature_select_strategy=spec.vision_strategy,
        projector_hidden_act="linear",  # with linear_2 = identity, the projector IS LISA's single Linear
        multimodal_projector_bias=True,
    )


class _Filler:
    """Puts tensors into a meta-built model by reference and keeps count; refuses unknown, doubled or misshapen
    keys, and at the end names every key nothing filled."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.filled: dict[str, str] = {}

    def put(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        problems = []
        for key, tensor in tensors.items():
            if key not in self.shapes:
                problems.append(f"{key} (no such AnyRef parameter)")
            elif key in self.filled:
                problems.append(f"{key} (also in {self.filled[key]})")
            elif tuple(tensor.shape) != self.shapes[key]:
                problems.append(f"{key} ({source} {tuple(tensor.shape)} vs model {self.shapes[key]})")
        if problems:
            raise CheckpointError(f"{source} does not fit the AnyRef model: " + "; ".join(problems[:12]))
        self.model.load_state_dict(tensors, strict=False, assign=True)
        self.filled.update(dict.fromkeys(tensors, source))

    def check_complete(self, what: str) -> None:
        missing = sorted(set(self.shapes) - set(self.filled))
        if missing:
            shown = ", ".join(missing[:12]) + (f", ... ({len(missing) - 12} more)" if len(missing) > 12 else "")
            raise CheckpointError(f"{what} left AnyRef keys without weights: {shown}")


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself, or a compact copy when it is a view into a larger storage (which it would keep alive)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _add_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """V x H -> (V + rows) x H, the new rows the mean of the old ones (in fp32, stored in the weight's dtype)."""
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows, -1)])


def _stream_lisa(filler: _Filler, src: Path, lisa_vocab: int, new_vocab: int, log: Callable[[str], None]) -> None:
    for path, state in iter_shards(src):
        batch: dict[str, torch.Tensor] = {}
        for key in list(state):
            tensor = state.pop(key)
            try:
                target = lisa_key(key)
            except KeyError:
                raise CheckpointError(f"{path.name} has a key that is not part of LISA: {key}") from None
            if target is None:
                continue
            if target in ROW_KEYS:
                if tensor.shape[0] != lisa_vocab:
                    raise CheckpointError(f"{key} has {tensor.shape[0]} rows; the tokenizer has {lisa_vocab} tokens")
                tensor = _add_rows(tensor, new_vocab - lisa_vocab)
            batch[target] = _own_storage(tensor)
        filler.put(batch, path.name)
        log(f"  {path.name}: {len(batch)} tensors")
        del batch


def convert_lisa(
    src: str | Path,
    clip_dir: str | Path,
    out: str | Path,
    *,
    sam_type: str = "vit_h",
    refocus_lambda: float = 0.0,
    untrained_references: tuple[str, ...] = LISA_UNTRAINED,
    imagebind: str | Path | None = None,
    imagebind_config: ImageBindAudioConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the AnyRef directory ``out`` from the LISA checkpoint ``src`` and the HF CLIP directory ``clip_dir``.

    sam_type: the SAM in the checkpoint ("vit_h" for every LISA release). refocus_lambda: 0 reproduces LISA (it
    never refocused). untrained_references: kinds the model refuses until fine-tuned. imagebind: an ImageBind
    checkpoint (``imagebind_huge.pth``) to add the audio encoder, so that audio references can be fine-tuned
    later (its projection starts untrained); imagebind_config defaults to the huge sizes. overwrite: replace an
    existing ``out``. log: called with progress lines. Returns ``out``; ``AnyRef.from_pretrained(out)`` loads it.
    Nothing is written unless every weight fits (the directory appears atomically).
    """
    src, clip_dir, out = Path(src), Path(clip_dir), Path(out)
    log = log or (lambda line: None)
    if not src.is_dir():
        raise FileNotFoundError(f"LISA checkpoint directory {src} does not exist")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} must not be the LISA directory or inside it")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    spec = LisaSpec.read(src)
    sam_config = SamConfig.named(sam_type)
    if spec.out_dim != sam_config.prompt_dim:
        raise ValueError(f"LISA's out_dim {spec.out_dim} != the prompt size {sam_config.prompt_dim} of SAM {sam_type}")
    tokenizer = lisa_tokenizer(src, spec.vocab_size)
    lisa_vocab, new_vocab = spec.vocab_size, len(tokenizer)
    log(f"tokenizer: LISA's {lisa_vocab} tokens kept, {new_vocab - lisa_vocab} added; "
        f"{SEG_TOKEN} = {tokenizer.convert_tokens_to_ids(SEG_TOKEN)}")

    clip = _read_clip(clip_dir)
    if spec.mm_hidden_size is not None and spec.mm_hidden_size != clip.config.hidden_size:
        raise ValueError(f"LISA's projector takes {spec.mm_hidden_size}-wide vision features, the CLIP in {clip_dir} "
                         f"gives {clip.config.hidden_size}; use CLIP ViT-L/14 (openai/clip-vit-large-patch14)")
    trained = KNOWN_CLIPS.get(spec.vision_tower or "")
    if trained and trained != (clip.config.image_size, clip.config.patch_size):
        raise ValueError(f"LISA was trained with {spec.vision_tower} ({trained[0]} px, patch {trained[1]}); the CLIP "
                         f"in {clip_dir} takes {clip.config.image_size} px, patch {clip.config.patch_size}")
    llava_config = _llava_config(spec, clip.config, new_vocab, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image"]))
    mean, std = _clip_normalisation(clip_dir)
    audio_config = (imagebind_config or ImageBindAudioConfig.huge()) if imagebind else None
    config = AnyRefConfig(
        llava=llava_config.to_dict(),
        sam=sam_config,
        audio=audio_config,
        vision_resize="crop",
        vision_mean=mean,
        vision_std=std,
        system_prompt=LLAVA_V1_SYSTEM,
        image_wrap=spec.image_wrap,
        obj_token=SEG_TOKEN,
        join_prompt_text=True,  # LISA tokenized each text run between special tokens in one call,
        strip_special_whitespace=True,  # and its tokenizer stripped the whitespace around them
        refocus_lambda=refocus_lambda,
        untrained_references=tuple(untrained_references),
    )
    audio_encoder = None
    if imagebind:
        audio_encoder = load_imagebind_audio(ImageBindAudioEncoder(audio_config), imagebind)
    with torch.device("meta"):
        model = AnyRef(config, build_llava(llava_config), build_sam(config.sam), tokenizer, audio_encoder)
    if audio_encoder is not None:
        # a real (not meta) projection, default nn.Linear init; listed as untrained in the config
        model.audio_projection = nn.Linear(audio_config.out_dim, spec.hidden_size)
    # AnyRef's mask-token heads, which LISA lacks: real modules with their default init, untrained ("mask")
    model.mask_projector = MaskProjector({n: s.channels for n, s in model.mask_sources.items()}, spec.hidden_size)
    model.group_head = GroupHead(spec.hidden_size)
    model.mask_positions = position_map(config.mask_position_grid, config.mask_position_channels)

    filler = _Filler(model)
    filler.filled.update(dict.fromkeys((k for k in filler.shapes if k.startswith(("mask_projector.", "group_head."))),
                                       "AnyRef's default initialisation"))
    if audio_encoder is not None:
        filler.filled.update(dict.fromkeys((k for k in filler.shapes if k.startswith("audio_")), str(imagebind)))
    filler.put({VISION_TOWER + k: v for k, v in clip.state_dict().items()}, f"CLIP {clip_dir}")
    del clip
    log(f"reading {src}")
    _stream_lisa(filler, src, lisa_vocab, new_vocab, log)
    linear_1 = model.llava.model.multi_modal_projector.linear_1.weight
    filler.put({PROJECTOR_2 + "weight": torch.eye(spec.hidden_size, dtype=linear_1.dtype),
                PROJECTOR_2 + "bias": torch.zeros(spec.hidden_size, dtype=linear_1.dtype),
                "refocus_lambda": torch.tensor(float(refocus_lambda))}, "conversion")
    filler.check_complete(f"converting {src}")
    model.save_pretrained(out)
    log(f"wrote {out}")
    return out
