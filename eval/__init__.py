"""Evaluation for AnyRef: benchmark metrics as pure functions and streaming accumulators.

:mod:`eval.metrics` holds the segmentation metrics (LISA, ReLA, AVSBench, HSNet semantics);
:mod:`eval.caption_metrics` holds CIDEr / METEOR for referring expression generation. The latter is not imported
here because it needs pycocoevalcap and a ``java`` executable, which the segmentation metrics do not.

Benchmarks: :mod:`eval.datasets` reads each benchmark's released files into ReferringSamples,
:mod:`eval.runners` scores a model over a reader, :mod:`eval.synthref_eval` scores SynthRef, :mod:`eval.summary`
tabulates results next to the published numbers and :mod:`eval.cli` is ``anyref eval`` (docs/evaluation.md).
"""
from eval.metrics import (
    AvsAccumulator,
    FewShotAccumulator,
    GresAccumulator,
    RefSegAccumulator,
    avs_fscore,
    avs_miou,
    ciou,
    fewshot_scores,
    giou,
    gres_scores,
)

__all__ = [
    "AvsAccumulator",
    "FewShotAccumulator",
    "GresAccumulator",
    "RefSegAccumulator",
    "avs_fscore",
    "avs_miou",
    "ciou",
    "fewshot_scores",
    "giou",
    "gres_scores",
]
