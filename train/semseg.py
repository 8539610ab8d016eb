"""Semantic segmentation as referring data (AnyRef's first data group): ADE20K's released layout.

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg       (validation/ for the val split)
        annotations/training/ADE_train_00000001.png  (class index per pixel: 1..150, 0 = other / ignored)
        objectInfo150.txt                            (tab-separated Idx Ratio Train Val Name; "pool table, billiard
                                                      table, ...": the first synonym is used)

A sample is one category present in an image: "the {category}" -> "{category} <obj>." with the category's mask.
``classes`` may instead name a CSV with Idx and Name columns whose names are written plainly, or a text file with
one category per line (line i is class index i). semantic-segmentation-pytorch's object150_info.csv is refused: it
writes the spaces inside a name and the separators between synonyms alike as ";" ("pool;table;billiard;table").
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import read_image, read_labels, require_dir, require_file

__all__ = ["SemSegReader", "read_class_names"]

SPLIT_DIRS = {"train": "training", "val": "validation"}


def read_class_names(path: Path) -> dict[int, str]:
    """index -> name from ADE20K's objectInfo150.txt (tab-separated, its Idx and Name columns, the first of the
    comma-separated synonyms), a CSV with Idx and Name columns, or a text file of one name per line."""
    path = require_file(path, "class-name file", "ADE20K's objectInfo150.txt, or one name per line")
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text.strip() else ""
    if path.suffix == ".csv" or "\t" in first:
        rows = list(csv.DictReader(text.splitlines(), delimiter="," if path.suffix == ".csv" else "\t"))
        if not rows or "Idx" not in rows[0] or "Name" not in rows[0]:
            raise ValueError(f"{path} has no Idx and Name columns; is it ADE20K's objectInfo150.txt?")
        if any(";" in row["Name"] for row in rows):
            raise ValueError(f"{path} writes names with ';' for spaces and synonym separators alike "
                             "('pool;table;billiard;table'), so a name cannot be read from it; give ADE20K's own "
                             "objectInfo150.txt (ADEChallengeData2016/) instead")
        return {int(row["Idx"]): row["Name"].split(",")[0].strip() for row in rows}
    if first.replace(",", " ").split()[:1] == ["Idx"]:
        raise ValueError(f"{path} starts with a header ({first!r}); a names file holds one name per line")
    return {index: name.strip() for index, name in enumerate(text.splitlines(), 1) if name.strip()}


class SemSegReader:
    """Images of one split with their label maps; ``sample(item, rng)`` picks one present category."""

    def __init__(self, data: str | Path, classes: Optional[str | Path] = None, split: str = "train") -> None:
        root = require_dir(data, "ADE20K root", "the folder holding images/ and annotations/")
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown split {split!r}; available: {sorted(SPLIT_DIRS)}")
        self.images = require_dir(root / "images" / SPLIT_DIRS[split], "ADE20K image folder")
        self.labels = require_dir(root / "annotations" / SPLIT_DIRS[split], "ADE20K annotation folder")
        self.names = read_class_names(Path(classes) if classes else root / "objectInfo150.txt")
        self.files = sorted(p.stem for p in self.images.glob("*.jpg"))
        self.dataset = "ade20k"

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, item: int, rng: np.random.Generator) -> ReferringSample:
        stem = self.files[item]
        image = read_image(self.images / f"{stem}.jpg")
        labels = read_labels(self.labels / f"{stem}.png")
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map {self.labels / stem}.png is {labels.shape[::-1]} but the image is "
                             f"{image.shape[1::-1]}")
        present = [int(c) for c in np.unique(labels) if int(c) in self.names]
        if not present:
            raise ValueError(f"{self.labels / stem}.png has no labelled category")
        category = present[int(rng.integers(len(present)))]
        name = self.names[category]
        return ReferringSample(image=image, references=[f"the {name}"], answer=[name, " ", OBJ, "."],
                               masks=(labels == category)[None], source=self.dataset,
                               meta={"file": stem, "category_id": category, "category": name})
