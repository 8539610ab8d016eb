"""Shared fixtures: tiny models of the real upstream classes, and a few hand-made samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny

torch.set_num_threads(2)


def scene(seed: int = 0, size: int = 96) -> np.ndarray:
    """A random H x W x 3 uint8 image."""
    return (np.random.default_rng(seed).random((size, size + 16, 3)) * 255).astype(np.uint8)


def rect_mask(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny AnyRef (eval mode). Tests must not modify it."""
    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def overfit_model():
    """A tiny AnyRef trained for a few seconds to answer two fixed prompts:
    "the two squares" -> "left square <obj> and right square <obj>." (two masks),
    "the purple moon" -> "there is no such object." (no mask)."""
    model = build_tiny(seed=1).train()
    image = scene(3)
    shape = image.shape[:2]
    two = ReferringSample(image, ["the two squares"], "segment",
                          ["left square ", OBJ, " and right square ", OBJ, "."],
                          np.stack([rect_mask(shape, 20, 60, 10, 40), rect_mask(shape, 30, 80, 60, 100)]))
    none = ReferringSample(image, ["the purple moon"], "segment", ["there is no such object."])
    batch = collate([prepare(s, model.builder) for s in (two, none)], model.ids.pad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(150):
        loss = model(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the trainer does; without it the masks swing
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), image, two
