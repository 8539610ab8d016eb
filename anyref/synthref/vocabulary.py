"""SynthRef's closed world: shapes, colours, sizes, relations, and every word a prompt or an answer can use.

Answer format (the one place it is defined; every task follows it):
- one region:  ``[phrase, " ", OBJ, "."]``                                e.g. ``["the red circle", " ", OBJ, "."]``
- two regions: ``[phrase_a, " ", OBJ, " and ", phrase_b, " ", OBJ, "."]``  e.g. ``["circle", " ", OBJ, " and ", ...]``
- no target:   ``[NO_TARGET_ANSWER]`` with zero masks;
- verification (task "verify"): ``[verify_answer(matches, caption or None)]`` ("yes." / "no.", or after the boxed
  object's caption "the large red circle: no."), no mask;
- mask groups (task "select"): ``[]``; the group is in ``ReferringSample.selected``; posed as "segment"
  (``group_answer="obj"``): ``GROUP_OBJ_ANSWER`` = ``[OBJ, "."]``, one mask, the group's union (maybe empty);
  with ``group_answer="said"`` one region whose phrase restates the rule (``tasks.said_group_phrase``).
The phrase is the expression itself for "text" (a relational one restated landmark first with
``relational_answer="landmark_first"``: expressions.answer_phrase), the caption "the {size} {colour} {shape}" for
"box", and the bare singular shape name for "example", "example_masked", "audio1" and "audio2" (also when several
objects share it: the name is the category, as in AnyRef's "{class} <obj>."). "audio2" names its two shapes in
SHAPES order (not by position), so that naming them needs only the sound, and mask k belongs to the k-th name.
"""
from __future__ import annotations

import re

from anyref.samples import OBJ, AnswerPart

__all__ = [
    "SHAPES", "PLURALS", "COLOURS", "COLOUR_HUES", "SIZES", "SIZE_FRACTIONS", "RELATIONS", "NO_TARGET_ANSWER",
    "GROUP_OBJ_ANSWER", "GROUP_PHRASES", "SAID_GROUP_PHRASES", "UNLISTED_WORDS", "describe", "caption", "single_answer", "pair_answer",
    "vocabulary_words", "words_of",
]

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}

# hue in degrees of each colour name; objects jitter it by at most COLOUR_HUE_JITTER and never use the exact value
COLOUR_HUES = {"red": 0.0, "orange": 28.0, "yellow": 55.0, "green": 125.0, "blue": 220.0, "purple": 280.0}
COLOURS = tuple(COLOUR_HUES)
COLOUR_HUE_JITTER = 6.0

SIZES = ("small", "large")
# (min, max) extent of an object's silhouette as a fraction of the image side: 18-26 px and 34-48 px at 128 px
SIZE_FRACTIONS = {"small": (18 / 128, 26 / 128), "large": (34 / 128, 48 / 128)}

# relation word -> (axis, sign): the object's box centre minus the landmark's, along axis (0 = x, 1 = y), times sign,
# must be large and positive ("left of": x smaller, so sign -1; "below": y larger in image rows, so sign +1)
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}

NO_TARGET_ANSWER = "there is no such object."
GROUP_OBJ_ANSWER = (OBJ, ".")

# text pieces of the mask-group prompts ("select"); {x} is filled from the vocabulary
GROUP_PHRASES = {
    "all_shape": "all {plural}",
    "all_colour": "all {colour} objects",
    "all_size": "all {size} objects",
    "same_colour": "everything the same colour as",
    "same_shape": "everything the same shape as",
    "spatial": "everything {relation}",
}

# how a "said" group answer restates a rule that points at a mask: by the attribute it selects, "other" because the
# referenced object is never a member of its own group
SAID_GROUP_PHRASES = {
    "same_colour": "all other {colour} objects",
    "same_shape": "all other {plural}",
}

# words of SynthRef texts that vocabulary_words() leaves out: the "verify" answers' ("the red circle: yes.") and the
# "said" group answers' ("all other red objects"), added after the shipped model's tokenizer was built from that
# list; listing them renumbers 151 of its tokens, so a tiny tokenizer built now would no longer be the shipped
# chain's. They stay a few byte-level tokens each.
UNLISTED_WORDS = ("yes", ":", "other")

_WORD = re.compile(r"\w+|[^\w\s]")


def describe(shape: str, colour: str | None = None, size: str | None = None) -> str:
    """A noun phrase for an object: ``describe("circle", "red", "small") == "the small red circle"``."""
    return " ".join(["the"] + [w for w in (size, colour) if w] + [shape])


def caption(shape: str, colour: str, size: str) -> str:
    """The exact region caption of the "box" task: "the {size} {colour} {shape}"."""
    return describe(shape, colour, size)


def single_answer(phrase: str) -> list[AnswerPart]:
    """Answer naming one region: ``[phrase, " ", OBJ, "."]``."""
    return [phrase, " ", OBJ, "."]


def pair_answer(phrase_a: str, phrase_b: str) -> list[AnswerPart]:
    """Answer naming two regions: ``[phrase_a, " ", OBJ, " and ", phrase_b, " ", OBJ, "."]``."""
    return [phrase_a, " ", OBJ, " and ", phrase_b, " ", OBJ, "."]


def words_of(text: str) -> list[str]:
    """Split a prompt or answer text into the units of :func:`vocabulary_words` (words and punctuation marks)."""
    return _WORD.findall(text)


def vocabulary_words() -> list[str]:
    """Every word and punctuation mark that any SynthRef prompt text or answer can contain, in a fixed order.

    Texts are these units joined by single spaces, with "." attached to the word before it."""
    texts = [describe(shape, colour, size) for shape in SHAPES for colour in COLOURS for size in SIZES]
    texts += list(RELATIONS) + list(PLURALS.values()) + [NO_TARGET_ANSWER, " and ", "."]
    texts += [GROUP_PHRASES["all_colour"].format(colour=c) for c in COLOURS]
    texts += [GROUP_PHRASES["all_size"].format(size=s) for s in SIZES]
    texts += [GROUP_PHRASES[key] for key in ("same_colour", "same_shape")]
    texts += [GROUP_PHRASES["spatial"].format(relation=r) for r in RELATIONS]
    texts += [GROUP_PHRASES["all_shape"].format(plural=p) for p in PLURALS.values()]
    words: list[str] = []
    for text in texts:
        for word in words_of(text):
            if word not in words:
                words.append(word)
    return words
