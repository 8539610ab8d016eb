"""Flickr30K Entities in its released layout: phrases of Flickr30K's captions grounded to boxes, read as region
captions (a box -> the phrases that name what is in it), one of the paper's region-captioning training sets.

    flickr30k_entities/                 the annotations' repository, with annotations.zip unpacked
        train.txt, val.txt, test.txt    image ids of each split, one per line
        Sentences/36979.txt             five captions, each phrase marked "[/EN#137644/people A group of friends]"
        Annotations/36979.xml           VOC-style: <size>, and <object>s with one or more <name> (entity ids) and a
                                        <bndbox> (1-based, inclusive pixels) or <nobndbox> / <scene>
    flickr30k-images/36979.jpg          Flickr30K's images (found beside or below the annotations, or ``images``)

One item per entity with exactly one box (a phrase naming several boxes, "two men", is no one region's caption)
that some caption names: references [its Box], task "describe", the ground truth all the phrases naming it.
Flickr30K Entities has no masks, so the items have none.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from anyref.references import Box
from anyref.samples import ReferringSample
from eval.datasets._common import first_existing, read_image, require_dir, require_file

__all__ = ["Flickr30kReader", "FLICKR30K_SPLITS", "read_phrases", "read_boxes"]

FLICKR30K_SPLITS = ("train", "val", "test")
PHRASE = re.compile(r"\[/EN#(\d+)/[^\s\]]*\s+([^\]]*)\]")  # "[/EN#18/people A man]" -> ("18", "A man")


def read_phrases(path: Path) -> dict[str, list[str]]:
    """entity id -> the phrases naming it in the image's captions, in caption order, each once."""
    phrases: dict[str, list[str]] = {}
    for entity, phrase in PHRASE.findall(require_file(path, "Flickr30K Entities sentence file").read_text("utf-8")):
        if entity != "0" and phrase.strip() and phrase.strip() not in phrases.get(entity, []):  # 0: not visual
            phrases.setdefault(entity, []).append(phrase.strip())
    return phrases


def read_boxes(path: Path) -> dict[str, list[Box]]:
    """entity id -> its boxes, in pixel corners (x0, y0, x1, y1) from the file's 1-based inclusive ones."""
    try:
        root = ElementTree.parse(require_file(path, "Flickr30K Entities annotation file")).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"could not read {path} ({error}); is annotations.zip unpacked whole?") from error
    boxes: dict[str, list[Box]] = {}
    for item in root.iter("object"):
        corners = item.find("bndbox")
        if corners is None:
            continue  # an entity not visible, or the whole scene
        xmin, ymin, xmax, ymax = (float(corners.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        for name in item.findall("name"):  # a box may belong to several entities
            boxes.setdefault(name.text.strip(), []).append(Box(xmin - 1.0, ymin - 1.0, xmax, ymax))
    return boxes


class Flickr30kReader:
    """Region-captioning samples, one per single-box entity: references [Box], task "describe", answer [its first
    phrase], masks none. meta: ref_id ("{image}_{entity}"), image_id, entity, sentences (all its phrases, what
    CIDEr / METEOR score against), box."""

    def __init__(self, data: str | Path, split: str = "val", images: Optional[str | Path] = None) -> None:
        root = require_dir(data, "Flickr30K Entities folder", "pass --data pointing at flickr30k_entities/, which "
                                                              "holds Sentences/, Annotations/ and test.txt")
        if split not in FLICKR30K_SPLITS:
            raise ValueError(f"unknown split {split!r} for flickr30k; available: {', '.join(FLICKR30K_SPLITS)}")
        ids = require_file(root / f"{split}.txt", "Flickr30K Entities split file",
                           "it comes with the annotations' repository").read_text().split()
        self.items: list[tuple[str, str, Box, list[str]]] = []
        for image_id in ids:
            phrases, boxes = read_phrases(root / "Sentences" / f"{image_id}.txt"), \
                read_boxes(root / "Annotations" / f"{image_id}.xml")
            self.items += [(image_id, entity, boxes[entity][0], named) for entity, named in phrases.items()
                           if len(boxes.get(entity, ())) == 1]
        if images is not None:
            self.images = require_dir(images, "Flickr30K image folder")
        else:
            self.images = first_existing([root / "flickr30k-images", root.parent / "flickr30k-images",
                                          root / "images", root.parent / "images"], "Flickr30K image folder",
                                         "give --images, the folder of Flickr30K's {image_id}.jpg files", kind="dir")
        if self.items and not (self.images / f"{self.items[0][0]}.jpg").is_file():
            raise FileNotFoundError(f"image {self.images / self.items[0][0]}.jpg does not exist; the image folder "
                                    "must hold Flickr30K's images named {image_id}.jpg")
        self.dataset, self.split = "flickr30k", split
        self._cached: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        image_id, entity, box, phrases = self.items[item]
        if self._cached is None or self._cached[0] != image_id:  # an image's entities are consecutive items
            self._cached = (image_id, read_image(self.images / f"{image_id}.jpg"))
        image = self._cached[1]
        box = box.clipped(image.shape[1], image.shape[0])
        return ReferringSample(image=image, references=[box], task="describe", answer=[phrases[0]],
                               masks=np.zeros((0, *image.shape[:2]), dtype=bool), source=self.dataset,
                               meta={"ref_id": f"{image_id}_{entity}", "image_id": image_id, "entity": entity,
                                     "sentences": phrases, "box": box.as_tuple()})
