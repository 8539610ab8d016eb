"""VGPhraseCut (PhraseCut) in its released layout: referring segmentation of phrases over Visual Genome images.

    VGPhraseCut_v0/
        refer_train.json       (refer_val.json, refer_test.json, refer_miniv.json: one file per split) a list of
                               tasks: {task_id, image_id, phrase, phrase_structure: {name, ...}, ann_ids,
                               instance_boxes: [[x, y, w, h], ...], Polygons: [instance: [polygon: [[x, y], ...]]]}
        images/2345678.jpg     Visual Genome's images, named by image_id

A phrase may name several instances; its mask is the union of all their polygons (PhraseCut's own ground truth).
``images`` overrides the image folder (e.g. Visual Genome's VG_100K kept elsewhere).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import decode_segmentation, load_json, read_image, require_dir, require_file

__all__ = ["PhraseCutReader", "PHRASECUT_SPLITS", "polygons_mask"]

PHRASECUT_SPLITS = ("train", "val", "test", "miniv")


def polygons_mask(instances: list, height: int, width: int) -> np.ndarray:
    """H x W bool: the union of PhraseCut's ``Polygons`` (per instance, a list of polygons of [x, y] points, as
    lists or as arrays)."""
    flat = [np.asarray(polygon, dtype=float).ravel().tolist() for polygons in instances for polygon in polygons]
    return decode_segmentation(flat, height, width)


def _compact(task: dict) -> dict:
    """The fields a sample needs, each polygon a float32 array: refer_train.json's 310,000 tasks held as parsed
    JSON take gigabytes per training process, mostly in lists of [x, y] lists (measured with tracemalloc on
    20-point polygons: 150 bytes a point parsed, 26 compacted, the array headers included)."""
    return {"task_id": task["task_id"], "image_id": task["image_id"], "phrase": task["phrase"],
            "ann_ids": task.get("ann_ids", []), "name": (task.get("phrase_structure") or {}).get("name", ""),
            "Polygons": [[np.asarray(polygon, dtype=np.float32) for polygon in polygons]
                         for polygons in task["Polygons"]]}


class PhraseCutReader:
    """Referring segmentation samples, one per task: references [phrase], masks 1 x H x W (all its instances).

    meta: ref_id (the task_id), sent_id (0: one phrase per task), image_id, ann_ids, category (the phrase's name),
    expression, instances.
    """

    def __init__(self, data: str | Path, split: str = "val", images: Optional[str | Path] = None) -> None:
        root = require_dir(data, "PhraseCut folder", "pass --data pointing at VGPhraseCut_v0/, which holds "
                                                     "refer_val.json and images/")
        if split not in PHRASECUT_SPLITS:
            raise ValueError(f"unknown split {split!r} for phrasecut; available: {', '.join(PHRASECUT_SPLITS)}")
        tasks = load_json(require_file(root / f"refer_{split}.json", "PhraseCut task file",
                                       f"download the {split} split with PhraseCut's download_dataset.py"))
        if not isinstance(tasks, list):
            raise ValueError(f"{root / f'refer_{split}.json'} is not a list of tasks; is it PhraseCut's refer file?")
        for key in ("task_id", "image_id", "phrase", "Polygons"):
            if tasks and key not in tasks[0]:
                raise ValueError(f"{root / f'refer_{split}.json'}'s tasks have no {key!r}; is it PhraseCut's refer "
                                 "file (refer_input_*.json holds no masks)?")
        self.tasks = [_compact(task) for task in tasks]
        self.images = require_dir(images if images is not None else root / "images", "PhraseCut image folder",
                                  "give --images, the folder of Visual Genome's {image_id}.jpg files")
        if tasks and not (self.images / f"{tasks[0]['image_id']}.jpg").is_file():
            raise FileNotFoundError(f"image {self.images / str(tasks[0]['image_id'])}.jpg does not exist; the image "
                                    "folder must hold Visual Genome's images named {image_id}.jpg")
        self.dataset, self.split = "phrasecut", split
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def image(self, image_id: int) -> np.ndarray:
        """H x W x 3 uint8 Visual Genome image ``image_id`` (the last one read is kept)."""
        if self._cached is None or self._cached[0] != image_id:  # a split's tasks come grouped by image
            self._cached = (image_id, read_image(self.images / f"{image_id}.jpg"))
        return self._cached[1]

    def __getitem__(self, item: int) -> ReferringSample:
        task = self.tasks[item]
        image = self.image(task["image_id"])
        mask = polygons_mask(task["Polygons"], *image.shape[:2])
        phrase = task["phrase"]
        return ReferringSample(
            image=image, references=[phrase], task="segment", answer=[phrase, " ", OBJ, "."], masks=mask[None],
            source=self.dataset,
            meta={"ref_id": task["task_id"], "sent_id": 0, "image_id": task["image_id"],
                  "ann_ids": task["ann_ids"], "category": task["name"],
                  "expression": phrase, "instances": len(task["Polygons"])})
