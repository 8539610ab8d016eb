"""Readers of the benchmarks' own on-disk layouts; every reader yields :class:`anyref.samples.ReferringSample`.

- :mod:`eval.datasets.refer`: RefCOCO / RefCOCO+ / RefCOCOg / RefClef (``ResReader``; ``RegReader`` for captions);
- :mod:`eval.datasets.phrasecut`: VGPhraseCut, phrases over Visual Genome images (``PhraseCutReader``);
- :mod:`eval.datasets.flickr30k`: Flickr30K Entities, boxes and the phrases naming them (``Flickr30kReader``);
- :mod:`eval.datasets.grefcoco`: gRefCOCO, with no-target expressions (``GrefReader``);
- :mod:`eval.datasets.groups`: mask groups over COCO instances (``ExpressionGroupReader``, ``CocoGroupReader``);
- :mod:`eval.datasets.image_referring`: example-image referring over COCO instances (``ImageReferringReader``);
- :mod:`eval.datasets.voc_image_referring`: the same over PASCAL VOC 2012's masks (``VocImageReferringReader``);
- :mod:`eval.datasets.phrasecut_image_referring`: the same over PhraseCut's objects, the example a crop
  (``PhraseCutImageReferringReader``);
- :mod:`eval.datasets.avsbench`: AVSBench S4 and MS3, one item per video (``AvsReader``);
- :mod:`eval.datasets.fewshot`: PASCAL-5i and COCO-20i episodes, HSNet's protocol (``FewShotReader``);
- :mod:`eval.datasets.synthref`: SynthRef's fixed splits (``SynthRefReader``).

Readers are sized (``len``) and iterable; they load images lazily, while iterating.
"""
from eval.datasets.avsbench import AVS_SUBSETS, AvsReader
from eval.datasets.fewshot import FEWSHOT_BENCHMARKS, FewShotReader, fold_classes
from eval.datasets.flickr30k import FLICKR30K_SPLITS, Flickr30kReader
from eval.datasets.grefcoco import GrefReader
from eval.datasets.groups import CocoGroupReader, ExpressionGroupReader
from eval.datasets.image_referring import ImageReferringReader
from eval.datasets.phrasecut import PHRASECUT_SPLITS, PhraseCutReader
from eval.datasets.phrasecut_image_referring import PhraseCutImageReferringReader
from eval.datasets.refer import DEFAULT_SPLIT_BY, REFER_DATASETS, RegReader, ResReader
from eval.datasets.synthref import SynthRefReader
from eval.datasets.voc_image_referring import VocImageReferringReader

__all__ = ["AVS_SUBSETS", "AvsReader", "CocoGroupReader", "ExpressionGroupReader", "ImageReferringReader",
           "FEWSHOT_BENCHMARKS", "FewShotReader", "fold_classes", "FLICKR30K_SPLITS",
           "Flickr30kReader", "GrefReader", "PHRASECUT_SPLITS", "PhraseCutImageReferringReader", "PhraseCutReader",
           "DEFAULT_SPLIT_BY", "REFER_DATASETS", "RegReader", "ResReader", "SynthRefReader",
           "VocImageReferringReader"]
