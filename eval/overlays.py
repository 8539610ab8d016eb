"""Overlay PNG files of a runner's samples (the pictures themselves: anyref.overlays)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from anyref.overlays import render_overlay
from anyref.references import Box

__all__ = ["OverlayWriter"]


class OverlayWriter:
    """Writes ``{index:05d}_{name}.png`` files into ``directory`` (created if needed)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def save(self, index: int, name: str, image: np.ndarray, text: str, pred: Optional[np.ndarray] = None,
             gt: Optional[np.ndarray] = None, boxes: Sequence[Box] = (),
             reference_masks: Sequence[np.ndarray] = ()) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:60].strip("_") or "sample"
        path = self.directory / f"{index:05d}_{safe}.png"
        render_overlay(image, text, pred, gt, boxes, reference_masks).save(path)
        self.written += 1
        return path
