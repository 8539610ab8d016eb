"""Semantic segmentation as referring data (AnyRef's first data group) from label maps: ADE20K's and COCO-Stuff's
released layouts (``layout``; PACO-LVIS, the third, is COCO-format JSON: train.paco_lvis).

    ADEChallengeData2016/                            layout "ade20k"
        images/training/ADE_train_00000001.jpg       (validation/ for the val split)
        annotations/training/ADE_train_00000001.png  (class index per pixel: 1..150, 0 = other / ignored)
        objectInfo150.txt                            (tab-separated Idx Ratio Train Val Name; "pool table, billiard
                                                      table, ...": the first synonym is used)

    cocostuff/                                       layout "cocostuff": COCO-Stuff 164K as its README sets it up
        labels.txt                                   ("0: unlabeled", "1: person", ... "182: wood"; the repository's)
        dataset/images/train2017/000000000009.jpg    (val2017/ for the val split; COCO 2017's images)
        dataset/annotations/train2017/000000000009.png  (stuffthingmaps_trainval2017.zip: pixel value = label - 1,
                                                      255 = unlabeled)

``data`` is the folder holding images/ and annotations/ (for COCO-Stuff, dataset/ or the folder above it);
``images`` overrides where the images are (e.g. a COCO train2017 folder kept elsewhere), and the label maps may also
sit directly below ``data`` (``data/train2017/*.png``, as LISA's copies keep them).

A sample is one category present in an image: "the {category}" -> "{category} <obj>." with the category's mask.
COCO-Stuff's names are made plain ("building-other" -> "building", "wall-brick" -> "wall brick").
``classes`` may instead name a CSV with Idx and Name columns whose names are written plainly, a text file of
"index: name" lines, or one with one category per line (line i is class index i). semantic-segmentation-pytorch's
object150_info.csv is refused: it writes the spaces inside a name and the separators between synonyms alike as
";" ("pool;table;billiard;table").
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import first_existing, read_image, read_labels, require_dir, require_file

__all__ = ["SemSegReader", "LAYOUTS", "read_class_names", "plain_name"]


@dataclass(frozen=True)
class LabelMapLayout:
    """Where a label-map dataset keeps its files, and how a pixel value names a class."""

    dataset: str
    split_dirs: dict          # split -> the folder name below images/ and annotations/
    roots: tuple              # where images/ and annotations/ may sit below ``data``
    class_files: tuple        # the class-name file's usual places below ``data``
    label_offset: int         # class index = pixel value + label_offset
    ignore: int | None        # the pixel value of unlabelled pixels (besides class indices not named)
    plain_names: bool         # names written "building-other", "wall-brick"
    hint: str                 # what ``data`` should be


LAYOUTS = {
    "ade20k": LabelMapLayout("ade20k", {"train": "training", "val": "validation"}, (".",), ("objectInfo150.txt",),
                             0, None, False, "ADE20K's ADEChallengeData2016 folder, holding images/ and annotations/"),
    "cocostuff": LabelMapLayout("cocostuff", {"train": "train2017", "val": "val2017"}, ("dataset", "."),
                                ("labels.txt", "../labels.txt", "dataset/labels.txt"), 1, 255, True,
                                "COCO-Stuff's folder holding dataset/images/ and dataset/annotations/ (or dataset/ "
                                "itself)"),
}


def plain_name(name: str) -> str:
    """A dataset's category name as words: COCO-Stuff's "-other" / "-stuff" suffixes dropped and its hyphens, LVIS's
    underscores and "_(sense)" qualifiers made plain ("building-other" -> "building", "bottle_(drink)" ->
    "bottle")."""
    name = re.sub(r"_\(.*?\)", "", name)
    name = re.sub(r"-(other|stuff)$", "", name)
    return re.sub(r"[-_]+", " ", name).strip()


def read_class_names(path: Path) -> dict[int, str]:
    """index -> name from ADE20K's objectInfo150.txt (tab-separated, its Idx and Name columns, the first of the
    comma-separated synonyms), a CSV with Idx and Name columns, a text file of "index: name" lines (COCO-Stuff's
    labels.txt), or a text file of one name per line."""
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
    numbered = [re.match(r"^\s*(\d+)\s*:\s*(.+?)\s*$", line) for line in text.splitlines() if line.strip()]
    if numbered and all(numbered):
        return {int(match.group(1)): match.group(2) for match in numbered}
    if any(numbered):
        raise ValueError(f"{path} numbers some lines (\"1: person\") and not others; number every line or none")
    return {index: name.strip() for index, name in enumerate(text.splitlines(), 1) if name.strip()}


class SemSegReader:
    """Images of one split with their label maps; ``sample(item, rng)`` picks one present category."""

    def __init__(self, data: str | Path, classes: Optional[str | Path] = None, split: str = "train",
                 layout: str = "ade20k", images: Optional[str | Path] = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown semantic-segmentation layout {layout!r}; available: {sorted(LAYOUTS)} "
                             "(PACO-LVIS: layout \"paco_lvis\" of the semseg source)")
        self.layout = spec = LAYOUTS[layout]
        data = require_dir(data, f"{layout} root", spec.hint)
        if split not in spec.split_dirs:
            raise ValueError(f"unknown split {split!r}; available: {sorted(spec.split_dirs)}")
        folder = spec.split_dirs[split]
        tried = [data / root / "annotations" / folder for root in spec.roots] + [data / folder]
        self.labels = first_existing(tried, f"{layout} label-map folder", spec.hint, kind="dir")
        self.images = (require_dir(images, f"{layout} image folder") if images is not None else
                       first_existing([data / root / "images" / folder for root in spec.roots],
                                      f"{layout} image folder", 'or give "images", the folder of its .jpg files',
                                      kind="dir"))
        class_file = Path(classes) if classes else first_existing(
            [data / name for name in spec.class_files], f"{layout} class-name file",
            'give "classes"' + (", COCO-Stuff's labels.txt from its repository" if layout == "cocostuff" else ""))
        names = read_class_names(class_file)
        # pixel value -> name (COCO-Stuff's "0: unlabeled" has no pixel value: it is written 255)
        self.names = {index - spec.label_offset: (plain_name(name) if spec.plain_names else name)
                      for index, name in names.items() if 0 <= index - spec.label_offset != spec.ignore}
        self.files = sorted(p.stem for p in self.labels.glob("*.png"))
        if self.files and not (self.images / f"{self.files[0]}.jpg").is_file():
            raise FileNotFoundError(f"{self.images / self.files[0]}.jpg, the image of label map "
                                    f"{self.labels / self.files[0]}.png, does not exist; " + 'give "images", the '
                                    "folder of the split's .jpg files")
        self.dataset = spec.dataset

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
        value = present[int(rng.integers(len(present)))]
        name = self.names[value]
        return ReferringSample(image=image, references=[f"the {name}"], answer=[name, " ", OBJ, "."],
                               masks=(labels == value)[None], source=self.dataset,
                               meta={"file": stem, "category_id": value + self.layout.label_offset, "category": name})
