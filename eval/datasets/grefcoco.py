"""gRefCOCO (generalised referring expressions, ReLA) in its released layout:

    DATA/grefcoco/grefs(unc).json     list of refs {ref_id, image_id, split, ann_id: [ids] ([-1] = no target),
                                      category_id, sentences: [{sent, raw, sent_id}, ...], no_target?}
    DATA/grefcoco/instances.json      COCO-format annotations
    DATA/images/mscoco/images/train2014/...   (or ``images=``)

One sample per sentence, as ReLA's loader. A ref may point at several objects (their union is the ground truth) or
at none: ``ann_id == [-1]`` (or empty, or ``no_target: true``) is a no-target expression. Crowd annotations are
left out of the ground truth, as in ReLA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from anyref.samples import OBJ, ReferringSample
from anyref.synthref.vocabulary import NO_TARGET_ANSWER
from eval.datasets._common import check_split, first_existing, load_json
from eval.datasets.refer import COCO_IMAGE_DIRS, ReferIndex, annotation_dir

__all__ = ["GrefReader", "read_grefs"]


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def target_ann_ids(ref: dict) -> list[int]:
    """The ref's annotation ids; empty for a no-target ref."""
    ids = [int(a) for a in _as_list(ref.get("ann_id", [])) if a is not None and int(a) >= 0]
    return [] if ref.get("no_target", False) else ids


def read_grefs(data: str | Path, split_by: str = "unc", dataset: str = "grefcoco") -> tuple[Path, list[dict]]:
    """(the folder holding it, the refs) of ``DATA/grefcoco/grefs(SPLIT_BY).json`` (a list, or {"refs": list})."""
    filename = f"grefs({split_by}).json"
    folder = annotation_dir(data, dataset, filename)
    refs = load_json(folder / filename)
    if isinstance(refs, dict) and "refs" in refs:
        refs = refs["refs"]
    if not isinstance(refs, list):
        raise ValueError(f"{folder / filename} should hold a list of refs")
    return folder, refs


class GrefReader:
    """gRefCOCO samples: references [sentence]; answer [sentence, " ", OBJ, "."] with the union of the targets as
    the one mask, or the no-target answer with no mask. meta: ref_id, sent_id, image_id, ann_ids, category_ids,
    expression, no_target, file_name."""

    def __init__(self, data: str | Path, split: str = "val", split_by: str = "unc",
                 images: Optional[str | Path] = None, dataset: str = "grefcoco") -> None:
        self.dataset, self.split, self.split_by = dataset, split, split_by
        folder, refs = read_grefs(data, split_by, dataset)
        check_split(split, {r["split"] for r in refs}, f"{dataset} ({split_by})")
        self.refs = [r for r in refs if r["split"] == split]
        instances = first_existing([folder / "instances.json"], "instances.json",
                                   f"it belongs beside grefs({split_by}).json")
        self.index = ReferIndex(instances, [Path(data), folder.parent], images, COCO_IMAGE_DIRS,
                                self.refs[0]["image_id"] if self.refs else None)
        self._items = [(ref, sent) for ref in self.refs for sent in ref["sentences"]]

    def __len__(self) -> int:
        return len(self._items)

    def _target_mask(self, ref: dict, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        for ann_id in target_ann_ids(ref):
            if not self.index.annotation(ann_id).get("iscrowd", 0):
                mask |= self.index.mask(ann_id)
        return mask

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        ref, sent = self._items[item]
        image = self.index.image(ref["image_id"])
        expression = sent.get("sent") or sent.get("raw", "")
        ann_ids = target_ann_ids(ref)
        meta = {"ref_id": ref["ref_id"], "sent_id": sent.get("sent_id"), "image_id": ref["image_id"],
                "ann_ids": ann_ids, "category_ids": [c for c in _as_list(ref.get("category_id", []))
                                                     if c is not None],
                "expression": expression, "no_target": not ann_ids,
                "file_name": self.index.image_info(ref["image_id"])["file_name"]}
        if ann_ids:
            mask = self._target_mask(ref, *image.shape[:2])
            return ReferringSample(image=image, references=[expression], answer=[expression, " ", OBJ, "."],
                                   masks=mask[None], source=self.dataset, meta=meta)
        return ReferringSample(image=image, references=[expression], answer=[NO_TARGET_ANSWER],
                               source=self.dataset, meta=meta)
