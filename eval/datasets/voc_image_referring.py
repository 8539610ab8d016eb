"""Image referring from PASCAL VOC 2012's segmentation masks, the paper's second image-level referring set: an
example of a class from one image points at every object of that class in another (drawn as
:class:`eval.datasets.image_referring.ExampleDraws` draws).

    VOCdevkit/VOC2012/
        JPEGImages/2007_000032.jpg
        SegmentationClass/2007_000032.png     class per pixel: 0 background, 1..20 the classes, 255 boundary
        SegmentationObject/2007_000032.png    object per pixel: 0 background, 1..N, 255 boundary
        ImageSets/Segmentation/train.txt      (val.txt, trainval.txt) the split's image names

``data`` is VOC2012/ or the VOCdevkit/ above it. The example's instance mask is one object of the class; the target
is the class's pixels in the query image (the boundary band is neither). PASCAL-5i tests on VOC's val images: keep
training on the train split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.datasets._common import first_existing, read_image, read_labels, require_file
from eval.datasets.fewshot import PASCAL_CLASSES
from eval.datasets.image_referring import ExampleDraws

__all__ = ["VocImageReferringReader"]

BOUNDARY = 255


class VocImageReferringReader(ExampleDraws):
    """Example-image referring samples over a VOC 2012 segmentation split (``items`` draws). meta: query_image_id,
    example_image_id, example_instance (the object's value in SegmentationObject), category, masked."""

    def __init__(self, data: str | Path, split: str = "train", items: int = 100_000, seed: int = 0,
                 masked: float = 0.5) -> None:
        if not 0.0 <= masked <= 1.0:
            raise ValueError(f"masked must be a probability in [0, 1], got {masked}")
        root = Path(data)
        root = first_existing([root / "JPEGImages", root / "VOC2012" / "JPEGImages"], "VOC 2012 image folder",
                              "pass the VOC2012 folder (or VOCdevkit above it)", kind="dir").parent
        names = require_file(root / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC split list {split}.txt",
                             "the split lists come with VOC 2012's segmentation release").read_text().split()
        self.root = root
        self.by_category: dict[int, dict[str, list[int]]] = {}  # class -> image -> its objects
        for name in names:
            classes, objects = self._labels(name)
            for instance in np.unique(objects):
                if instance in (0, BOUNDARY):
                    continue
                values, counts = np.unique(classes[objects == instance], return_counts=True)
                category = int(values[np.argmax(counts)])  # an object's pixels carry its one class
                if category not in (0, BOUNDARY):
                    self.by_category.setdefault(category, {}).setdefault(name, []).append(int(instance))
        self.categories = sorted(c for c, images in self.by_category.items() if len(images) >= 2)
        if not self.categories:
            raise ValueError(f"VOC split {split} has no class shown in two images; image referring needs both")
        self.items, self.seed, self.masked = items, seed, masked
        self.dataset, self.split = "voc-image-referring", split

    def _label_map(self, kind: str, name: str) -> np.ndarray:
        """H x W uint8 ``kind`` ("SegmentationClass" or "SegmentationObject") map of image ``name``."""
        return read_labels(self.root / kind / f"{name}.png")

    def _labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(SegmentationClass, SegmentationObject) of ``name``, both H x W uint8, checked to be the same size."""
        classes, objects = self._label_map("SegmentationClass", name), self._label_map("SegmentationObject", name)
        if classes.shape != objects.shape:
            raise ValueError(f"{name}'s class and object masks differ in size ({classes.shape} vs {objects.shape})")
        return classes, objects

    def _pixels(self, image: str) -> np.ndarray:
        return read_image(self.root / "JPEGImages" / f"{image}.jpg")

    def _instance_mask(self, image: str, instance: int) -> np.ndarray:
        return self._label_map("SegmentationObject", image) == instance  # sizes were checked at start

    def _target(self, category: int, image: str) -> np.ndarray:
        return self._label_map("SegmentationClass", image) == category

    def _name(self, category: int) -> str:
        return PASCAL_CLASSES[category - 1]
