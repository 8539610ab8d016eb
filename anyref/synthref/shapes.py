"""Silhouettes of the six SynthRef shapes, rasterised without anti-aliasing (so masks are exact)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["silhouette"]

_STAR_INNER = 0.45  # inner radius of the star's notches, relative to its tips
_CROSS_ARM = 0.36  # half width of the cross's arms, relative to its half extent


def _outline(shape: str) -> list[tuple[float, float]]:
    """Polygon vertices in units of the half extent, image orientation (y grows downwards), centred on 0."""
    if shape == "square":
        s = 0.86
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "diamond":  # a rhombus taller than wide, so it never looks like a slightly turned square
        return [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    if shape == "triangle":  # points up; scaled so it spans about the full extent
        r = 1.12
        return [(r * math.cos(a), r * math.sin(a) + 0.22) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else _STAR_INNER
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
        return pts
    if shape == "cross":
        a, b = _CROSS_ARM, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                (-a, -a)]
    raise ValueError(f"unknown shape {shape!r}")


def silhouette(shape: str, extent: float, rotation: float = 0.0) -> np.ndarray:
    """The filled shape on its own small grid.

    shape: one of vocabulary.SHAPES. extent: the shape's overall size in pixels (circle diameter, ~star tip to tip).
    rotation: in degrees, clockwise on screen. Returns w x w bool with w = ceil(extent) + 2, the shape centred in it.
    """
    w = int(math.ceil(extent)) + 2
    half = extent / 2.0
    centre = (w - 1) / 2.0
    if shape == "circle":
        yy, xx = np.mgrid[0:w, 0:w]
        return (xx - centre) ** 2 + (yy - centre) ** 2 <= half * half
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    points = [(centre + half * (x * cos - y * sin), centre + half * (x * sin + y * cos)) for x, y in _outline(shape)]
    canvas = Image.new("L", (w, w), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)  # mode "L" polygons are not anti-aliased
    return np.asarray(canvas) > 0
