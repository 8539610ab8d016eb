"""The training data: a mixture of sources, sampled by index so that any rank and any resumed run can start at
any position without replaying the stream.

Sample ``i`` of the mixture is a pure function of (seed, i, stage mixture): the source is drawn with ratios from
the config, then the source gives its sample for that draw.

Sources (config ``mixture``: name -> {"ratio": r, ...options}):
- synthref: SynthRef's endless stream (tasks, image_size, world_seed);
- res: RefCOCO / RefCOCO+ / RefCOCOg / RefClef in refer's layout (data, dataset, split_by, images), or PhraseCut
  (dataset "phrasecut": data, images);
- reg: region captions from the same refs: box -> one of the ref's sentences and the object's mask; or Flickr30K
  Entities (dataset "flickr30k": data, images), box -> one of the phrases naming it, no mask;
- gres: gRefCOCO, multi-target and no-target expressions (data, split_by, images);
- avs: AVSBench S4 / MS3 frames with their video's sound (data, subset);
- semseg: semantic segmentation, one category per sample: ADE20K or COCO-Stuff label maps (layout, data, classes,
  images), or PACO-LVIS objects and parts (layout "paco_lvis", data, images);
- image_referring: an example of a category from another image -> all its objects (instances, images, masked), from
  COCO instances, PASCAL VOC 2012's masks (dataset "pascal_voc": data, split, masked) or PhraseCut's objects, the
  example a crop (dataset "phrasecut": data, images, split, masked);
- groups: mask groups drawn by rule from a COCO-format instances.json (instances, images, rules, margin);
- expression_groups: (G)RES expressions as groups over the image's instances (data, dataset, split_by, images).
The public datasets are read by the evaluation readers (``eval.datasets``), from their released layouts
(docs/evaluation.md); every source defaults to its train split. An entry of another name draws from the source its
"source" option names, so that one source can be drawn from several datasets (the paper's RES group: RefCOCO,
RefCOCO+, RefCOCOg, RefClef and PhraseCut).
"""
from __future__ import annotations

import zlib

import numpy as np

from anyref.samples import ReferringSample
from anyref.synthref import SynthRef, SynthRefConfig, drawn_tasks
from train.config import source_kind, source_ratio, stage_options

__all__ = ["Mixture", "SOURCES"]


class SynthRefSource:
    """SynthRef's endless training stream. Options: tasks (task -> weight), image_size, world_seed,
    no_target_answer ("refusal" or "nowhere"), group_answer ("candidates" or "obj"), verify_answer ("plain" or
    "caption"), relational_prob and relational_answer ("as_asked" or "landmark_first"), as in
    :class:`anyref.synthref.SynthRefConfig`; any other option is refused (a misspelt one would be ignored)."""

    OPTIONS = ("ratio", "tasks", "image_size", "world_seed", "no_target_answer", "group_answer", "verify_answer",
               "relational_prob", "relational_answer")

    def __init__(self, options: dict, seed: int):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"mixture source 'synthref': unknown option(s) {unknown}; it takes {list(self.OPTIONS)}")
        defaults = SynthRefConfig()
        self.world = SynthRef(SynthRefConfig(image_size=int(options.get("image_size", defaults.image_size)),
                                             seed=int(options.get("world_seed", defaults.seed)),
                                             no_target_answer=options.get("no_target_answer", defaults.no_target_answer),
                                             group_answer=options.get("group_answer", defaults.group_answer),
                                             verify_answer=options.get("verify_answer", defaults.verify_answer),
                                             relational_answer=options.get("relational_answer",
                                                                           defaults.relational_answer),
                                             relational_prob=float(options.get("relational_prob",
                                                                               defaults.relational_prob))))
        self.seed = seed
        self.tasks = options.get("tasks")

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.world.sample_at(self.seed, index, options.get("tasks", self.tasks))

    # the reference kinds each task's prompts quote
    TASK_KINDS = {"text": {"text"}, "box": {"box"}, "example": {"example"}, "example_masked": {"example"},
                  "audio1": {"audio"}, "audio2": {"audio"}, "no_target": {"text"}, "group": {"text", "mask"},
                  "mask_caption": {"mask"}, "verify": {"text", "box"}, "text_select": {"text", "mask"}}

    def reference_kinds(self, drawn_options: list[dict]) -> set[str]:
        """Reference kinds trained by the tasks drawn under each of the options it was drawn with."""
        return set().union(*(self.TASK_KINDS[task] for options in drawn_options
                             for task in drawn_tasks(options.get("tasks", self.tasks))))


class _ReaderSource:
    """A public dataset's split through its reader (random access by item), one uniformly drawn item per sample."""

    kinds: set[str] = {"text"}

    def __init__(self, options: dict, seed: int):
        self.seed = seed
        self.reader = self._reader(options)
        if len(self.reader) == 0:
            raise ValueError(f"{type(self).__name__}: the {options.get('split', 'train')} split has no items")

    def _reader(self, options: dict):
        raise NotImplementedError

    def _item(self, index: int) -> int:
        return int(np.random.default_rng([self.seed, index, 7]).integers(len(self.reader)))

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.reader[self._item(index)]

    def reference_kinds(self, drawn_options: list[dict]) -> set[str]:
        return set(self.kinds)


