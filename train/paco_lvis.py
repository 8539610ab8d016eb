"""PACO-LVIS as semantic-segmentation referring data: objects and their parts, one category per sample.

    paco/annotations/paco_lvis_v1_train.json   (paco_lvis_v1_val.json, paco_lvis_v1_test.json) COCO-format JSON:
                                               images {id, file_name, height, width}, annotations {image_id,
                                               category_id, segmentation: RLE}, categories {id, name: "mug" for an
                                               object, "mug:handle" for one of its parts}
    coco/train2017/000000000009.jpg            COCO 2017's images; file_name is relative to this root

``data`` is the annotation file, or the folder holding ``paco_lvis_v1_{split}.json``; ``images`` is the folder the
images' file_name is relative to (COCO's root, holding train2017/ and val2017/).

A sample is one category present in an image, its mask the union of that category's annotations there: "the mug"
-> "mug <obj>.", "the handle of the mug" -> "handle of the mug <obj>." (LVIS's "_(sense)" qualifiers and
underscores made plain).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import first_existing, require_dir, require_file
from eval.datasets.refer import ReferIndex, find_image_dir
from train.semseg import plain_name

__all__ = ["PacoLvisReader", "part_phrase"]

SPLITS = ("train", "val", "test")


def part_phrase(name: str) -> str:
    """PACO's category name as a phrase: "mug" -> "mug", "mug:handle" -> "handle of the mug"."""
    whole, _, part = name.partition(":")
    return f"{plain_name(part)} of the {plain_name(whole)}" if part else plain_name(whole)


class PacoLvisReader:
    """Images of one PACO-LVIS split; ``sample(item, rng)`` picks one object or part category present in it."""

    def __init__(self, data: str | Path, images: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for paco_lvis; available: {', '.join(SPLITS)}")
        path = Path(data)
        if path.is_dir():
            name = f"paco_lvis_v1_{split}.json"
            path = first_existing([path / name, path / "annotations" / name], f"PACO-LVIS annotation file {name}",
                                  'give "data", the file or the folder holding it')
        require_file(path, "PACO-LVIS annotation file", f"give paco_lvis_v1_{split}.json or the folder holding it")
        require_dir(images, "PACO-LVIS image root", "COCO's folder holding train2017/ and val2017/, which the "
                                                    "annotations' file_name is relative to")
        self.index = ReferIndex(path, [], images, (".",), None)
        self.image_ids = sorted(self.index.annotations_of_image)
        if self.image_ids:  # a wrong image root fails now, not hours into a run
            first = self.index.image_info(self.image_ids[0])["file_name"]
            self.index.image_dir = find_image_dir([], images, (".",), first)
        self.phrases = {cat_id: part_phrase(name) for cat_id, name in self.index.categories.items()}
        self.dataset = "paco_lvis"

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample(self, item: int, rng: np.random.Generator) -> ReferringSample:
        image_id = self.image_ids[item]
        image = self.index.image(image_id)
        ann_ids = self.index.annotations_of_image[image_id]
        categories = sorted({self.index.annotation(a)["category_id"] for a in ann_ids})
        category = categories[int(rng.integers(len(categories)))]
        mask = np.zeros(image.shape[:2], dtype=bool)
        for ann_id in ann_ids:
            if self.index.annotation(ann_id)["category_id"] == category:
                mask |= self.index.mask(ann_id)
        phrase = self.phrases.get(category, str(category))
        return ReferringSample(image=image, references=[f"the {phrase}"], answer=[phrase, " ", OBJ, "."],
                               masks=mask[None], source=self.dataset,
                               meta={"image_id": image_id, "category_id": category, "category": phrase,
                                     "file_name": self.index.image_info(image_id)["file_name"]})
