"""One training or evaluation sample, the same for every dataset reader (SynthRef, RefCOCO, AVSBench, ...).

Readers produce :class:`ReferringSample`; the collator in :mod:`anyref.batching` turns a list of them into a batch;
the model's training forward takes that batch. Nothing downstream knows which dataset a sample came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from anyref.references import Reference

__all__ = ["OBJ", "ObjMarker", "AnswerPart", "ReferringSample", "TASKS", "VERIFY_ANSWERS", "verify_answer",
           "verify_caption"]


class ObjMarker:
    """The place of one ``<obj>`` token in an answer. A marker object, never a string, so that no dataset text
    (which might contain the characters "<obj>") can turn into a mask token."""

    _instance: "ObjMarker | None" = None

    def __new__(cls) -> "ObjMarker":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OBJ"

    def __reduce__(self):  # pickling keeps the singleton
        return (ObjMarker, ())


OBJ = ObjMarker()
AnswerPart = Union[str, ObjMarker]

# segment: answer text with <obj> markers, one mask per marker (zero markers: a no-target answer)
# describe: a caption of the referred region (optionally followed by <obj> and its mask)
# select: a mask group chosen among candidate masks (RAS)
# verify: whether the region a box quotes is what the prompt's expression describes; the answer is VERIFY_ANSWERS
TASKS = ("segment", "describe", "select", "verify")
# the answers of a "verify" sample, by whether the region is the described one; a model trained to caption the
# region first (AnyRefConfig.verify_by_caption) answers verify_answer(matches, caption): "the red circle: yes."
VERIFY_ANSWERS = {True: "yes.", False: "no."}


def verify_answer(matches: bool, caption: str | None = None) -> str:
    """A "verify" answer: "yes." / "no.", or with ``caption`` "{caption}: yes." / "{caption}: no."."""
    return VERIFY_ANSWERS[bool(matches)] if caption is None else f"{caption}: {VERIFY_ANSWERS[bool(matches)]}"


def verify_caption(answer: str) -> str | None:
    """The caption a generated caption-first "verify" answer starts with (the text before its last ":"), or None
    for a plain answer."""
    return answer.rsplit(":", 1)[0].strip() if ":" in answer else None


@dataclass
class ReferringSample:
    """A query image, the references of the prompt, and the expected answer.

    image: H x W x 3 uint8.
    references: the prompt, as in ``AnyRef.segment`` (inline order; text pieces and reference objects).
    task: one of TASKS; decides the question template.
    answer: the answer as parts, e.g. ``["the red circle", " ", OBJ, "."]`` (neighbouring strings are joined before
        tokenising); an empty list for prompts without an answer and for "select" samples.
    masks: K x H x W bool, one per OBJ in ``answer`` (K may be 0).
    candidates: N x H x W bool candidate masks (task "select" only), else None.
    selected: N bool, which candidates belong to the answer group (task "select" only), else None.
    source: the dataset or SynthRef task name, for per-task reports.
    meta: anything a reader wants to keep (ids, the category, the expression...).
    """

    image: np.ndarray
    references: list[Reference]
    task: str = "segment"
    answer: list[AnswerPart] = field(default_factory=list)
    masks: np.ndarray | None = None
    candidates: np.ndarray | None = None
    selected: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"sample image must be H x W x 3 uint8, got {self.image.shape} {self.image.dtype}")
        height, width = self.image.shape[:2]
        if self.masks is None:
            self.masks = np.zeros((0, height, width), dtype=bool)
        if self.masks.dtype != np.bool_:
            raise ValueError(f"sample masks must be bool, got {self.masks.dtype}")
        n_obj = sum(1 for part in self.answer if part is OBJ)
        if self.masks.shape != (n_obj, height, width):
            raise ValueError(
                f"sample has {n_obj} <obj> in its answer but masks of shape {self.masks.shape} "
                f"(expected {(n_obj, height, width)})"
            )
        if self.task == "select" and self.candidates is not None:
            count = self.candidates.shape[0]
            if self.candidates.shape != (count, height, width) or self.candidates.dtype != np.bool_:
                raise ValueError(f"candidates must be N x {height} x {width} bool, got {self.candidates.shape} "
                                 f"{self.candidates.dtype}")
            if self.selected is None or self.selected.shape != (count,) or self.selected.dtype != np.bool_:
                raise ValueError(f"selected must be {count} bool flags, one per candidate")
        elif self.task != "select" and (self.candidates is not None or self.selected is not None):
            raise ValueError("candidates/selected are only for task 'select'")
