"""References written on a command line: each argument is one reference, read left to right as in ``segment``.

    "the small red circle"          text (any argument without one of the prefixes below)
    box:X0,Y0,X1,Y1                 a Box in the image's pixels
    example:IMAGE                   an ExampleImage (the model masks it itself, or uses it whole)
    example:IMAGE@MASK              an ExampleImage with its mask (a PNG of 0 and one other value: the non-zero pixels)
    audio:FILE                      an Audio file (WAV, FLAC, ... as soundfile reads)
    mask:MASK                       a MaskRef on the query image (a PNG as above, or a .npy H x W array)
    text:ANYTHING                   text that would otherwise look like one of the above

Prefixes are case-insensitive; an argument whose prefix is close to one (``boxes:...``) is refused as a likely typo.

So ``anyref segment scene.png "the object left of" box:10,20,60,80`` asks what ``segment(image, ["the object left
of", Box(10, 20, 60, 80)])`` asks.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
from PIL import Image

from anyref.images import UNREADABLE_IMAGE_ERRORS, binary_mask
from anyref.references import Audio, Box, ExampleImage, MaskRef, Reference

__all__ = ["parse_reference", "parse_references", "read_mask_array", "read_mask_file"]

_PREFIXES = ("box", "example", "audio", "mask", "text")


def read_mask_array(path: str | Path, what: str) -> np.ndarray:
    """The array a mask file holds: an image as H x W gray levels, or a .npy array (read without pickles) of any
    shape. ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} not found")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, what)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ValueError(f"{what} file {str(path)!r} is not an image PIL can read ({error})") from None


def _read_npy(path: Path, what: str) -> np.ndarray:
    """The array of a .npy file, read without pickles; ValueError naming the file for anything else."""
    fix = "save the mask with numpy.save(path, mask) as one H x W array"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:  # EOFError: an empty or truncated file
        raise ValueError(f"{what} file {str(path)!r} is not a plain .npy array ({type(error).__name__}: "
                         f"{error}); {fix}") from None
    if not isinstance(loaded, np.ndarray):  # np.load reads a .npz archive whatever the file is called
        loaded.close()
        raise ValueError(f"{what} file {str(path)!r} is a .npz archive, not a .npy array; {fix}")
    return loaded


def read_mask_file(path: str | Path, what: str) -> np.ndarray:
    """H x W bool from a mask file: an image or a .npy array of 0 and one positive value (images.binary_mask)."""
    array = read_mask_array(path, what)
    if array.ndim != 2:
        raise ValueError(f"{what} file {str(path)!r} holds an array of shape {array.shape}; give one H x W mask")
    return binary_mask(array, f"{what} file {str(path)!r}")


_EXAMPLE_ARGUMENTS = {"audio": "audio:sound.wav", "mask": "mask:mask.png", "example": "example:photo.png",
                      "example mask": "example:photo.png@mask.png"}


def _existing(path: str, what: str) -> str:
    if not path:
        raise ValueError(f"{what} needs a file name, e.g. {_EXAMPLE_ARGUMENTS[what]}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path!r} not found")
    return path


def _box(value: str) -> Box:
    parts = value.split(",")
    try:
        coords = [float(p) for p in parts]
    except ValueError:
        coords = []
    if len(coords) != 4:
        raise ValueError(f"box:{value} is not a box; write box:X0,Y0,X1,Y1 in the image's pixels, e.g. box:10,20,60,80")
    return Box(*coords)


def parse_reference(argument: str) -> Reference:
    """One command-line argument -> one reference (the module's table)."""
    prefix, colon, value = argument.partition(":")
    prefix = prefix.lower()
    if not colon or prefix not in _PREFIXES:
        if not argument.strip():
            raise ValueError("an empty argument is not a reference: give a referring expression such as "
                             "'the red circle'")
        near = difflib.get_close_matches(prefix, _PREFIXES, n=1, cutoff=0.75) if colon else []
        if near:  # "boxes:..." or "exmaple:..." is a mistyped reference far more often than a prompt
            raise ValueError(f"{argument!r} looks like a mistyped {near[0]}: reference; write {near[0]}:..., or "
                             f"text:{argument} if it is meant as text")
        return argument
    if prefix == "text":
        return value
    if prefix == "box":
        return _box(value)
    if prefix == "audio":
        return Audio(_existing(value, "audio"))
    if prefix == "mask":
        return MaskRef(read_mask_file(_existing(value, "mask"), "mask"))
    # IMAGE@MASK, unless the whole value names a file (an image called icon@2x.png)
    image, at, mask = value.rpartition("@") if "@" in value and not Path(value).is_file() else (value, "", "")
    return ExampleImage(_existing(image, "example"),
                        mask=read_mask_file(_existing(mask, "example mask"), "example mask") if at else None)


def parse_references(arguments: list[str]) -> list[Reference]:
    """Every argument parsed; raises on an empty list."""
    if not arguments:
        raise ValueError("give at least one reference: a text, box:X0,Y0,X1,Y1, example:IMAGE, audio:FILE or "
                         "mask:MASK")
    return [parse_reference(argument) for argument in arguments]
