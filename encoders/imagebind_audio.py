"""ImageBind's audio branch (preprocessor -> trunk -> head -> postprocessor) as one module, per clip.

Computes what ImageBind's ``ImageBindModel`` computes for the audio modality, but returns one embedding per clip
instead of ImageBind's mean over the clips of a sound: AnyRef uses the 3 clip embeddings as 3 tokens.
Official ``imagebind_huge.pth`` audio weights load strictly through ``KEY_MAP`` (``load_imagebind_audio``).
``tests/test_audio.py`` checks outputs and loading against ImageBind's own modules.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from encoders.checkpoints import CheckpointError, load_pth

__all__ = ["ImageBindAudioConfig", "ImageBindAudioEncoder", "load_imagebind_audio", "KEY_MAP", "AUDIO_PREFIXES"]

# (official imagebind_huge.pth key prefix, ImageBindAudioEncoder key prefix). Block internals keep ImageBind's
# names (attn.in_proj_weight, attn.bias_k, norm_1, mlp.fc1, ...), so one prefix rule covers the trunk.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("modality_preprocessors.audio.cls_token", "cls_token"),
    ("modality_preprocessors.audio.rgbt_stem.proj.", "patch_embed."),
    ("modality_preprocessors.audio.rgbt_stem.norm_layer.", "patch_norm."),
    ("modality_preprocessors.audio.pos_embedding_helper.pos_embed", "pos_embed"),
    ("modality_trunks.audio.blocks.", "blocks."),
    ("modality_heads.audio.0.", "head_norm."),
    ("modality_heads.audio.2.", "head_proj."),
    ("modality_postprocessors.audio.1.log_logit_scale", "log_logit_scale"),
)
AUDIO_PREFIXES = (
    "modality_preprocessors.audio.",
    "modality_trunks.audio.",
    "modality_heads.audio.",
    "modality_postprocessors.audio.",
)


@dataclass(frozen=True)
class ImageBindAudioConfig:
    """Sizes of ImageBind's audio branch; the defaults (= ``huge()``) are those of ``imagebind_huge``.

    kernel_size/stride: the square patch conv over the [1, n_mels, target_len] log-mel.
    drop_path: the LAST block's drop-path rate (ImageBind ramps it linearly from 0 over the blocks).
    logit_scale: the fixed (non-learnable) factor applied after L2 normalisation, clipped at max_logit_scale.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    out_dim: int = 1024
    drop_path: float = 0.1
    kernel_size: int = 16
    stride: int = 10
    n_mels: int = 128
    target_len: int = 204
    logit_scale: float = 20.0
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "mlp_ratio", "out_dim", "kernel_size", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageBindAudioConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if min(self.n_mels, self.target_len) < self.kernel_size:
            raise ValueError(
                f"the log-mel ({self.n_mels} x {self.target_len}) is smaller than kernel_size {self.kernel_size}"
            )
        if not 0.0 < self.logit_scale <= self.max_logit_scale:
            raise ValueError(f"logit_scale must be in (0, max_logit_scale={self.max_logit_scale}]")

    @classmethod
    def huge(cls) -> "ImageBindAudioConfig":
        """The audio branch of the official ``imagebind_huge`` (~85 M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "ImageBindAudioConfig":
        """A test/demo size with the same input shape and structure."""
        return cls(embed_dim=32, depth=2, num_heads=2, out_dim=64)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (mel, time) of the conv stem: (12, 19) for the official sizes."""
        return (
            (self.n_mels - self.kernel_size) // self.stride + 1,
            (self.target_len - self.kernel_size) // self.stride + 1,
        )

    @property
    def num_tokens(self) -> int:
        """Sequence length in the trunk: CLS + patches (229 for the official sizes)."""
        return 1 + self.grid[0] * self.grid[1]


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth over dim 0 with ImageBind's (timm's) random draws, so seeded runs match ImageBind.

    x is sequence-first [L, N, D] in the trunk (as in ImageBind), so dim 0 is the TOKEN axis: ImageBind drops a
    residual branch per token position, shared across the batch, not per sample. Kept for fidelity.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-LN transformer block with ImageBind's parameter names; works on [L, N, D]."""

    def __init__(self, config: ImageBindAudioConfig, drop_path: float):
        super().__init__()
        dim = config.embed_dim
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        # add_bias_kv: a learned key/value pair appended to every sequence, as in ImageBind's audio trunk.
        self.attn = nn.MultiheadAttention(dim, config.num_heads, bias=True, add_bias_kv=True)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, config.mlp_ratio * dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + _drop_path(self.attn(h, h, h, need_weights=False)[0], self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm_2(x)), self.drop_path, self.training)


