"""Reference types: what a user can point at an image with.

A reference is one of
- ``str``: a referring expression ("the small red circle");
- :class:`Box`: a box in the query image's own pixel coordinates;
- :class:`ExampleImage`: another image showing an object of the wanted kind (optionally with its mask);
- :class:`Audio`: a sound (a file path or a waveform) made by the wanted object(s);
- :class:`MaskRef`: a mask on the query image (mask-group prompts, RAS);
or a list of these, read left to right as one expression ("the object left of", Box(...)).

The classes only hold and validate what the user gave; turning them into tokens is the model's job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["Box", "ExampleImage", "Audio", "MaskRef", "Reference", "as_reference_list"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x0, y0, x1, y1)`` in pixels of the image it refers to; x1 > x0 and y1 > y0."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(c, (int, float, np.integer, np.floating)) for c in coords):
            raise TypeError(f"Box coordinates must be numbers, got {coords!r}")
        if not all(math.isfinite(float(c)) for c in coords):
            raise ValueError(f"Box coordinates must be finite, got {coords!r}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(
                f"Box needs x1 > x0 and y1 > y0 (corners as x0, y0, x1, y1), got {coords!r}"
            )

    def clipped(self, width: int, height: int) -> "Box":
        """The box clipped to a ``width`` x ``height`` image; raises if nothing of it lies inside."""
        x0, x1 = min(max(self.x0, 0.0), width), min(max(self.x1, 0.0), width)
        y0, y1 = min(max(self.y0, 0.0), height), min(max(self.y1, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"Box {self.as_tuple()} lies entirely outside the {width}x{height} image; "
                "give it in the query image's pixel coordinates"
            )
        return Box(float(x0), float(y0), float(x1), float(y1))

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (float(self.x0), float(self.y0), float(self.x1), float(self.y1))

    def grown(self, fraction: float) -> "Box":
        """The box with each side moved out by ``fraction`` (>= 0) of the box's width (left, right) or height."""
        if not fraction >= 0:
            raise ValueError(f"a box grows by a fraction >= 0 of its sides, got {fraction}")
        dx, dy = fraction * (self.x1 - self.x0), fraction * (self.y1 - self.y0)
        return Box(float(self.x0 - dx), float(self.y0 - dy), float(self.x1 + dx), float(self.y1 + dy))

    @classmethod
    def around(cls, mask: np.ndarray) -> "Box":
        """The bounding box of an H x W bool mask's pixels (x1 / y1 exclusive); raises for an empty mask."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or not mask.any():
            raise ValueError(f"a box around a mask needs a non-empty H x W mask, got shape {mask.shape} "
                             f"with {int(mask.sum())} pixels set")
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return cls(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))

    def mask(self, height: int, width: int) -> np.ndarray:
        """height x width bool: every pixel the box touches (its corners rounded outwards), clipped to the image."""
        out = np.zeros((height, width), dtype=bool)
        x0, y0 = max(int(math.floor(self.x0)), 0), max(int(math.floor(self.y0)), 0)
        out[y0:max(int(math.ceil(self.y1)), 0), x0:max(int(math.ceil(self.x1)), 0)] = True
        return out


@dataclass(frozen=True, eq=False)
class ExampleImage:
    """An example of the wanted object kind, from another image.

    image: a path, a PIL image or an H x W x 3 uint8 array. mask: optional H x W bool array at the example's size;
    with a mask the example is cropped to the mask's bounding box and everything outside the mask is set to black.
    Without one, a model with ``config.example_self_mask`` masks it first with its own answer on the example.
    """

    image: object
    mask: object = None


@dataclass(frozen=True, eq=False)
class Audio:
    """A sound made by the wanted object(s).

    source: a path to an audio file (read with soundfile), or a waveform as a float array/tensor, [T] or [C, T].
    sample_rate: required for a waveform; ignored (read from the file) for a path.
    """

    source: object
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, (str, Path)) and self.sample_rate is None:
            raise ValueError("Audio from a waveform needs its sample_rate, e.g. Audio(wave, sample_rate=16000)")


@dataclass(frozen=True, eq=False)
class MaskRef:
    """A reference mask on the query image: H x W bool array at the query image's size."""

    mask: object


Reference = Union[str, Box, ExampleImage, Audio, MaskRef]
REFERENCE_TYPES = (str, Box, ExampleImage, Audio, MaskRef)


def as_reference_list(ref: object) -> list[Reference]:
    """Normalise a user's ``ref`` argument to a non-empty list of references; raises on anything else."""
    items = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    if not items:
        raise ValueError("ref is an empty list: give a text, Box, ExampleImage, Audio or MaskRef")
    for item in items:
        if not isinstance(item, REFERENCE_TYPES):
            raise TypeError(
                f"unsupported reference {type(item).__name__}: use a str, Box, ExampleImage, Audio or MaskRef"
            )
        if isinstance(item, str) and not item.strip():
            raise ValueError("empty text reference: give a referring expression such as 'the red circle'")
    return items
