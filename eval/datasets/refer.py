"""RefCOCO, RefCOCO+, RefCOCOg and RefClef in the ``refer`` layout (lichengunc/refer), as released:

    DATA/refcoco/refs(unc).p          a pickle: list of refs {ref_id, ann_id, image_id, split, category_id,
                                      sentences: [{sent, tokens, sent_id}, ...]}
    DATA/refcoco/instances.json       COCO-format images, annotations (polygons or RLE), categories
    DATA/images/mscoco/images/train2014/COCO_train2014_*.jpg     (RefClef: DATA/images/saiapr_tc-12/...)

``--data`` is DATA (or the dataset folder itself); images are found below DATA (or its parent) or given with
``images=``. :class:`ResReader` yields one referring-segmentation sample per sentence (LISA's protocol: every
sentence of every ref in the split is scored); :class:`RegReader` yields one region-captioning sample per ref (its
box as the reference, all its sentences as the ground truth).

The refs file is a pickle, and loading a pickle runs code stored in it: it is read only from the folder the user
gave, so point ``--data`` only at a copy of the official release you trust.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from anyref.references import Box
from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import (
    check_split, decode_segmentation, first_existing, load_json, load_pickle, read_image, require_dir,
)

__all__ = ["REFER_DATASETS", "DEFAULT_SPLIT_BY", "ReferIndex", "ResReader", "RegReader", "annotation_dir",
           "find_image_dir", "read_refs"]

# dataset -> the splitBy variants released for it
REFER_DATASETS = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google"),
                  "refclef": ("unc", "berkeley")}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}

# where image folders usually sit below the data root (refer's own layout first, then LISA's and common ones)
COCO_IMAGE_DIRS = ("images/mscoco/images/train2014", "images/mscoco/train2014", "images/train2014", "train2014",
                   "coco/train2014", "mscoco/train2014", "images/mscoco/images", "images")
SAIAPR_IMAGE_DIRS = ("images/saiapr_tc-12", "saiapr_tc-12", "images")


def annotation_dir(data: str | Path, dataset: str, filename: str) -> Path:
    """The folder holding ``filename``: ``data/dataset/`` (refer's layout) or ``data`` itself."""
    root = require_dir(data, "data directory", f"pass --data pointing at the folder that contains {dataset}/")
    return first_existing([root / dataset / filename, root / filename], f"{dataset} annotation file {filename}",
                          f"pass --data pointing at the folder that contains {dataset}/{filename}").parent


def find_image_dir(roots: Sequence[Path], images: Optional[str | Path], relative: Sequence[str],
                   first_file: str) -> Path:
    """The image folder: ``images`` if given, else the first of ``roots`` x ``relative`` holding ``first_file``."""
    if images is not None:
        folder = require_dir(images, "image directory")
        if not (folder / first_file).is_file():
            raise FileNotFoundError(f"image {folder / first_file} does not exist; --images must be the folder that "
                                    "holds the files named in instances.json")
        return folder
    candidates = [Path(root) / rel for root in roots for rel in relative]
    return first_existing([c / first_file for c in candidates], f"image {first_file}",
                          "pass --images with the folder holding the COCO train2014 (or saiapr) images").parent


_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "iscrowd", "bbox")


def _compact_image(image: dict) -> dict:
    return {key: image[key] for key in _IMAGE_FIELDS if key in image}


def _compact_annotation(ann: dict) -> dict:
    """The fields the readers use, each polygon a float64 array (the same values, so the same masks): a training
    process holds a whole split's index (COCO's 2014 train annotations, PACO-LVIS's), and as parsed JSON a
    polygon's points cost 32 bytes a coordinate and the unused fields (areas, attributes) more."""
    compact = {key: ann[key] for key in _ANNOTATION_FIELDS if key in ann}
    segmentation = ann.get("segmentation", [])
    if isinstance(segmentation, list) and not (segmentation and isinstance(segmentation[0], dict)):
        segmentation = [np.asarray(polygon, dtype=np.float64) for polygon in segmentation]
    compact["segmentation"] = segmentation
    return compact


