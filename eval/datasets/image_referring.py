"""Image referring (AnyRef's "image-level referring" training data): an example of a category from one image points
at every object of that category in another. From COCO-format instance annotations here; from PASCAL VOC's
segmentation masks in :mod:`eval.datasets.voc_image_referring`, drawn the same way (:class:`ExampleDraws`).

    reader = ImageReferringReader("coco/annotations/instances_train2014.json", images="coco/train2014")
    sample = reader[i]   # references [ExampleImage(other image, mask=one instance)], answer ["dog", " ", OBJ, "."]

Item ``i`` is drawn deterministically from (seed, i): a query image and one of its categories, then another image
holding that category and one of its instances as the example; with probability ``masked`` the example carries
the instance's mask (the model crops to it and blacks out the background, as AnyRef's supplementary does),
otherwise the whole example image is given. The target is the union of the category's non-crowd instances in the
query image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from anyref.references import ExampleImage
from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import require_file
from eval.datasets.refer import COCO_IMAGE_DIRS, ReferIndex, find_image_dir

__all__ = ["ImageReferringReader", "ExampleDraws"]


class ExampleDraws:
    """Item ``i`` of an image-referring reader, drawn from (seed, i) over ``by_category`` (category -> image -> its
    instances, only categories shown in two images). A reader sets ``by_category``, ``categories``, ``items``,
    ``seed``, ``masked`` and ``dataset``, and says how to read its images, instances and targets."""

    def _pixels(self, image) -> np.ndarray:
        raise NotImplementedError

    def _instance_mask(self, image, instance) -> np.ndarray:
        raise NotImplementedError

    def _target(self, category, image) -> np.ndarray:
        """H x W bool: every object of ``category`` in ``image``."""
        raise NotImplementedError

    def _name(self, category) -> str:
        raise NotImplementedError

    def _example(self, image, instance) -> tuple[np.ndarray, np.ndarray]:
        """(pixels H x W x 3, the instance's mask H x W bool) the example shows: the whole image by default."""
        return self._pixels(image).copy(), self._instance_mask(image, instance)  # copy: a reader may cache one image

    def _meta(self, query, example, instance, category) -> dict:
        return {"query_image_id": query, "example_image_id": example, "example_instance": instance}

    def __len__(self) -> int:
        return self.items

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        rng = np.random.default_rng([self.seed, item, 13])
        category = self.categories[int(rng.integers(len(self.categories)))]
        images = sorted(self.by_category[category])
        query, example = (images[int(i)] for i in rng.choice(len(images), size=2, replace=False))
        instances = self.by_category[category][example]
        instance = instances[int(rng.integers(len(instances)))]
        masked = bool(rng.random() < self.masked)
        example_pixels, mask = self._example(example, instance)
        if not mask.any():
            masked = False
        target = self._target(category, query)
        name = self._name(category)
        return ReferringSample(
            image=self._pixels(query), references=[ExampleImage(example_pixels, mask=mask if masked else None)],
            answer=[name, " ", OBJ, "."], masks=target[None], source=self.dataset,
            meta={**self._meta(query, example, instance, category), "category": name, "masked": masked})


class ImageReferringReader(ExampleDraws):
    """Example-image referring samples over an instances.json (``items`` draws). meta: query_image_id,
    example_image_id, example_ann_id, category, target_ann_ids, masked."""

    def __init__(self, instances: str | Path, images: Optional[str | Path] = None, items: int = 100_000,
                 seed: int = 0, masked: float = 0.5, exclude_image_ids: Iterable[int] = ()) -> None:
        path = require_file(instances, "COCO instances file", "pass the path of a COCO-format instances.json")
        if not 0.0 <= masked <= 1.0:
            raise ValueError(f"masked must be a probability in [0, 1], got {masked}")
        self.index = ReferIndex(path, [path.parent, path.parent.parent], images, COCO_IMAGE_DIRS, None)
        self.by_category: dict[int, dict[int, list[int]]] = {}  # category -> image -> its non-crowd annotations
        excluded = set(exclude_image_ids)  # a benchmark's images, kept out of training
        for ann_id, ann in self.index.annotations.items():
            if not ann.get("iscrowd", 0) and ann["image_id"] not in excluded:
                self.by_category.setdefault(ann["category_id"], {}).setdefault(ann["image_id"], []).append(ann_id)
        # a category can be referred to only when two different images show it
        self.categories = sorted(c for c, images in self.by_category.items() if len(images) >= 2)
        if not self.categories:
            raise ValueError(f"{path} has no category with instances in two images; image referring needs both")
        some_image = next(iter(self.by_category[self.categories[0]]))
        self.index.image_dir = find_image_dir([path.parent, path.parent.parent], images, COCO_IMAGE_DIRS,
                                              self.index.image_info(some_image)["file_name"])
        self.items, self.seed, self.masked = items, seed, masked
        self.dataset, self.split = "coco-image-referring", "train"

    def _pixels(self, image: int) -> np.ndarray:
        return self.index.image(image)

    def _instance_mask(self, image: int, instance: int) -> np.ndarray:
        return self.index.mask(instance)

    def _target(self, category: int, image: int) -> np.ndarray:
        first, *others = self.by_category[category][image]
        target = self.index.mask(first)
        for ann_id in others:
            target |= self.index.mask(ann_id)
        return target

    def _name(self, category: int) -> str:
        return self.index.categories.get(category, str(category))

    def _meta(self, query: int, example: int, instance: int, category: int) -> dict:
        return {"query_image_id": query, "example_image_id": example, "example_ann_id": instance,
                "target_ann_ids": list(self.by_category[category][query])}
