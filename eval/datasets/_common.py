"""Helpers shared by the dataset readers: path checks with errors that say what to fix, image / label / COCO
segmentation reading, and the one place pickles are loaded."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from anyref.images import UNREADABLE_IMAGE_ERRORS, load_image

__all__ = ["require_dir", "require_file", "first_existing", "load_json", "load_pickle", "read_image", "read_labels",
           "read_binary_mask", "decode_segmentation", "check_split"]


def require_dir(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` as a Path, or FileNotFoundError naming ``what`` it should be and ``hint`` on how to fix it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} is not a directory{'; ' + hint if hint else ''}")
    return path


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{'; ' + hint if hint else ''}")
    return path


def first_existing(candidates: Iterable[Path], what: str, hint: str = "", kind: str = "file") -> Path:
    """The first candidate that exists (as a file or a directory); FileNotFoundError listing all tried."""
    tried = []
    for path in candidates:
        path = Path(path)
        if (path.is_file() if kind == "file" else path.is_dir()):
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"found no {what}; looked for: {', '.join(tried)}{'; ' + hint if hint else ''}")


def load_json(path: Path):
    """The JSON document at ``path``; ValueError naming the file when it is not UTF-8 JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); is the download complete?") from error
    except UnicodeDecodeError as error:  # the decoder's own message does not say which file
        raise ValueError(f"{path} is not UTF-8 text ({error}); is it the release's JSON file, and is the download "
                         "complete?") from error


def load_pickle(path: Path):
    """Load the pickle at ``path``, a file the user pointed us at (refer's ``refs(*).p``, HSNet's COCO fold lists).

    Loading a pickle runs code stored in it: call this only on files from the dataset's official release that the
    user chose, never on a path found by searching. Python 2 pickles (refer's) are read with latin-1 strings
    when they are not plain ASCII.
    """
    path = require_file(path, "pickle file")
    try:
        return _unpickle(path)
    except (EOFError, pickle.UnpicklingError) as error:  # "Ran out of input" etc. would not name the file
        raise ValueError(f"could not read pickle file {path} ({type(error).__name__}: {error}); it is empty, "
                         "truncated or not a pickle: download it again from the dataset's official release") from error


def _unpickle(path: Path):
    """pickle.load of ``path``, again with latin-1 strings when it is a Python 2 pickle of non-ASCII text."""
    with open(path, "rb") as handle:
        try:
            return pickle.load(handle)
        except UnicodeDecodeError:
            handle.seek(0)
            return pickle.load(handle, encoding="latin1")


def read_image(path: Path) -> np.ndarray:
    """A dataset image's stored pixels as RGB H x W x 3 uint8; FileNotFoundError naming the file when it is missing,
    ValueError when it cannot be decoded.

    The EXIF orientation is NOT applied (unlike a user's photo, which :func:`anyref.images.load_image` turns
    upright): COCO, ADE20K and PASCAL annotations index the pixels as stored, so a turned image would put every mask
    and box on the wrong pixels.
    """
    return load_image(require_file(path, "image file"), upright=False)


def read_labels(path: Path) -> np.ndarray:
    """A label PNG (class indices, palette or grayscale) as H x W uint8, values unchanged."""
    path = require_file(path, "label file")
    try:
        with Image.open(path) as image:
            mode, labels = image.mode, np.asarray(image, dtype=np.uint8).copy()
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ValueError(f"could not read label file {path}: {error}") from error
    if mode not in ("L", "P"):
        raise ValueError(f"label file {path} has mode {mode}; expected a grayscale or palette PNG of class indices")
    return labels


def read_binary_mask(path: Path) -> np.ndarray:
    """A 0/255 mask PNG as H x W bool (>= 128 is foreground, as PIL's mode "1" conversion without dither)."""
    path = require_file(path, "mask file")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) >= 128
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ValueError(f"could not read mask file {path}: {error}") from error


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as error:  # an optional dependency (the "eval" extra)
        raise ImportError("reading COCO masks needs pycocotools: pip install pycocotools") from error
    return mask_api


def _rle(segment: dict, height: int, width: int) -> dict:
    size = list(segment.get("size", ()))
    if size != [height, width]:
        raise ValueError(f"RLE mask of size {size} on an image of {height} x {width}")
    counts = segment["counts"]
    if isinstance(counts, list):  # uncompressed RLE (iscrowd annotations)
        return _mask_api().frPyObjects(segment, height, width)
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` as one H x W bool mask (the union of its parts).

    Accepts polygons (a list of [x0, y0, x1, y1, ...] lists; ones with fewer than 3 points are dropped), an RLE
    dict with compressed (str / bytes) or uncompressed (list) counts, or a list of RLE dicts.
    """
    mask_api = _mask_api()
    if isinstance(segmentation, dict):
        rles = [_rle(segmentation, height, width)]
    elif isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], dict):
        rles = [_rle(s, height, width) for s in segmentation]
    elif isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_api.frPyObjects(polygons, height, width)
    else:
        raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    decoded = mask_api.decode(rles)  # H x W x N uint8
    return decoded.reshape(height, width, -1).any(axis=2)


def check_split(split: str, available: Sequence[str], where: str) -> None:
    """ValueError naming the splits that exist when ``split`` is not one of them."""
    if split not in available:
        raise ValueError(f"unknown split {split!r} for {where}; available: {', '.join(sorted(available)) or 'none'}")
