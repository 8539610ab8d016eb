"""The images a referring benchmark evaluates on, to keep out of training.

RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO all draw their val and test images from COCO train2014, so training
sources built on ``instances_train2014.json`` (image referring, rule-drawn groups) would otherwise show the model
the very images it is later scored on. The refs files are read from the folder the user names, as the readers read
them (refs pickles only from there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from eval.datasets.grefcoco import read_grefs
from eval.datasets.refer import REFER_DATASETS, read_refs

__all__ = ["evaluated_image_ids", "excluded_image_ids"]


def evaluated_image_ids(data: str | Path, dataset: str, split_by: Optional[str] = None) -> set[int]:
    """Image ids of every ref outside the train split of ``dataset`` (a refer dataset, or "grefcoco") under
    ``data`` (the folder holding DATASET/refs(SPLIT_BY).p, or grefcoco/grefs(unc).json)."""
    if dataset == "grefcoco":
        _, refs = read_grefs(data, split_by or "unc")
    elif dataset in REFER_DATASETS:
        _, _, refs = read_refs(data, dataset, split_by)
    else:
        raise ValueError(f"unknown benchmark {dataset!r} to exclude; choose one of "
                         f"{sorted([*REFER_DATASETS, 'grefcoco'])}")
    return {int(ref["image_id"]) for ref in refs if ref["split"] != "train"}


def excluded_image_ids(benchmarks: Iterable[dict]) -> set[int]:
    """The union of :func:`evaluated_image_ids` over ``[{"data": DIR, "dataset": NAME, "split_by": ...}, ...]``
    (a training source's ``exclude_images_of`` option)."""
    excluded: set[int] = set()
    for entry in benchmarks:
        if not isinstance(entry, dict) or "data" not in entry or "dataset" not in entry:
            raise ValueError(f'exclude_images_of takes entries like {{"data": "refer_data", "dataset": "refcoco"}}, '
                             f"got {entry!r}")
        excluded |= evaluated_image_ids(entry["data"], entry["dataset"], entry.get("split_by"))
    return excluded