class ReferIndex:
    """``instances.json`` indexed by id, plus image loading with a one-image cache (refs are grouped by image)."""

    def __init__(self, instances_path: Path, image_roots: Sequence[Path], images: Optional[str | Path],
                 relative_dirs: Sequence[str], first_image_id: Optional[int]) -> None:
        data = load_json(instances_path)
        for key in ("images", "annotations"):
            if key not in data:
                raise ValueError(f"{instances_path} has no {key!r}; is it a COCO-format instances.json?")
        self.categories = {cat["id"]: cat.get("name", str(cat["id"])) for cat in data.get("categories", [])}
        self.images = {im["id"]: _compact_image(im) for im in data["images"]}
        self.annotations = {ann["id"]: _compact_annotation(ann) for ann in data["annotations"]}
        self.annotations_of_image: dict[int, list[int]] = {}  # image id -> its annotation ids, in file order
        for ann_id, ann in self.annotations.items():
            self.annotations_of_image.setdefault(ann["image_id"], []).append(ann_id)
        self.image_dir: Optional[Path] = None
        if first_image_id is not None:
            self.image_dir = find_image_dir(image_roots, images, relative_dirs, self.image_info(first_image_id)
                                            ["file_name"])
        self._cached: tuple[int, np.ndarray] | None = None

    def image_info(self, image_id: int) -> dict:
        if image_id not in self.images:
            raise ValueError(f"image id {image_id} is referenced but missing from instances.json")
        return self.images[image_id]

    def annotation(self, ann_id: int) -> dict:
        if ann_id not in self.annotations:
            raise ValueError(f"annotation id {ann_id} is referenced but missing from instances.json")
        return self.annotations[ann_id]

    def image(self, image_id: int) -> np.ndarray:
        """H x W x 3 uint8; checked against the size instances.json gives (masks are drawn at that size)."""
        if self._cached is None or self._cached[0] != image_id:
            info = self.image_info(image_id)
            pixels = read_image(self.image_dir / info["file_name"])
            if pixels.shape[:2] != (info["height"], info["width"]):
                raise ValueError(f"image {self.image_dir / info['file_name']} is {pixels.shape[1]} x "
                                 f"{pixels.shape[0]} but instances.json says {info['width']} x {info['height']}")
            self._cached = (image_id, pixels)
        return self._cached[1]

    def mask(self, ann_id: int) -> np.ndarray:
        """H x W bool: the annotation's segmentation (polygons or RLE) at its image's size."""
        ann = self.annotation(ann_id)
        info = self.image_info(ann["image_id"])
        return decode_segmentation(ann.get("segmentation", []), info["height"], info["width"])

    def box(self, ann_id: int) -> Box:
        """The annotation's box (COCO x, y, w, h) as a Box of corners."""
        x, y, w, h = (float(v) for v in self.annotation(ann_id)["bbox"])
        return Box(x, y, x + max(w, 1e-3), y + max(h, 1e-3))


def read_refs(data: str | Path, dataset: str, split_by: Optional[str] = None) -> tuple[Path, str, list[dict]]:
    """(the folder holding it, the splitBy, the refs) of ``DATA/dataset/refs(SPLIT_BY).p``; the pickle is read only
    from the folder the user gave."""
    if dataset not in REFER_DATASETS:
        raise ValueError(f"unknown refer dataset {dataset!r}; choose one of {sorted(REFER_DATASETS)}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    if split_by not in REFER_DATASETS[dataset]:
        raise ValueError(f"{dataset} is released with splitBy {REFER_DATASETS[dataset]}, not {split_by!r}")
    folder = annotation_dir(data, dataset, f"refs({split_by}).p")
    refs_path = folder / f"refs({split_by}).p"
    refs = load_pickle(refs_path)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path} holds a {type(refs).__name__}, not refer's list of refs")
    return folder, split_by, refs


class _ReferReader:
    """Refs of one split of a refer dataset, loaded once (shared by the RES and REG readers)."""

    def __init__(self, data: str | Path, dataset: str = "refcoco", split: str = "val",
                 split_by: Optional[str] = None, images: Optional[str | Path] = None) -> None:
        folder, split_by, refs = read_refs(data, dataset, split_by)
        self.dataset, self.split, self.split_by = dataset, split, split_by
        check_split(split, {r["split"] for r in refs}, f"{dataset} ({split_by})")
        self.refs = [r for r in refs if r["split"] == split]
        instances = first_existing([folder / "instances.json"], "instances.json",
                                   f"it belongs beside refs({split_by}).p")
        relative = SAIAPR_IMAGE_DIRS if dataset == "refclef" else COCO_IMAGE_DIRS
        self.index = ReferIndex(instances, [Path(data), folder.parent], images, relative,
                                self.refs[0]["image_id"] if self.refs else None)

    def _category(self, ref: dict) -> str:
        return self.index.categories.get(ref.get("category_id"), "")


class ResReader(_ReferReader):
    """Referring segmentation samples, one per sentence: references [sentence], masks 1 x H x W (the ref's object).

    meta: ref_id, sent_id, ann_id, image_id, category_id, category, expression, file_name.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._items = [(ref, sent) for ref in self.refs for sent in ref["sentences"]]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        ref, sent = self._items[item]
        image = self.index.image(ref["image_id"])
        expression = sent.get("sent") or sent.get("raw", "")
        mask = self.index.mask(ref["ann_id"])
        return ReferringSample(
            image=image, references=[expression], task="segment", answer=[expression, " ", OBJ, "."],
            masks=mask[None], source=self.dataset,
            meta={"ref_id": ref["ref_id"], "sent_id": sent.get("sent_id"), "ann_id": ref["ann_id"],
                  "image_id": ref["image_id"], "category_id": ref.get("category_id"),
                  "category": self._category(ref), "expression": expression,
                  "file_name": self.index.image_info(ref["image_id"])["file_name"]})


class RegReader(_ReferReader):
    """Referring expression generation samples, one per ref: references [Box of the object], task "describe",
    answer [first sentence], masks empty. meta: ref_id, ann_id, image_id, category, box, sentences (all of them,
    the references CIDEr / METEOR score against)."""

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[ReferringSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> ReferringSample:
        ref = self.refs[item]
        image = self.index.image(ref["image_id"])
        sentences = [s.get("sent") or s.get("raw", "") for s in ref["sentences"]]
        box = self.index.box(ref["ann_id"]).clipped(image.shape[1], image.shape[0])
        return ReferringSample(
            image=image, references=[box], task="describe", answer=[sentences[0]] if sentences else [],
            source=self.dataset,
            meta={"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "image_id": ref["image_id"],
                  "category": self._category(ref), "box": box.as_tuple(), "sentences": sentences,
                  "file_name": self.index.image_info(ref["image_id"])["file_name"]})