def _excluded(options: dict) -> set[int]:
    """The image ids of the benchmarks named by ``exclude_images_of`` (their val and test images)."""
    from eval.datasets.benchmark_images import excluded_image_ids

    return excluded_image_ids(options.get("exclude_images_of", ()))


def _need(options: dict, key: str, source: str) -> str:
    if key not in options:
        raise ValueError(f'mixture source {source!r} needs "{key}" (its dataset root; see docs/evaluation.md)')
    return options[key]


class ResSource(_ReaderSource):
    """RefCOCO / RefCOCO+ / RefCOCOg / RefClef in refer's layout, or PhraseCut ("dataset": "phrasecut")."""

    def _reader(self, options):
        from eval.datasets import PhraseCutReader, ResReader

        data, dataset = _need(options, "data", "res"), options.get("dataset", "refcoco")
        if dataset == "phrasecut":
            return PhraseCutReader(data, options.get("split", "train"), options.get("images"))
        return ResReader(data, dataset, options.get("split", "train"), options.get("split_by"), options.get("images"))


class RegSource(_ReaderSource):
    """Region captions: the box, answered with one of the ref's sentences (drawn per sample, so every expression of
    an object is trained on) and the object's mask (as AnyRef trains); Flickr30K Entities ("dataset": "flickr30k")
    has no masks, so its boxes are answered with a phrase alone."""

    kinds = {"box"}

    def _reader(self, options):
        from eval.datasets import Flickr30kReader, RegReader

        data, dataset = _need(options, "data", "reg"), options.get("dataset", "refcocog")
        if dataset == "flickr30k":
            return Flickr30kReader(data, options.get("split", "train"), options.get("images"))
        return RegReader(data, dataset, options.get("split", "train"), options.get("split_by"), options.get("images"))

    def sample(self, index: int, options: dict) -> ReferringSample:
        from anyref.samples import OBJ

        sample = self.reader[self._item(index)]
        sentences = sample.meta.get("sentences") or ["the region"]
        sentence = sentences[int(np.random.default_rng([self.seed, index, 10]).integers(len(sentences)))]
        if "ann_id" not in sample.meta:  # no mask to answer with
            return ReferringSample(image=sample.image, references=sample.references, task="describe",
                                   answer=[sentence, "."], masks=sample.masks, source=sample.source, meta=sample.meta)
        mask = self.reader.index.mask(sample.meta["ann_id"])
        return ReferringSample(image=sample.image, references=sample.references, task="describe",
                               answer=[sentence, " ", OBJ, "."], masks=mask[None], source=sample.source,
                               meta=sample.meta)


class GresSource(_ReaderSource):
    def _reader(self, options):
        from eval.datasets import GrefReader

        return GrefReader(_need(options, "data", "gres"), options.get("split", "train"),
                          options.get("split_by", "unc"), options.get("images"))


class AvsSource(_ReaderSource):
    """One annotated frame of a random video, with the whole video's sound as the reference."""

    kinds = {"audio"}

    def _reader(self, options):
        from eval.datasets import AvsReader

        return AvsReader(_need(options, "data", "avs"), options.get("subset", "s4"), options.get("split", "train"))

    def sample(self, index: int, options: dict) -> ReferringSample:
        frames = self.reader[self._item(index)]
        return frames[int(np.random.default_rng([self.seed, index, 8]).integers(len(frames)))]


class SemSegSource(_ReaderSource):
    """Semantic segmentation, one category present in the image per sample: "layout" "ade20k" (the default) or
    "cocostuff" (label maps, train.semseg), or "paco_lvis" (objects and parts, train.paco_lvis)."""

    def _reader(self, options):
        from train.paco_lvis import PacoLvisReader
        from train.semseg import SemSegReader

        data, layout = _need(options, "data", "semseg"), options.get("layout", "ade20k")
        split = options.get("split", "train")
        if layout == "paco_lvis":
            return PacoLvisReader(data, _need(options, "images", "semseg (layout paco_lvis)"), split)
        return SemSegReader(data, options.get("classes"), split, layout, options.get("images"))

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.reader.sample(self._item(index), np.random.default_rng([self.seed, index, 9]))


class ImageReferringSource(_ReaderSource):
    """AnyRef's image-level referring from COCO instances (eval.datasets.image_referring), from PASCAL VOC 2012's
    segmentation masks ("dataset": "pascal_voc", "data": its VOC2012 folder; eval.datasets.voc_image_referring) or
    from crops of PhraseCut's objects ("dataset": "phrasecut", "data": VGPhraseCut_v0/;
    eval.datasets.phrasecut_image_referring)."""

    kinds = {"example"}

    def _reader(self, options):
        from eval.datasets import ImageReferringReader, PhraseCutImageReferringReader, VocImageReferringReader

        dataset = options.get("dataset", "coco")
        if dataset not in ("coco", "pascal_voc", "phrasecut"):
            raise ValueError(f"mixture source 'image_referring': unknown dataset {dataset!r}; it reads coco (the "
                             "default), pascal_voc and phrasecut")
        draws = {"seed": self.seed, "masked": float(options.get("masked", 0.5))}
        split = options.get("split", "train")
        if dataset == "phrasecut":
            return PhraseCutImageReferringReader(_need(options, "data", "image_referring (phrasecut)"), split,
                                                 options.get("images"), **draws)
        if dataset == "pascal_voc":
            return VocImageReferringReader(_need(options, "data", "image_referring (pascal_voc)"), split, **draws)
        return ImageReferringReader(_need(options, "instances", "image_referring"), options.get("images"), **draws,
                                    exclude_image_ids=_excluded(options))

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.reader[index]  # the reader draws by index itself


