"""Scenes: a background and 1-N objects with exact visible-pixel masks (later objects occlude earlier ones)."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from anyref.synthref.backgrounds import background
from anyref.synthref.shapes import silhouette
from anyref.synthref.vocabulary import COLOUR_HUE_JITTER, COLOUR_HUES, COLOURS, SHAPES, SIZE_FRACTIONS, SIZES

__all__ = ["ObjectSpec", "SceneObject", "Scene", "sample_specs", "compose_scene"]

_MAX_ROTATION = 12.0  # degrees; small, so a square never turns into a diamond
_PLACEMENT_TRIES = 30
_NEAR_PROB = 0.4  # chance to try a new object next to an existing one (overlap is common, not an accident)
_MIN_PIXEL_FRACTION = 0.006  # an object keeps at least this fraction of the image's pixels (~98 px at 128x128)


@dataclass(frozen=True)
class ObjectSpec:
    """The attributes that a referring expression can name."""

    shape: str
    colour: str
    size: str


@dataclass
class SceneObject:
    """One drawn object. mask: H x W bool, its VISIBLE pixels. bbox: (x0, y0, x1, y1) of the mask, x1/y1 exclusive."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    visible_fraction: float

    @property
    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.shape, self.colour, self.size)

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) centre of the visible box, the point every spatial relation compares."""
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def attributes(self) -> dict:
        """Plain-data description for ``ReferringSample.meta``."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "bbox": self.bbox,
                "centre": self.centre, "area": int(self.mask.sum()), "visible_fraction": self.visible_fraction}


@dataclass
class Scene:
    """image: H x W x 3 uint8. objects: in drawing order (index = id used in meta)."""

    image: np.ndarray
    objects: list[SceneObject]

    def masks(self) -> np.ndarray:
        """N x H x W bool visible masks, pairwise disjoint."""
        if not self.objects:
            return np.zeros((0,) + self.image.shape[:2], dtype=bool)
        return np.stack([o.mask for o in self.objects])

    def union(self, ids: list[int]) -> np.ndarray:
        """H x W bool union of the visible masks of objects ``ids``."""
        out = np.zeros(self.image.shape[:2], dtype=bool)
        for i in ids:
            out |= self.objects[i].mask
        return out

    def shapes_present(self) -> set[str]:
        return {o.shape for o in self.objects}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_specs(
    rng: np.random.Generator, n: int, share_prob: float, required: list[dict] | None = None
) -> list[ObjectSpec]:
    """n object specs in random drawing order.

    required: partial specs (e.g. ``{"shape": "star"}``) that must be among them; missing attributes are random.
    Each further object copies one attribute (shape, colour or size) of an earlier one with probability share_prob,
    so that distractors often share attributes with the referred object.
    """
    specs = [ObjectSpec(r.get("shape") or _pick(rng, SHAPES), r.get("colour") or _pick(rng, COLOURS),
                        r.get("size") or _pick(rng, SIZES)) for r in (required or [])]
    while len(specs) < n:
        shape, colour, size = _pick(rng, SHAPES), _pick(rng, COLOURS), _pick(rng, SIZES)
        if specs and rng.random() < share_prob:
            other = specs[int(rng.integers(len(specs)))]
            which = rng.random()
            if which < 0.45:
                shape = other.shape
            elif which < 0.9:
                colour = other.colour
            else:
                shape, colour = other.shape, other.colour
        specs.append(ObjectSpec(shape, colour, size))
    order = rng.permutation(len(specs))
    return [specs[i] for i in order]


def _object_rgb(rng: np.random.Generator, colour: str) -> np.ndarray:
    hue = (COLOUR_HUES[colour] + rng.uniform(-COLOUR_HUE_JITTER, COLOUR_HUE_JITTER)) % 360.0
    # dark yellow and dark orange read as olive and brown: keep them bright
    sat, val = rng.uniform(0.65, 1.0), rng.uniform(0.85 if colour in ("yellow", "orange") else 0.7, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue / 360.0, sat, val), dtype=np.float32) * 255.0


def _place(rng, owner, placed, visible, areas, sil, min_visible, min_pixels):
    """Top-left corner for ``sil`` keeping every placed object visible enough, or None."""
    size, w = owner.shape[0], sil.shape[0]
    for _ in range(_PLACEMENT_TRIES):
        if placed and rng.random() < _NEAR_PROB:
            (ox, oy, ow) = placed[int(rng.integers(len(placed)))]
            angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.9) * (ow + w) / 2
            cx, cy = ox + ow / 2 + dist * math.cos(angle), oy + ow / 2 + dist * math.sin(angle)
            x0, y0 = int(round(cx - w / 2)), int(round(cy - w / 2))
            x0, y0 = min(max(x0, 0), size - w), min(max(y0, 0), size - w)
        else:
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - w + 1))
        covered = owner[y0:y0 + w, x0:x0 + w][sil]
        lost = np.bincount(covered[covered >= 0], minlength=len(visible))
        left = np.asarray(visible) - lost[: len(visible)]
        if all(left[k] >= min_visible * areas[k] and left[k] >= min_pixels for k in range(len(visible))):
            return x0, y0, left
    return None


def compose_scene(
    rng: np.random.Generator, specs: list[ObjectSpec], image_size: int, min_visible: float, pixel_noise: float
) -> Scene:
    """Draw ``specs`` in order on a random background; objects that find no place are left out.

    Every kept object keeps at least ``min_visible`` of its silhouette visible and a minimum pixel count.
    pixel_noise: the largest std (0-255 scale) of the Gaussian noise added to the whole image.
    """
    size = image_size
    owner = np.full((size, size), -1, dtype=np.int16)
    min_pixels = _MIN_PIXEL_FRACTION * size * size
    placed, visible, areas, kept = [], [], [], []
    for spec in specs:
        lo, hi = SIZE_FRACTIONS[spec.size]
        sil = silhouette(spec.shape, rng.uniform(lo, hi) * size, rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
        if sil.shape[0] > size:
            continue
        spot = _place(rng, owner, placed, visible, areas, sil, min_visible, min_pixels)
        if spot is None:
            continue
        x0, y0, left = spot
        w = sil.shape[0]
        owner[y0:y0 + w, x0:x0 + w][sil] = len(kept)
        visible = [int(v) for v in left] + [int(sil.sum())]
        areas.append(int(sil.sum()))
        placed.append((x0, y0, w))
        kept.append(spec)

    image = background(rng, size)
    objects = []
    for k, spec in enumerate(kept):
        x0, y0, w = placed[k]
        window = owner[y0:y0 + w, x0:x0 + w] == k  # the object lies inside its placement window
        rows, cols = np.nonzero(window)
        angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.18)
        offset = (cols - (w - 1) / 2.0) * math.cos(angle) + (rows - (w - 1) / 2.0) * math.sin(angle)
        light = (1.0 + strength * offset / (w / 2.0)).astype(np.float32)  # a soft shading across the object
        image[rows + y0, cols + x0] = _object_rgb(rng, spec.colour)[None, :] * light[:, None]
        mask = np.zeros((size, size), dtype=bool)
        mask[y0:y0 + w, x0:x0 + w] = window
        bbox = (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1)
        objects.append(SceneObject(spec.shape, spec.colour, spec.size, mask, bbox, visible[k] / areas[k]))
    if pixel_noise > 0:
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        image += noise * np.float32(rng.uniform(0.25, 1.0) * pixel_noise)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), objects)
