"""The model a training run starts from: a tiny AnyRef built from scratch, or an AnyRef directory."""
from __future__ import annotations

from anyref.api import AnyRef
from anyref.builders import build_tiny
from anyref.synthref import SynthRef

__all__ = ["build_model"]


def build_model(config) -> AnyRef:
    """config.model = {"tiny": {sizes, "refocus_lambda"...}} or {"init_from": DIR}."""
    if "init_from" in config.model:
        return AnyRef.from_pretrained(config.model["init_from"])
    return build_tiny(corpus=SynthRef().vocabulary(), seed=config.seed, **config.model["tiny"])
