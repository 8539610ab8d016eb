"""SAM from segment-anything's own modeling classes: builders per size, strict weights-only loading,
and the resize/normalise/pad and postprocessing SAM was trained with."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from encoders.checkpoints import load_pth, load_state_dict_strict

__all__ = ["SamConfig", "build_sam", "load_sam_checkpoint", "sam_preprocess", "SAM_SIZES"]


@dataclass(frozen=True)
class SamConfig:
    """Sizes of a SAM. ``vit_h``/``vit_l``/``vit_b`` give the official ones; ``tiny`` a test/demo one."""

    image_size: int = 1024
    patch_size: int = 16
    encoder_width: int = 1280
    encoder_depth: int = 32
    encoder_heads: int = 16
    encoder_global_attn: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"SAM image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if any(i >= self.encoder_depth for i in self.encoder_global_attn):
            raise ValueError(f"encoder_global_attn {self.encoder_global_attn} beyond depth {self.encoder_depth}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official 1024 / 16)."""
        return self.image_size // self.patch_size

    @classmethod
    def named(cls, name: str) -> "SamConfig":
        if name not in SAM_SIZES:
            raise ValueError(f"unknown SAM type {name!r}; choose one of {sorted(SAM_SIZES)}")
        return SAM_SIZES[name]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SamConfig":
        data = dict(data)
        data["encoder_global_attn"] = tuple(data["encoder_global_attn"])
        return cls(**data)


SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

SAM_SIZES = {
    "vit_h": SamConfig(),
    "vit_l": SamConfig(encoder_width=1024, encoder_depth=24, encoder_global_attn=(5, 11, 17, 23)),
    "vit_b": SamConfig(encoder_width=768, encoder_depth=12, encoder_heads=12, encoder_global_attn=(2, 5, 8, 11)),
    "tiny": SamConfig(
        image_size=128, patch_size=8, encoder_width=64, encoder_depth=2, encoder_heads=2,
        encoder_global_attn=(1,), window_size=4, prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4,
    ),
    # a 32 x 32 embedding grid at 128 px (patch 4), so the decoder's 4x upscaling draws masks at full input
    # resolution where tiny's 16 x 16 grid leaves 8 px cells for small objects' outlines. Windowed attention only
    # and a narrower encoder keep its cost near tiny's (global attention over 1,024 tokens made it 8x tiny's)
    "tiny-fine": SamConfig(
        image_size=128, patch_size=4, encoder_width=32, encoder_depth=2, encoder_heads=1,
        encoder_global_attn=(), window_size=8, prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4,
    ),
}


def build_sam(config: SamConfig) -> Sam:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given sizes."""
    grid = config.embedding_size
    encoder = ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_width,
        img_size=config.image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=config.encoder_global_attn,
        window_size=config.window_size,
        out_chans=config.prompt_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_heads,
        ),
        transformer_dim=config.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )


def load_sam_checkpoint(sam: Sam, path: str | Path) -> None:
    """Load an official ``sam_vit_{h,l,b}_*.pth`` strictly (weights only); errors name mismatched keys."""
    load_state_dict_strict(sam, load_pth(path), what=f"SAM checkpoint {Path(path).name}")


def sam_preprocess(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM's input for an H x W x 3 uint8 image, as ``Sam.preprocess`` makes it.

    Resize the longest side to ``size`` (segment-anything's numpy ``apply_image``; its torch variant has a shape
    bug in 1.0), normalise with SAM's pixel mean/std, zero-pad right/bottom. Returns (3 x size x size float,
    resized (h, w)) - the resized size is what ``Sam.postprocess_masks`` crops back to.
    """
    resized = ResizeLongestSide(size).apply_image(image)
    tensor = torch.from_numpy(resized).permute(2, 0, 1).float()
    tensor = (tensor - torch.tensor(SAM_PIXEL_MEAN)[:, None, None]) / torch.tensor(SAM_PIXEL_STD)[:, None, None]
    h, w = resized.shape[:2]
    return torch.nn.functional.pad(tensor, (0, size - w, 0, size - h)), (h, w)
