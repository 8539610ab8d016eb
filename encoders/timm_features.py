"""Further image encoders for mask tokens (RAS pools SigLIP, ConvNeXt-CLIP and DINOv2 features besides CLIP's):
any timm model, its last feature map as a grid, frozen, weights from a file the user has.

    encoder = TimmFeatures("vit_large_patch14_dinov2.lvd142m", weights="dinov2_vitl14.safetensors")
    grid = encoder(pixels)          # B x 3 x s x s (encoder.preprocess) -> B x C x h x w

The model is built with ``timm.create_model(name, pretrained=False)`` (no download) and its weights loaded strictly
from ``weights`` (safetensors, or .pth/.bin read with ``weights_only=True``): a timm-hub file, or a release timm's
own loader converts (its ``checkpoint_filter_fn``; a classifier head is dropped). Without weights it stays random,
which only tests want.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from encoders.checkpoints import load_pth, load_state_dict_strict

__all__ = ["TimmFeatures", "TIMM_PREFIX", "timm_sources"]

TIMM_PREFIX = "timm:"


def timm_sources(mask_features: tuple[str, ...]) -> list[str]:
    """The timm model names among AnyRefConfig.mask_features ("timm:NAME" entries)."""
    return [name[len(TIMM_PREFIX):] for name in mask_features if name.startswith(TIMM_PREFIX)]


class TimmFeatures(nn.Module):
    """A frozen timm encoder giving its last intermediate feature map (what ``forward_intermediates`` returns).

    image_size, mean, std: its input; by default those of the model's pretrained configuration.
    """

    def __init__(self, name: str, weights: str | Path | None = None, image_size: int | None = None):
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as error:  # timm's "Unknown model"
            raise ValueError(f"timm has no model {name!r} (see timm.list_models()): {error}") from error
        config = self.model.pretrained_cfg
        self.name = name
        self.image_size = int(image_size or config["input_size"][-1])
        self.mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(config.get("std", (0.229, 0.224, 0.225)))
        if weights is not None:
            load_state_dict_strict(self.model, _fit(self.model, _read(weights)),
                                   what=f"{name} weights {Path(weights).name}")
        self.requires_grad_(False)
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, self.image_size, self.image_size))
        self.channels, self.grid = int(probe.shape[1]), int(probe.shape[-1])
        if probe.shape[-2] != probe.shape[-1]:
            raise ValueError(f"{name} gives a {tuple(probe.shape[-2:])} feature map; mask pooling needs a square grid")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x s x s normalised pixels -> B x C x h x w."""
        return self.model.forward_intermediates(pixels, indices=1, intermediates_only=True)[-1]

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 -> 3 x s x s, the whole image stretched to the square (mask weights use the same frame)."""
        resized = Image.fromarray(image).resize((self.image_size, self.image_size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]


def _fit(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint as timm's own pretrained loading would fit it to ``model``: the model family's
    ``checkpoint_filter_fn`` (original releases' key names, e.g. DINOv2's ``mask_token``, position embeddings of
    another size), then the classifier's keys dropped (the encoder is built without one)."""
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {key: value for key, value in state.items()
            if not any(key == head or key.startswith(head + ".") for head in heads)}


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = load_pth(path)
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
