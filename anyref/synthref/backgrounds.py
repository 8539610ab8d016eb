"""Varied random backgrounds, so that neither a flat colour nor colour thresholding finds the objects."""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image

__all__ = ["background", "random_colour"]

BACKGROUND_KINDS = ("gradient", "stripes", "checks", "blobs", "noise")


def random_colour(rng: np.random.Generator, saturated: bool = False) -> np.ndarray:
    """A random RGB colour (3 floats in 0-255); muted unless ``saturated``."""
    s_max = 0.7 if saturated else 0.5
    h, s, v = rng.random(), rng.uniform(0.0, s_max), rng.uniform(0.15, 0.92)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    saturated = rng.random() < 0.15
    return random_colour(rng, saturated), random_colour(rng, saturated)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x as 1 x size and y as size x 1 float32 (broadcast against each other: cheap)."""
    axis = np.arange(size, dtype=np.float32)
    return axis[None, :], axis[:, None]


def _gradient(rng, size):
    a, b = _two_colours(rng)
    xx, yy = _grid(size)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / size
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return a + t[..., None] * (b - a)


def _stripes(rng, size):
    a, b = _two_colours(rng)
    xx, yy = _grid(size)
    angle = rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4]) + rng.uniform(-0.2, 0.2)
    period = rng.uniform(0.05, 0.18) * size
    phase = rng.uniform(0, period)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + phase) % period < period / 2
    return np.where(t[..., None], a, b)


def _checks(rng, size):
    a, b = _two_colours(rng)
    xx, yy = _grid(size)
    cell = rng.uniform(0.05, 0.16) * size
    t = (np.floor((xx + rng.uniform(0, cell)) / cell) + np.floor((yy + rng.uniform(0, cell)) / cell)) % 2 == 0
    return np.where(t[..., None], a, b)


def _blobs(rng, size):
    small = max(size // 4, 8)  # smooth anyway: drawn at a quarter of the size, then scaled up
    xx, yy = _grid(small)
    img = np.broadcast_to(random_colour(rng), (small, small, 3)).copy()
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.uniform(0, small, 2)
        sigma = rng.uniform(0.08, 0.3) * small
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma * sigma))[..., None]
        img = img * (1 - weight) + random_colour(rng, rng.random() < 0.3) * weight
    big = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)


def _noise(rng, size):
    cells = int(rng.integers(3, 9))
    small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    tint = random_colour(rng)
    small = 0.45 * small + 0.55 * tint
    big = Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)


_MAKERS = {"gradient": _gradient, "stripes": _stripes, "checks": _checks, "blobs": _blobs, "noise": _noise}


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background: size x size x 3 float32 in 0-255 (no pixel noise yet; the scene adds it last)."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    return np.asarray(_MAKERS[kind](rng, size), dtype=np.float32)
