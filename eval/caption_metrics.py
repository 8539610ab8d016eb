"""CIDEr-D and METEOR for referring expression generation, computed by pycocoevalcap (the COCO caption code).

Both captions and references go through pycocoevalcap's PTB tokenizer first (lower-cased, punctuation tokens
dropped), as in the benchmark protocol, after their whitespace is collapsed to single spaces: the tokenizer reads
one caption per line and replaces only line feeds, so a carriage return, U+2028 or form feed in any caption would
shift every later caption onto the wrong id. Needs ``pip install pycocoevalcap`` and a ``java`` executable: the
tokenizer and METEOR 1.5 are Java programs. The tokenizer writes a temporary file into pycocoevalcap's own
package folder, so that folder must be writable. METEOR's first call takes ~15 s (the jar loads its paraphrase
tables).
"""
from __future__ import annotations

import os
import shutil
from typing import Hashable, Mapping, Sequence

import pycocoevalcap.tokenizer.ptbtokenizer as ptbtokenizer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

__all__ = ["caption_scores"]


def _check_inputs(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> None:
    if not predictions:
        raise ValueError("no predictions given")
    missing = [k for k in predictions if k not in references]
    extra = [k for k in references if k not in predictions]
    if missing or extra:
        raise ValueError(f"predictions and references must have the same ids; without references: {missing[:5]}, "
                         f"without a prediction: {extra[:5]}")
    for key, text in predictions.items():
        if not isinstance(text, str):
            raise ValueError(f"prediction {key!r} must be a str, got {type(text).__name__}")
    for key, refs in references.items():
        # A bare string is a sequence too; it would be scored as one reference per character.
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{key!r}] must be a non-empty list of str, got {refs!r}")


def _check_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError("caption_scores needs a `java` executable on PATH (pycocoevalcap runs the Stanford "
                           "PTB tokenizer and METEOR 1.5 as Java programs); install a JRE, e.g. "
                           "`apt-get install default-jre-headless`")
    package_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    if not os.access(package_dir, os.W_OK):
        raise RuntimeError(f"pycocoevalcap's tokenizer writes a temporary file into {package_dir}, which is not "
                           "writable; install pycocoevalcap into a writable environment (e.g. a venv)")


def _one_line(text: str) -> str:
    """``text`` with every run of whitespace (line and paragraph separators included) as one space: the tokenizer
    takes each line of its input for the next caption."""
    return " ".join(text.split())


def caption_scores(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """Corpus CIDEr-D (n = 4, sigma = 6) and METEOR 1.5 of generated expressions.

    predictions: id -> generated expression; references: id -> its ground-truth expressions (at least one).
    Returns {"cider", "meteor"}. METEOR is the jar's corpus aggregate (not a mean of sentence scores), in [0, 1].
    CIDEr-D is on pycocoevalcap's own scale (0 to 10; papers print it x100) and its IDF weights come from the
    references given, so score a whole split in one call: on a single id every n-gram has IDF 0 and CIDEr is 0.
    """
    _check_inputs(predictions, references)
    _check_java()
    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({key: [{"caption": _one_line(text)}] for key, text in predictions.items()})
    gts = tokenizer.tokenize({key: [{"caption": _one_line(r)} for r in refs] for key, refs in references.items()})
    cider, _ = Cider(n=4, sigma=6.0).compute_score(gts, res)
    meteor_scorer = Meteor()
    try:
        meteor, _ = meteor_scorer.compute_score(gts, res)
    finally:
        # The jar runs as a child process until the wrapper is collected; drop it now rather than at exit.
        del meteor_scorer
    return {"cider": float(cider), "meteor": float(meteor)}
