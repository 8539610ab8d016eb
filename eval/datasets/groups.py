"""Mask groups from COCO-format annotations, as RAS builds MaskGroups, for evaluation and training.

- :class:`ExpressionGroupReader`: (G)RES expressions as group prompts. Candidates are every non-crowd instance of
  the image (COCO's instances.json), the group is the expression's targets (gRefCOCO: several or none; RefCOCO
  family: one). ``anyref eval groups`` scores it.
- :class:`CocoGroupReader`: groups drawn from an instances.json by rules, each with and without a reference mask:
  by category ("all person", "everything of the same kind as" <mask>), by absolute position ("everything in the
  left half of the image") and by position relative to a reference ("everything left of" <mask>), comparing box
  centres with a margin (ambiguous draws are redrawn). Items are drawn by index, deterministically in the seed.

Both yield ``ReferringSample(task="select", candidates=N x H x W, selected=N)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from anyref.references import MaskRef
from anyref.samples import ReferringSample
from eval.datasets._common import require_file
from eval.datasets.refer import COCO_IMAGE_DIRS, ReferIndex, find_image_dir

__all__ = ["instance_candidates", "ExpressionGroupReader", "CocoGroupReader", "GROUP_RULES"]

GROUP_RULES = ("category", "same_category", "absolute", "relative")
_HALVES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}  # axis, side of the centre line
_RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_TRIES = 20


def instance_candidates(index: ReferIndex, image_id: int) -> tuple[list[int], np.ndarray]:
    """(annotation ids, N x H x W bool masks) of every non-crowd, non-empty instance of an image."""
    info = index.image_info(image_id)
    ids, masks = [], []
    for ann_id in index.annotations_of_image.get(image_id, []):  # not a scan of every annotation per sample
        if not index.annotation(ann_id).get("iscrowd", 0):
            mask = index.mask(ann_id)
            if mask.any():
                ids.append(ann_id)
                masks.append(mask)
    shape = (len(masks), info["height"], info["width"])
    return ids, np.stack(masks) if masks else np.zeros(shape, dtype=bool)


class ExpressionGroupReader:
    """A GrefReader or ResReader's expressions as group samples over all the image's instances. meta: the
    reader's, plus candidate_ann_ids and no_target, the annotation's flag (a RefCOCO expression always has a
    target): a target that is no candidate (a crowd annotation) leaves the selection empty, but the sample is
    scored as targeted, as ReLA scores it."""

    def __init__(self, reader) -> None:
        self.reader, self.dataset, self.split = reader, reader.dataset, reader.split
        self._candidates: tuple[int, tuple[list[int], np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def _image_candidates(self, image_id: int) -> tuple[list[int], np.ndarray]:
        if self._candidates is None or self._candidates[0] != image_id:  # expressions come grouped by image
            self._candidates = (image_id, instance_candidates(self.reader.index, image_id))
        return self._candidates[1]

    def __getitem__(self, item: int) -> ReferringSample:
        sample = self.reader[item]
        targets = sample.meta.get("ann_ids", [sample.meta.get("ann_id")])
        ids, masks = self._image_candidates(sample.meta["image_id"])
        if not ids:
            raise ValueError(f"image {sample.meta['image_id']} has no instance in instances.json to select from")
        selected = np.array([a in targets for a in ids], dtype=bool)
        return ReferringSample(image=sample.image, references=sample.references, task="select", candidates=masks,
                               selected=selected, source=f"{self.dataset}-groups",
                               meta={**sample.meta, "candidate_ann_ids": ids,
                                     "no_target": bool(sample.meta.get("no_target", False))})


def _centre(box: list[float]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


class CocoGroupReader:
    """Rule-drawn groups over a COCO-format instances.json (``items`` draws, by index, seed-deterministic).

    instances: the instances.json path; images: the image folder (default: found beside it); margin: the
    fraction of the image side a box centre must clear to count as left/right/above/below."""

    def __init__(self, instances: str | Path, images: Optional[str | Path] = None, items: int = 100_000,
                 seed: int = 0, margin: float = 0.05, rules: tuple[str, ...] = GROUP_RULES,
                 exclude_image_ids: Iterable[int] = ()) -> None:
        path = require_file(instances, "COCO instances file", "pass the path of a COCO-format instances.json")
        unknown = set(rules) - set(GROUP_RULES)
        if unknown:
            raise ValueError(f"unknown group rules {sorted(unknown)}; known: {GROUP_RULES}")
        self.index = ReferIndex(path, [path.parent, path.parent.parent], images, COCO_IMAGE_DIRS, None)
        by_image: dict[int, list[int]] = {}
        excluded = set(exclude_image_ids)  # a benchmark's images, kept out of training
        for ann_id, ann in self.index.annotations.items():
            if not ann.get("iscrowd", 0) and ann["image_id"] not in excluded:
                by_image.setdefault(ann["image_id"], []).append(ann_id)
        self.image_ids = sorted(i for i, anns in by_image.items() if anns)
        if not self.image_ids:
            raise ValueError(f"{path} has no non-crowd instance annotations")
        first = self.index.image_info(self.image_ids[0])["file_name"]
        self.index.image_dir = find_image_dir([path.parent, path.parent.parent], images, COCO_IMAGE_DIRS, first)
        self.items, self.seed, self.margin, self.rules = items, seed, margin, rules
        self.dataset, self.split = "coco-groups", "train"

    def __len__(self) -> int:
        return self.items

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        rng = np.random.default_rng([self.seed, item, 11])
        for _ in range(_TRIES):
            image_id = self.image_ids[int(rng.integers(len(self.image_ids)))]
            ids, masks = instance_candidates(self.index, image_id)
            drawn = self._rule(rng, image_id, ids, masks) if ids else None
            if drawn is not None:
                references, selected, meta = drawn
                return ReferringSample(image=self.index.image(image_id), references=references, task="select",
                                       candidates=masks, selected=selected, source=self.dataset,
                                       meta={"image_id": image_id, "candidate_ann_ids": ids, **meta})
        raise RuntimeError(f"CocoGroupReader: no unambiguous group after {_TRIES} draws for item {item}")

    def _rule(self, rng, image_id: int, ids: list[int], masks: np.ndarray):
        """(references, selected N bool, meta) of one rule, or None when the draw is ambiguous."""
        anns = [self.index.annotation(a) for a in ids]
        names = [self.index.categories.get(a["category_id"], str(a["category_id"])) for a in anns]
        centres = np.array([_centre(a["bbox"]) for a in anns])
        info = self.index.image_info(image_id)
        size = np.array([info["width"], info["height"]], dtype=float)
        margin = self.margin * size
        rule = self.rules[int(rng.integers(len(self.rules)))]
        if rule == "category":
            name = names[int(rng.integers(len(names)))]
            return [f"all {name}"], np.array([n == name for n in names]), {"rule": rule, "category": name}
        if rule == "absolute":
            half = list(_HALVES)[int(rng.integers(len(_HALVES)))]
            axis, side = _HALVES[half]
            offset = side * (centres[:, axis] - size[axis] / 2)
            if (np.abs(offset) < margin[axis]).any():
                return None
            return ([f"everything in the {half} half of the image"], offset > 0, {"rule": rule, "half": half})
        ref = int(rng.integers(len(ids)))
        others = np.arange(len(ids)) != ref
        if rule == "same_category":
            selected = others & np.array([n == names[ref] for n in names])
            phrase, extra = "everything of the same kind as", {}
        else:
            relation = list(_RELATIONS)[int(rng.integers(len(_RELATIONS)))]
            axis, side = _RELATIONS[relation]
            offset = side * (centres[:, axis] - centres[ref, axis])
            if (others & (np.abs(offset) < margin[axis])).any():
                return None
            selected = others & (offset > 0)
            phrase, extra = f"everything {relation}", {"relation": relation}
        return [phrase, MaskRef(masks[ref])], selected, {"rule": rule, "ref_ann_id": ids[ref], **extra}
