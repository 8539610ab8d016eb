"""Few-shot segmentation episodes of PASCAL-5i and COCO-20i, drawn exactly as HSNet's test loader draws them.

Layouts (HSNet's ``--datapath``; ``--data`` may also be the VOC2012 / COCO2014 folder itself):

    VOC2012/JPEGImages/{name}.jpg, VOC2012/SegmentationClassAug/{name}.png   class indices, 255 = boundary
    COCO2014/{val2014/COCO_val2014_*.jpg}, COCO2014/annotations/{val2014/COCO_val2014_*.png}
    splits/pascal/val/fold{i}.txt   lines "{name}__{class}" with a 1-based class   (HSNet's data/splits)
    splits/coco/val/fold{i}.pkl     a pickle: {class id: [image names]}   (only from the ``splits`` folder given)

Protocol (HSNet ``test.py``): numpy's legacy generator seeded with 0, 1000 episodes, batch 1, in order.
PASCAL: episode i queries line ``i % len(lines)`` of the fold list; each support is drawn with
``choice(images of the class, 1, replace=False)`` until ``shot`` supports differ from the query (repeats allowed).
COCO: each episode draws the class (among the fold's), then the query, then the supports the same way.
PASCAL-5i fold i = classes 5i..5i+4; COCO-20i fold i = {i + 4v}, 0-based; a class c is pixel value c + 1.

The COCO fold lists are pickles; loading a pickle runs code, so they are read only from the ``splits`` folder the
user names (``--splits``), never from one found below ``--data``. PASCAL's fold lists are text: ``splits`` defaults
to ``DATA/splits`` (or ``DATA/data/splits``) there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from anyref.references import ExampleImage
from anyref.samples import OBJ, ReferringSample
from eval.datasets._common import (
    check_split, first_existing, load_pickle, read_image, read_labels, require_dir, require_file,
)

__all__ = ["PASCAL_CLASSES", "COCO_CLASSES", "FEWSHOT_BENCHMARKS", "HSNET_EPISODES", "HSNET_SEED", "Episode",
           "fold_classes", "pascal_episodes", "coco_episodes", "FewShotReader"]

PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
                  "tv monitor")
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
FEWSHOT_BENCHMARKS = {"pascal": (PASCAL_CLASSES, 4), "coco": (COCO_CLASSES, 4)}
IGNORE_INDEX = 255
# HSNet's test protocol, which the papers' few-shot numbers follow: 1000 episodes from a generator seeded with 0
HSNET_EPISODES = 1000
HSNET_SEED = 0


def fold_classes(benchmark: str, fold: int) -> list[int]:
    """The 0-based class ids tested in ``fold``: PASCAL 5i..5i+4, COCO {i + 4v : v = 0..19}."""
    if benchmark not in FEWSHOT_BENCHMARKS:
        raise ValueError(f"unknown few-shot benchmark {benchmark!r}; choose one of {sorted(FEWSHOT_BENCHMARKS)}")
    classes, folds = FEWSHOT_BENCHMARKS[benchmark]
    if not (isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"fold must be 0..{folds - 1}, got {fold!r}")
    per_fold = len(classes) // folds
    if benchmark == "pascal":
        return list(range(fold * per_fold, (fold + 1) * per_fold))
    return [fold + folds * v for v in range(per_fold)]


@dataclass(frozen=True)
class Episode:
    """One episode: the query image name, its 0-based class, and the support image names (``shot`` of them)."""

    query: str
    class_id: int
    supports: tuple[str, ...]


def _supports(rng: np.random.RandomState, pool: list[str], query: str, shot: int) -> tuple[str, ...]:
    if not any(name != query for name in pool):
        raise ValueError(f"class of query {query!r} has no other image to draw a support from")
    chosen: list[str] = []
    while len(chosen) < shot:  # HSNet: redraw while the support is the query; repeats among supports are allowed
        name = str(rng.choice(pool, 1, replace=False)[0])
        if name != query:
            chosen.append(name)
    return tuple(chosen)


def pascal_episodes(lines: list[tuple[str, int]], shot: int, episodes: int = HSNET_EPISODES,
                    seed: int = HSNET_SEED) -> list[Episode]:
    """HSNet's PASCAL episodes. lines: (image name, 0-based class) in the fold list's order."""
    if not lines:
        raise ValueError("the fold list is empty")
    rng = np.random.RandomState(seed)
    by_class: dict[int, list[str]] = {}
    for name, class_id in lines:
        by_class.setdefault(class_id, []).append(name)
    result = []
    for i in range(episodes):
        query, class_id = lines[i % len(lines)]
        result.append(Episode(query, class_id, _supports(rng, by_class[class_id], query, shot)))
    return result


def coco_episodes(classwise: dict[int, list[str]], class_ids: list[int], shot: int, episodes: int = HSNET_EPISODES,
                  seed: int = HSNET_SEED) -> list[Episode]:
    """HSNet's COCO episodes. classwise: class id -> image names (the fold pickle); class_ids: the fold's classes."""
    missing = [c for c in class_ids if not classwise.get(c)]
    if missing:
        raise ValueError(f"the fold list has no images for classes {missing}")
    rng = np.random.RandomState(seed)
    result = []
    for _ in range(episodes):
        class_id = int(rng.choice(class_ids, 1, replace=False)[0])
        pool = list(classwise[class_id])
        query = str(rng.choice(pool, 1, replace=False)[0])
        result.append(Episode(query, class_id, _supports(rng, pool, query, shot)))
    return result


def _read_pascal_list(path: Path) -> list[tuple[str, int]]:
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, sep, label = line.strip().rpartition("__")
        if not sep or not label.isdigit():
            raise ValueError(f"{path}:{number}: expected 'image__class', got {line!r}")
        lines.append((name, int(label) - 1))
    return lines


class FewShotReader:
    """Few-shot episodes as ReferringSamples: references = ``shot`` ExampleImage(support, mask=support mask) (no
    mask when ``mask_crop`` is False); masks 1 x H x W = query pixels of the class; meta["ignore"] H x W bool
    (PASCAL's 255 boundary, not scored); meta also: episode, class_id, class_name, query, supports.

    splits: HSNet's data/splits folder; required for COCO-20i, whose fold lists are pickles (read only from a folder
    the user names); for PASCAL-5i it defaults to ``data/splits`` (or ``data/data/splits``).
    """

    def __init__(self, data: str | Path, benchmark: str = "pascal", fold: int = 0, shot: int = 1,
                 episodes: int = HSNET_EPISODES, seed: int = HSNET_SEED, splits: Optional[str | Path] = None,
                 split: str = "val", mask_crop: bool = True) -> None:
        self.fold_classes = fold_classes(benchmark, fold)
        if not (isinstance(shot, int) and shot >= 1):
            raise ValueError(f"shot must be an int >= 1, got {shot!r}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.benchmark, self.fold, self.shot, self.split, self.mask_crop = benchmark, fold, shot, split, mask_crop
        self.seed = seed
        self.dataset = {"pascal": "pascal-5i", "coco": "coco-20i"}[benchmark]
        self.class_names = FEWSHOT_BENCHMARKS[benchmark][0]
        root = require_dir(data, "data directory", "pass --data with HSNet's datapath (holding VOC2012/ or COCO2014/)")
        folder_name = "VOC2012" if benchmark == "pascal" else "COCO2014"
        self.base = root / folder_name if (root / folder_name).is_dir() else root
        split_root = self._split_root(root, splits)
        listed = split_root / benchmark
        if listed.is_dir():  # a missing folder is named by the fold list's own error below
            check_split(split, [p.name for p in listed.iterdir() if p.is_dir()], f"HSNet's split lists in {listed}")
        if benchmark == "pascal":
            self.image_dir = require_dir(self.base / "JPEGImages", "image directory",
                                         "--data must hold VOC2012/JPEGImages")
            self.label_dir = require_dir(self.base / "SegmentationClassAug", "mask directory",
                                         "--data must hold VOC2012/SegmentationClassAug (the SBD-augmented masks)")
            fold_list = require_file(split_root / "pascal" / split / f"fold{fold}.txt", "fold list",
                                     "--splits must be HSNet's data/splits folder")
            lines = _read_pascal_list(fold_list)
            stray = sorted({c for _, c in lines} - set(self.fold_classes))
            if stray:
                raise ValueError(f"{fold_list} names classes {stray} outside fold {fold} ({self.fold_classes})")
            self.episodes = pascal_episodes(lines, shot, episodes, seed)
        else:
            fold_list = require_file(split_root / "coco" / split / f"fold{fold}.pkl", "fold list",
                                     "--splits must be HSNet's data/splits folder")
            classwise = load_pickle(fold_list)
            if not isinstance(classwise, dict):
                raise ValueError(f"{fold_list} holds a {type(classwise).__name__}, not HSNet's {{class: images}}")
            self.episodes = coco_episodes({int(k): list(v) for k, v in classwise.items()}, self.fold_classes, shot,
                                          episodes, seed)

    def _split_root(self, root: Path, splits: Optional[str | Path]) -> Path:
        """HSNet's data/splits folder: ``splits`` when given; PASCAL's text lists may also be found below ``root``,
        COCO's pickled ones never are (loading a pickle runs code, so only a folder the user named is read)."""
        if splits is not None:
            return require_dir(splits, "splits directory", "pass --splits with HSNet's data/splits folder")
        if self.benchmark == "coco":
            raise ValueError("COCO-20i's fold lists are pickles, and loading a pickle runs code stored in it, so they "
                             "are read only from a folder you name: pass --splits with HSNet's data/splits folder "
                             "(holding coco/val/fold{i}.pkl) from a copy you trust")
        return first_existing([root / "splits", root / "data" / "splits", self.base / "splits"], "HSNet split lists",
                              "pass --splits with HSNet's data/splits folder", kind="dir")

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self.benchmark == "pascal":
            image_path, label_path = self.image_dir / f"{name}.jpg", self.label_dir / f"{name}.png"
        else:
            image_path = self.base / name
            label_path = self.base / "annotations" / (name[: name.rindex(".")] + ".png")
        image, labels = read_image(image_path), read_labels(label_path)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"mask {label_path} is {labels.shape[::-1]} but image {image_path} is "
                             f"{image.shape[1::-1]}")
        return image, labels

    def __iter__(self) -> Iterator[ReferringSample]:
        for index, episode in enumerate(self.episodes):
            value = episode.class_id + 1
            query, labels = self._load(episode.query)
            references = []
            for name in episode.supports:
                support, support_labels = self._load(name)
                mask = support_labels == value
                references.append(ExampleImage(support, mask=mask) if self.mask_crop else ExampleImage(support))
            class_name = self.class_names[episode.class_id]
            # HSNet ignores PASCAL's boundary pixels (255); its COCO loader has no ignore region.
            ignore = labels == IGNORE_INDEX if self.benchmark == "pascal" else np.zeros(labels.shape, dtype=bool)
            yield ReferringSample(
                image=query, references=references, answer=[class_name, " ", OBJ, "."],
                masks=(labels == value)[None], source=self.dataset,
                meta={"episode": index, "class_id": episode.class_id, "class_name": class_name,
                      "query": episode.query, "supports": list(episode.supports), "ignore": ignore})
