"""Image referring from PhraseCut, the paper's third image-level referring set ("PhraseCut crops of same-category
objects"): the crop of one annotated object from one Visual Genome image points at every annotated object of its
category in another, drawn as :class:`eval.datasets.image_referring.ExampleDraws` draws.

The layout is :mod:`eval.datasets.phrasecut`'s (refer_{split}.json + images/). An object's category is its phrase's
``phrase_structure.name`` ("man", "window"); a category is drawn only when two images show it. The example is the
image cropped to the object's polygons' bounding box (with its mask inside that crop when the draw is masked, which
the model then blacks out around); the target is the union of the polygons of every task of the category in the
query image. PhraseCut annotates the objects its phrases name, not every object of a category, so an unannotated
object of the category can sit outside the target - a limit of the data, not of the draw.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from eval.datasets.image_referring import ExampleDraws
from eval.datasets.phrasecut import PhraseCutReader, polygons_mask

__all__ = ["PhraseCutImageReferringReader"]


def _category(name: str) -> str:
    return " ".join(name.lower().split())


def _ann_ids(task: dict) -> list:
    """Visual Genome's object id of each of the task's instances, or None for each where they do not line up."""
    ann_ids = task["ann_ids"]
    return list(ann_ids) if len(ann_ids) == len(task["Polygons"]) else [None] * len(task["Polygons"])


class PhraseCutImageReferringReader(ExampleDraws):
    """Example-image referring samples over a PhraseCut split (``items`` draws). An instance is an index into
    ``instances``, (task index, instance index within the task). meta: query_image_id, example_image_id,
    example_instance, example_ann_id (None where the task lists no ann_ids), example_task_id, category, masked."""

    def __init__(self, data: str | Path, split: str = "train", images: Optional[str | Path] = None,
                 items: int = 100_000, seed: int = 0, masked: float = 0.5) -> None:
        if not 0.0 <= masked <= 1.0:
            raise ValueError(f"masked must be a probability in [0, 1], got {masked}")
        self.phrasecut = PhraseCutReader(data, split, images)
        self.instances: list[tuple[int, int]] = []
        self.by_category: dict[str, dict[int, list[int]]] = {}  # category -> image -> its instances
        self._tasks: dict[tuple[str, int], list[int]] = {}  # (category, image) -> its tasks, for the target
        seen: set[tuple[int, object]] = set()  # (image, ann_id): phrases naming one object share its ann_id
        for index, task in enumerate(self.phrasecut.tasks):
            category = _category(task["name"])
            if not category:
                continue
            image = task["image_id"]
            self._tasks.setdefault((category, image), []).append(index)
            for k, ann_id in enumerate(_ann_ids(task)):
                if ann_id is not None and (image, ann_id) in seen:
                    continue
                seen.add((image, ann_id))
                self.by_category.setdefault(category, {}).setdefault(image, []).append(len(self.instances))
                self.instances.append((index, k))
        self.categories = sorted(c for c, shown_in in self.by_category.items() if len(shown_in) >= 2)
        if not self.categories:
            raise ValueError(f"PhraseCut split {split} has no category (phrase_structure name) shown in two images; "
                             "image referring needs both")
        self.items, self.seed, self.masked = items, seed, masked
        self.dataset, self.split = "phrasecut-image-referring", split

    def _pixels(self, image: int) -> np.ndarray:
        return self.phrasecut.image(image)

    def _instance_mask(self, image: int, instance: int) -> np.ndarray:
        task, k = self.instances[instance]
        return polygons_mask([self.phrasecut.tasks[task]["Polygons"][k]], *self._pixels(image).shape[:2])

    def _example(self, image: int, instance: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and the object's mask cropped to the box of the object's polygons (at least 1 x 1 pixel)."""
        pixels, mask = self._pixels(image), self._instance_mask(image, instance)
        task, k = self.instances[instance]
        points = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 2)
                                 for p in self.phrasecut.tasks[task]["Polygons"][k]])
        height, width = pixels.shape[:2]
        x0, y0 = (int(np.clip(np.floor(v), 0, size - 1)) for v, size in zip(points.min(0), (width, height)))
        x1, y1 = (int(np.clip(np.ceil(v), low + 1, size)) for v, low, size in zip(points.max(0), (x0, y0),
                                                                                   (width, height)))
        return pixels[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1]

    def _target(self, category: str, image: int) -> np.ndarray:
        height, width = self._pixels(image).shape[:2]
        return polygons_mask([instance for task in self._tasks[(category, image)]
                              for instance in self.phrasecut.tasks[task]["Polygons"]], height, width)

    def _name(self, category: str) -> str:
        return category

    def _meta(self, query: int, example: int, instance: int, category: str) -> dict:
        task, k = self.instances[instance]
        return {"query_image_id": query, "example_image_id": example, "example_instance": instance,
                "example_ann_id": _ann_ids(self.phrasecut.tasks[task])[k],
                "example_task_id": self.phrasecut.tasks[task]["task_id"]}