class GroupSource(_ReaderSource):
    """RAS-style groups from COCO instances by category and by absolute / relative position (eval.datasets.groups)."""

    kinds = {"text", "mask"}

    def _reader(self, options):
        from eval.datasets import CocoGroupReader

        rules = tuple(options.get("rules", ())) or None
        extra = {"rules": rules} if rules else {}
        return CocoGroupReader(_need(options, "instances", "groups"), options.get("images"), seed=self.seed,
                               margin=float(options.get("margin", 0.05)), exclude_image_ids=_excluded(options),
                               **extra)

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.reader[index]  # the reader draws by index itself


class ExpressionGroupSource(_ReaderSource):
    """gRefCOCO (dataset "grefcoco", the default) or RefCOCO-family expressions as groups over all instances."""

    kinds = {"text", "mask"}

    def _reader(self, options):
        from eval.datasets import ExpressionGroupReader, GrefReader, ResReader

        data, dataset = _need(options, "data", "expression_groups"), options.get("dataset", "grefcoco")
        split = options.get("split", "train")
        if dataset == "grefcoco":
            return ExpressionGroupReader(GrefReader(data, split, options.get("split_by", "unc"), options.get("images")))
        return ExpressionGroupReader(ResReader(data, dataset, split, options.get("split_by"), options.get("images")))


# source name -> class taking (options, seed) with sample(index, stage_options) and reference_kinds()
SOURCES = {"synthref": SynthRefSource, "res": ResSource, "reg": RegSource, "gres": GresSource, "avs": AvsSource,
           "semseg": SemSegSource, "image_referring": ImageReferringSource, "groups": GroupSource,
           "expression_groups": ExpressionGroupSource}


def _entry_seed(seed: int, name: str, kind: str) -> int:
    """The seed an entry's source draws its items with: the run's own for an entry named after its source (so a
    mixture without "source" keys draws as it always has), one of its own, from its name, for any other entry (so
    two entries of one source do not draw the same item numbers)."""
    return seed if name == kind else int(np.random.default_rng([seed, zlib.crc32(name.encode())]).integers(2**31))


class Mixture:
    """mixture: entry name -> {"ratio": r, ...options}; stage mixtures override options per entry. An entry is the
    source it is named after, or the one its "source" option names, so that one source can be drawn from several
    datasets, each with its own ratio: ``{"refcoco": {"source": "res", "dataset": "refcoco", ...}, "refcocog":
    {"source": "res", "dataset": "refcocog", ...}}``."""

    def __init__(self, mixture: dict, seed: int):
        kinds = {name: source_kind(name, options) for name, options in mixture.items()}
        unknown = {name: kind for name, kind in kinds.items() if kind not in SOURCES}
        if unknown:
            named = ", ".join(f"{name!r}" + (f" (source {kind!r})" if kind != name else "")
                              for name, kind in sorted(unknown.items()))
            raise ValueError(f"unknown data sources: {named}; available: {sorted(SOURCES)} (an entry of another "
                             'name says which it is with "source")')
        self.base = mixture
        self.seed = seed
        self.sources = {}
        for name, options in mixture.items():
            kind = kinds[name]
            self.sources[name] = SOURCES[kind]({k: v for k, v in options.items() if k != "source"},
                                               _entry_seed(seed, name, kind))

    def reference_kinds(self, stage_mixtures: list[dict] | None = None) -> set[str]:
        """Every reference kind some source trains where it is drawn (ratio > 0), with the options it is drawn
        with: in each stage's mixture (``stage_mixtures``, one override per stage), or the mixture itself."""
        effective = [stage_options(self.base, stage) for stage in (stage_mixtures or [None])]
        kinds = set()
        for name, source in self.sources.items():
            drawn = [mixture[name] for mixture in effective if source_ratio(mixture[name]) > 0]
            if drawn:
                kinds |= source.reference_kinds(drawn)
        return kinds

    def sample(self, index: int, stage_mixture: dict | None = None) -> ReferringSample:
        options = stage_options(self.base, stage_mixture)
        names = [n for n in options if source_ratio(options[n]) > 0]
        ratios = np.array([source_ratio(options[n]) for n in names])
        rng = np.random.default_rng([self.seed, index])
        name = names[int(rng.choice(len(names), p=ratios / ratios.sum()))] if len(names) > 1 else names[0]
        return self.sources[name].sample(index, options[name])