class ImageBindAudioEncoder(nn.Module):
    """ImageBind's audio encoder, one embedding per clip.

    forward(clips): clips is N x 1 x n_mels x target_len (float32 log-mels from ``audio_clips``, e.g. the 3 clips
    of one sound, or B*3 clips of B sounds). Returns N x out_dim: each row L2-normalised then scaled by the fixed
    logit scale (norm 20 for the official model), exactly ImageBind's per-clip audio output before its clip mean.
    """

    def __init__(self, config: ImageBindAudioConfig | None = None):
        super().__init__()
        self.config = config = config or ImageBindAudioConfig()
        dim = config.embed_dim
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=config.kernel_size, stride=config.stride, bias=False)
        self.patch_norm = nn.LayerNorm(dim)  # default eps 1e-5 here, unlike the 1e-6 of the trunk and head
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))
        # Per-block drop-path rates exactly as ImageBind computes them (float32 linspace read back as floats).
        # On CPU explicitly, so that building under ``torch.device("meta")`` (parameter budgets) works too.
        rates = [r.item() for r in torch.linspace(0, config.drop_path, config.depth, device="cpu")]
        self.blocks = nn.ModuleList(_Block(config, rate) for rate in rates)
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_proj = nn.Linear(dim, config.out_dim, bias=False)
        # A buffer, not a parameter: ImageBind's audio logit scale is fixed; it is stored in the checkpoint.
        self.register_buffer("log_logit_scale", torch.tensor(math.log(config.logit_scale), dtype=torch.float32))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """ImageBind's initialisation, for training from scratch (real use loads imagebind_huge.pth)."""
        scale = self.config.embed_dim**-0.5
        nn.init.normal_(self.cls_token).mul_(scale)
        nn.init.normal_(self.pos_embed).mul_(scale)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):  # includes attn.out_proj
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (1, cfg.n_mels, cfg.target_len)
        if clips.ndim != 4 or tuple(clips.shape[1:]) != expected:
            raise ValueError(
                f"clips must be N x {' x '.join(map(str, expected))} log-mels (from audio_clips, stacked over "
                f"sounds), got shape {tuple(clips.shape)}"
            )
        x = self.patch_norm(self.patch_embed(clips).flatten(2).transpose(1, 2))  # N x patches x D
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = x.transpose(0, 1)  # L x N x D: ImageBind's trunk runs sequence-first (see _drop_path)
        for block in self.blocks:
            x = block(x)
        x = self.head_proj(self.head_norm(x[0]))  # CLS token -> N x out_dim
        x = F.normalize(x, dim=-1, p=2)
        return torch.clip(self.log_logit_scale.exp(), max=cfg.max_logit_scale) * x


def _rename(key: str, to_official: bool) -> str | None:
    for official, ours in KEY_MAP:
        src, dst = (ours, official) if to_official else (official, ours)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def load_imagebind_audio(
    encoder: ImageBindAudioEncoder, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]
) -> ImageBindAudioEncoder:
    """Load ImageBind audio weights strictly into ``encoder`` and return it.

    path_or_state_dict: an ImageBind checkpoint such as ``imagebind_huge.pth`` (read with weights_only=True) or
    its state dict. Only keys under ``AUDIO_PREFIXES`` are used (other modalities are ignored); every audio key
    must map onto the encoder and fit it. Raises ``CheckpointError`` (a ValueError) naming, in the official
    layout, missing, unexpected and shape-mismatched keys.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        state, what = load_pth(path_or_state_dict), f"ImageBind checkpoint {path_or_state_dict}"
    elif isinstance(path_or_state_dict, Mapping):
        state, what = path_or_state_dict, "ImageBind state dict"
    else:
        raise TypeError(f"give a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}")
    audio = {k: v for k, v in state.items() if k.startswith(AUDIO_PREFIXES)}
    if not audio:
        raise CheckpointError(
            f"{what} has no audio keys (none start with {', '.join(AUDIO_PREFIXES)}); is it an ImageBind model?"
        )
    expected = {_rename(k, to_official=True): v for k, v in encoder.state_dict().items()}
    problems = []
    for label, keys in (
        ("missing keys", sorted(set(expected) - set(audio))),
        ("unexpected keys", sorted(set(audio) - set(expected))),
        (
            "shape mismatches",
            sorted(
                f"{k} (checkpoint {tuple(audio[k].shape)} vs encoder {tuple(expected[k].shape)})"
                for k in set(audio) & set(expected)
                if audio[k].shape != expected[k].shape
            ),
        ),
    ):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{what} does not fit ImageBindAudioEncoder({encoder.config}): " + "; ".join(problems)
        )
    encoder.load_state_dict({_rename(k, to_official=False): v for k, v in audio.items()}, strict=True)
    return encoder
