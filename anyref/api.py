"""The public model: ``AnyRef.from_pretrained(dir)``, ``segment(image, ref)``, ``describe(image, box)``,
``select(image, prompt, candidates)``, ``verify(image, region, expression)``."""
from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anyref.answer_verifier import prompt_ids, verifier_inputs
from anyref.batching import collate, prepare
from anyref.candidates import check_candidates, distinct_masks, grows, sam_candidates
from anyref.checkpoint import load_directory, save_directory
from anyref.group_heads import group_members
from anyref.heads import placed_nowhere, upscale_masks
from anyref.images import binary_mask, load_image
from anyref.mask_crf import crf_refined_result
from anyref.model import AnyRefModel, unique_rows
from anyref.outputs import REJECTED, Generation, GroupResult, SegmentResult, mark_nowhere, masks_and_scores
from anyref.prefix import PrefixCache
from anyref.prompts import reference_kind
from anyref.references import Audio, Box, ExampleImage, MaskRef, as_reference_list
from anyref.samples import OBJ, ReferringSample, verify_answer, verify_caption
from encoders.llava import vision_patch_grid

__all__ = ["AnyRef", "CLIPPED_LOGIT"]

# the cap on a mask's logits where ``config.describe_box_margin`` rules the object out (probability < 5e-5)
CLIPPED_LOGIT = -10.0


class AnyRef(AnyRefModel):
    """AnyRef with its user-facing methods. Build with :mod:`anyref.builders` or ``from_pretrained``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> "AnyRef":
        """Load a directory written by ``save_pretrained``, or a shipped model by name ("synthref-tiny")."""
        return load_directory(cls, name_or_path, device)

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write config.json, safetensors weights, the tokenizer (and ``adapter/`` with LoRA on), atomically;
        ``extra_files`` (file name -> text, e.g. a report on these weights) in the same atomic replacement."""
        return save_directory(self, directory, extra_files=extra_files)

    # ---------------------------------------------------------------------------------------- validation
    def check_references(self, refs: list, allow_untrained: bool = False) -> None:
        """Refuse references this model cannot encode, with a message that says why."""
        for ref in refs:
            kind = reference_kind(ref)
            if isinstance(ref, Audio) and self.audio_encoder is None:
                raise ValueError("this model was built without an audio encoder, so it cannot take Audio "
                                 "references; load a model with audio support (config.audio set)")
            if kind in self.config.untrained_references and not allow_untrained:
                raise ValueError(f"this model's {kind} reference encoder was never trained (config "
                                 f"untrained_references={self.config.untrained_references}); fine-tune it first, "
                                 "or pass allow_untrained=True to run it anyway")

    # ---------------------------------------------------------------------------------------- image cache
    @torch.no_grad()
    def set_image(self, image) -> None:
        """Encode ``image`` once (vision tower and SAM image encoder) for the queries that follow, as SamPredictor
        does: ``segment``/``describe``/``segment_many`` then take ``image=None`` (or the same pixels again) and
        reuse the features. ``set_image(None)`` forgets it."""
        if image is None:
            self._image = None
            return
        pixels = load_image(image)
        prepared = prepare(ReferringSample(image=pixels, references=["-"], task="segment"), self.builder,
                           with_answer=False)
        batch = collate([prepared], self.ids.pad).to(self.device, self.dtype)
        grid = vision_patch_grid(self.llava, batch.clip_pixels)
        self._image = _ImageFeatures(_pixel_key(pixels), pixels, grid, self.sam_embeddings(batch.sam_pixels))

    def _pixels_and_features(self, image) -> tuple[np.ndarray, "_ImageFeatures | None"]:
        """The query image's pixels, and the cached features when they belong to these pixels."""
        cached = getattr(self, "_image", None)
        if image is None:
            if cached is None:
                raise ValueError("no image given and none set: pass an image, or call set_image(image) first")
            return cached.pixels, cached
        pixels = load_image(image)
        if cached is not None and cached.key == _pixel_key(pixels):
            return pixels, cached
        return pixels, None

    # ---------------------------------------------------------------------------------------------- API
    def _prompt_references(self, ref, allow_untrained: bool) -> list:
        """``ref`` as the list of references a prompt quotes; with ``config.example_self_mask`` each ExampleImage
        without a mask gets the union of the masks this model answers on its own image, with the example as its
        own reference (left as given when that answer has no mask)."""
        references = _references(ref)
        if not self.config.example_self_mask:
            return references
        masked = []
        for reference in references:
            if isinstance(reference, ExampleImage) and reference.mask is None:
                pixels = load_image(reference.image)
                generations, batch, sam = self._run(pixels, [[ExampleImage(pixels)]], "segment", allow_untrained)
                own = self._crf_refined(self._masks_for(generations, batch, sam), [pixels])[0].masks.any(0)
                reference = ExampleImage(pixels, mask=own) if own.any() else reference
            masked.append(reference)
        return masked

    def _batch(self, samples: list[ReferringSample], allow_untrained: bool, answer_tokens: int):
        """Prepared, checked and left-padded inputs for several samples."""
        for sample in samples:
            self.check_references(sample.references, allow_untrained)
        prepared = [prepare(sample, self.builder, with_answer=False) for sample in samples]
        limit = self.llava.config.text_config.max_position_embeddings
        longest = max(len(p.input_ids) for p in prepared)
        if longest + answer_tokens > limit:
            raise ValueError(f"prompt takes {longest} tokens + {answer_tokens} for the answer, more than this "
                             f"model's context of {limit} tokens; shorten the text (or pass fewer candidates)")
        return collate(prepared, self.ids.pad, padding_side="left").to(self.device, self.dtype)

    def _cached(self, batch, features: "_ImageFeatures | None") -> tuple:
        """(grids, SAM embedding 1 x C x g x g or None) for a one-image batch: the cached ones, else the SAM
        embedding only when mask tokens pool it (otherwise it is computed once masks are needed)."""
        rows = len(batch.input_ids)
        if features is not None:
            return features.grid.expand(rows, -1, -1, -1), features.sam
        sam = None
        if "sam" in self.mask_sources and len(batch.mask_owners):
            sam = self.sam_embeddings(batch.sam_pixels[:1])
        return None, sam

    def _run(self, image, ref_lists: list[list], task: str, allow_untrained: bool, **generate_options):
        """Generate answers for several reference lists on one image in one batch (left padded).
        Returns (generations, batch, SAM embedding 1 x C x g x g or None when not computed yet)."""
        pixels, features = self._pixels_and_features(image)
        samples = [ReferringSample(image=pixels, references=refs, task=task) for refs in ref_lists]
        batch = self._batch(samples, allow_untrained, self.config.max_new_tokens)
        grids, sam = self._cached(batch, features)
        sams = None if sam is None else sam.expand(len(samples), -1, -1, -1)
        if features is not None:  # the image's shared prompt prefix runs once, then comes from its cache
            generate_options.update(prefix=features.prefix, keep_prefix=features.keep_prefix)
        return self.generate(batch, grids=grids, sam_embeddings=sams, **generate_options), batch, sam

    @torch.no_grad()
    def segment(self, image=None, ref=None, allow_untrained: bool = False) -> SegmentResult:
        """Masks for what ``ref`` points at in ``image``.

        image: a path, PIL image or H x W x 3 uint8 array (grayscale, RGBA and 16-bit are converted); None for
        the image given to ``set_image``. ref: a str, Box, ExampleImage, Audio, or a list of these read left to
        right as one expression. Returns masks K x H x W bool at the image's size (K = the number of ``<obj>``
        in the answer, maybe 0).
        """
        references = self._prompt_references(ref, allow_untrained)
        image = None if image is None else load_image(image)  # read once: the answer checks look at it again
        generations, batch, sam = self._run(image, [references], "segment", allow_untrained)
        return self._answers(generations, batch, sam, [image], [references], allow_untrained)[0]

    @torch.no_grad()
    def segment_many(self, image, refs: list, allow_untrained: bool = False) -> list[SegmentResult]:
        """``segment`` for several references on one image at once: one vision and one SAM encoder pass, one
        LLM forward per generated token for all of them. refs: a list whose items are what ``segment`` takes."""
        if not isinstance(refs, (list, tuple)) or not refs:
            raise ValueError("refs must be a non-empty list of references (each a str, Box, ... or a list)")
        references = [self._prompt_references(r, allow_untrained) for r in refs]
        image = None if image is None else load_image(image)  # read once: the answer checks look at it again
        generations, batch, sam = self._run(image, references, "segment", allow_untrained)
        return self._answers(generations, batch, sam, [image] * len(refs), references, allow_untrained)

    def _pair_samples(self, images: list, refs: list, allow_untrained: bool) -> list[ReferringSample]:
        """Checked "segment" samples of (image, reference) pairs, as ``segment_batch`` takes them."""
        if not isinstance(images, (list, tuple)) or not isinstance(refs, (list, tuple)) or len(images) != len(refs):
            raise ValueError("images and refs must be lists of the same length, one image per reference")
        if not images:
            raise ValueError("images and refs are empty: give at least one (image, reference) pair")
        return [ReferringSample(image=load_image(image), references=self._prompt_references(ref, allow_untrained),
                                task="segment")
                for image, ref in zip(images, refs)]

    @torch.no_grad()
    def segment_batch(self, images: list, refs: list, allow_untrained: bool = False) -> list[SegmentResult]:
        """``segment`` for several (image, reference) pairs in ONE batch: each distinct image is encoded once (vision
        tower and SAM), one LLM forward per generated token serves every pair, all masks in one decoder call.
        images, refs: lists of equal length, items as ``segment`` takes them."""
        samples = self._pair_samples(images, refs, allow_untrained)
        batch = self._batch(samples, allow_untrained, self.config.max_new_tokens)
        return self._answers(self.generate(batch), batch, None, [s.image for s in samples],
                             [s.references for s in samples], allow_untrained)

    @torch.no_grad()
    def describe(self, image=None, ref=None, allow_untrained: bool = False,
                 with_masks: bool = False) -> str | SegmentResult:
        """A caption of the referred region, e.g. ``describe(image, Box(10, 20, 60, 80))``.

        with_masks: return a SegmentResult instead, whose ``text`` is the caption (``answer``: the answer with its
        ``<obj>`` / ``<nowhere>`` markers) and whose ``masks`` come from the ``<obj>`` tokens of the same answer
        (AnyRef answers a region caption with the region's mask). With
        ``config.describe_box_prior`` and exactly one Box in ``ref``, the first ``<obj>``'s mask is drawn from that
        box (the region the caption is about) rather than from the ``<obj>``'s own location map; with
        ``config.describe_box_margin`` it is kept within that box, grown by the margin.
        """
        references = self._prompt_references(ref, allow_untrained)
        image = None if image is None else load_image(image)  # read once: the CRF looks at it again
        generations, batch, sam = self._run(image, [references], "describe", allow_untrained)
        caption = " ".join(generations[0].text.replace(self.config.obj_token, " ").split()).replace(" .", ".")
        if not with_masks:
            return caption
        boxes = [r for r in references if isinstance(r, Box)]
        region = bounds = None
        if len(boxes) == 1:
            if self.config.describe_box_prior:
                region = boxes[0].mask(*batch.image_sizes[0])
            if self.config.describe_box_margin is not None:
                bounds = boxes[0].grown(self.config.describe_box_margin).mask(*batch.image_sizes[0])
        result = self._crf_refined(self._masks_for(generations, batch, sam, regions=[region], bounds=[bounds]),
                                   [image])[0]
        result.answer, result.text = result.text, caption
        return result

    @torch.no_grad()
    def verify(self, image=None, region=None, expression=None, allow_untrained: bool = False) -> float:
        """The model's probability that ``region`` is what ``expression`` describes.

        Asks "Is <region> {expression} in this image?" (task "verify") and compares the teacher-forced
        log-likelihoods of the whole answers "yes." and "no." (so it holds for any tokenizer): P(yes) =
        sigmoid(log p(yes.) - log p(no.)). The answer is generated first: a model trained to caption the region
        before it judges ("the large red circle: no.") is scored after its own caption.

        image: as in ``segment``. region: a Box, or an H x W bool mask at the image's size, read as its bounding
        box. expression: a str, or a list of references read inline as ``segment`` reads them. Meaningful for
        models trained on "verify" samples (SynthRef task "verify").
        """
        pixels, _ = self._pixels_and_features(image)
        if region is None:
            raise ValueError("no region given: pass region= a Box or an H x W bool mask of the image")
        box = region if isinstance(region, Box) else Box.around(_region_mask(region, pixels.shape[:2]))
        return float(self._verify_probabilities(pixels, [(box, _references(expression, "expression"))],
                                                allow_untrained)[0])

    def _verify_probabilities(self, image, questions: list[tuple], allow_untrained: bool) -> np.ndarray:
        """P(yes) for each (region, references) question on one image, a region a Box or an H x W bool mask read
        as its bounding box: Q. The answers are generated (one batch), then each is scored as "yes." and as "no."
        after the caption it starts with, if any (one teacher-forced pass over 2Q rows)."""
        pixels, features = self._pixels_and_features(image)
        asked = [[region if isinstance(region, Box) else Box.around(region), *refs] for region, refs in questions]
        generations, _, _ = self._run(pixels, asked, "verify", allow_untrained)  # pixels: the file is read once
        captions = [verify_caption(g.text) for g in generations]
        samples = [ReferringSample(image=pixels, references=refs, task="verify", answer=[verify_answer(yes, caption)])
                   for refs, caption in zip(asked, captions) for yes in (True, False)]
        batch = collate([prepare(sample, self.builder) for sample in samples], self.ids.pad).to(self.device,
                                                                                               self.dtype)
        grids = sams = None
        if features is not None:
            grids = features.grid.expand(len(samples), -1, -1, -1)
            sams = features.sam.expand(len(samples), -1, -1, -1)
        scores = self.answer_log_likelihoods(batch, grids, sams).view(-1, 2)
        return (scores[:, 0] - scores[:, 1]).sigmoid().cpu().numpy()

    def _group_check_probabilities(self, image, questions: list[tuple[np.ndarray, list]],
                                   allow_untrained: bool) -> np.ndarray:
        """The text check head's (``config.text_check_head``; else the group head's) membership probability for
        each (mask H x W bool, references) question on one image: the references asked as a "select" prompt with
        the mask as its one candidate, all Q in one batch."""
        pixels, features = self._pixels_and_features(image)
        return self._candidate_probabilities([ReferringSample(image=pixels, references=refs, task="select",
                                                              candidates=mask[None], selected=np.zeros(1, dtype=bool))
                                              for mask, refs in questions], features, allow_untrained,
                                             self.text_check_head)

    def _verifier_probabilities(self, image, questions: list[tuple[np.ndarray, list]],
                                allow_untrained: bool) -> np.ndarray:
        """The answer verifier's probability (``config.answer_verifier``) for each (mask H x W bool, references of
        text alone) question on one image, all Q in one forward pass; the references' texts are read joined by a
        space."""
        if self.answer_verifier is None:
            raise ValueError("this model has no answer verifier (config.answer_verifier is off): fit one with "
                             "`anyref fit-verifier`")
        pixels, _ = self._pixels_and_features(image)
        prompts = [prompt_ids(self.tokenizer, refs) for _, refs in questions]
        inputs = verifier_inputs([pixels] * len(questions), [mask[None] for mask, _ in questions], prompts)
        parameter = next(self.answer_verifier.parameters())
        logits = self.answer_verifier(inputs.to(parameter.device, parameter.dtype))
        return logits.float().sigmoid().cpu().numpy()

    def _candidate_probabilities(self, samples: list[ReferringSample], features: "_ImageFeatures | None",
                                 allow_untrained: bool, head: torch.nn.Module | None = None) -> np.ndarray:
        """``head``'s (None: the group head's) membership probability of every candidate of "select" samples on
        one image (sample by sample, N in all), in ONE forward pass; features: that image's cached ones, or
        None."""
        batch = self._batch(samples, allow_untrained, 0)
        self.check_references([MaskRef(samples[0].candidates[0])], allow_untrained)  # candidates are mask tokens
        grids, sam = self._cached(batch, features)
        sams = None if sam is None else sam.expand(len(samples), -1, -1, -1)  # mask tokens pool each row's own
        return self.select_logits(batch, grids, sams, head).float().sigmoid().cpu().numpy()

    def _answers(self, generations: list[Generation], batch, sam: torch.Tensor | None, images: list,
                 ref_lists: list[list], allow_untrained: bool) -> list[SegmentResult]:
        """The SegmentResults of generated answers: their masks, then each inference step the config turns on, in
        order - the text answers ranked among their location candidates, the model's own answer checks, the CRF,
        the answer verifier's check (on the masks as answered: it was fitted on annotated object masks, whose edges
        the CRF's are closer to than the decoder's). sam: the batch's SAM embedding when computed already
        (1 x C x g x g), else None; images: per row, its pixels or None for the ``set_image`` image."""
        ranked = self._ranked_rows(generations, ref_lists)
        if ranked:
            sam = self._sam_of(batch, sam)  # the ranking draws masks on it too: encoded once
        # a ranked row's answer is one of its candidates whatever its own mask: that mask is not drawn
        results = self._masks_for(generations, batch, sam, skip=ranked)
        results = self._ranked(results, generations, batch, sam, images, ref_lists, ranked, allow_untrained)
        results = self._verified(results, images, ref_lists, allow_untrained, self._model_checks())
        results = self._crf_refined(results, images)
        return self._verified(results, images, ref_lists, allow_untrained, self._pixel_checks())

    def _sam_of(self, batch, sam: torch.Tensor | None) -> torch.Tensor:
        """The batch's SAM image embeddings: ``sam`` when computed already (1 x C x g x g for a one-image batch),
        else each distinct image's once, B x C x g x g."""
        if sam is not None:
            return sam
        unique, inverse = unique_rows(batch.sam_pixels)
        return self.sam_embeddings(unique)[inverse]

    def _location_candidates(self, generations: list[Generation], batch, rows: list[int],
                             sam: torch.Tensor) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
        """For each of ``rows``: (mask logits K x H x W at the row's image size, the masks drawn at the peaks of the
        location map of the row's first ``<obj>`` (``AnyRefModel.location_peak_masks``, all rows at once) that are
        worth asking about (:func:`anyref.candidates.distinct_masks`); the K peaks they were drawn at); sam: the
        batch's embeddings (1 or B rows)."""
        if not rows:
            return []
        lows, peaks = self.location_peak_masks(*self._location_inputs(generations, batch, rows, sam))
        out = []
        for row, low, own in zip(rows, lows, peaks):
            logits = upscale_masks(self.sam, low, batch.sam_sizes[row], batch.image_sizes[row]).float()
            kept = distinct_masks(logits)
            out.append((logits[kept], [own[k] for k in kept]))
        return out

    def _location_inputs(self, generations: list[Generation], batch, rows: list[int], sam: torch.Tensor) -> tuple:
        """What ``AnyRefModel.location_peak_masks`` reads of ``rows``: (embeddings, the first ``<obj>``'s states,
        image states, SAM sizes, image sizes)."""
        index = torch.tensor(rows, device=sam.device)
        return (sam if len(sam) == 1 else sam[index], torch.cat([generations[r].obj_states[:1] for r in rows]),
                torch.stack([generations[r].image_states for r in rows]), [batch.sam_sizes[r] for r in rows],
                [batch.image_sizes[r] for r in rows])

    @torch.no_grad()
    def location_candidates(self, image=None, ref=None, allow_untrained: bool = False) -> np.ndarray:
        """The candidates ``config.rank_text_answers`` ranks for ``ref`` on ``image`` (as ``segment`` takes them):
        K x H x W bool masks drawn at the peaks of the location map of the answer's first ``<obj>``, strongest peak
        first; 0 masks when the answer has no ``<obj>``. For fitting the text rank head on the same candidates
        (train/head_input_cache.py) and for looking at them."""
        self._require_location_map()
        references = self._prompt_references(ref, allow_untrained)
        generations, batch, sam = self._run(None if image is None else load_image(image), [references], "segment",
                                            allow_untrained)
        if not len(generations[0].obj_states):
            return np.zeros((0, *batch.image_sizes[0]), dtype=bool)
        return (self._location_candidates(generations, batch, [0], self._sam_of(batch, sam))[0][0] > 0).cpu().numpy()

    @torch.no_grad()
    def location_candidates_batch(self, images: list, refs: list, allow_untrained: bool = False) -> list[np.ndarray]:
        """``location_candidates`` for several (image, reference) pairs in one batch, as ``segment_batch`` answers
        them: one generation for all, each distinct image encoded once, every row's candidates in one decoder call.
        Returns per pair K x H x W bool masks (0 masks when its answer has no ``<obj>``). Cheaper per prompt than
        ``location_candidates`` when caching many prompts (train/head_input_cache.py)."""
        self._require_location_map()
        samples = self._pair_samples(images, refs, allow_untrained)
        batch = self._batch(samples, allow_untrained, self.config.max_new_tokens)
        generations = self.generate(batch)
        rows = [row for row, generation in enumerate(generations) if len(generation.obj_states)]
        drawn = dict(zip(rows, self._location_candidates(generations, batch, rows, self._sam_of(batch, None))))
        return [(drawn[row][0] > 0).cpu().numpy() if row in drawn
                else np.zeros((0, *batch.image_sizes[row]), dtype=bool) for row in range(len(samples))]

    def _ranked_rows(self, generations: list[Generation], ref_lists: list[list]) -> list[int]:
        """The rows ``config.rank_text_answers`` answers (none when it is off): those whose answer has one ``<obj>``
        to a prompt of text alone."""
        if self.config.rank_text_answers is None:
            return []
        return [row for row, (generation, references) in enumerate(zip(generations, ref_lists))
                if len(generation.obj_states) == 1 and all(isinstance(r, str) for r in references)]

    def _ranked(self, results: list[SegmentResult], generations: list[Generation], batch, sam: torch.Tensor,
                images: list, ref_lists: list[list], rows: list[int], allow_untrained: bool) -> list[SegmentResult]:
        """``results`` with ``config.rank_text_answers`` applied to ``rows`` (``_ranked_rows``): each becomes its
        best location candidate (``_rank_best``) if that one's probability is over the threshold, else no mask (its
        ``<obj>`` written ``<rejected>``)."""
        best = self._rank_best(generations, batch, sam, images, ref_lists, rows, allow_untrained)
        ranked = list(results)
        for row in rows:
            generation = generations[row]
            logits, probability = best.get(row, (None, 0.0))
            if logits is None or probability <= self.config.rank_text_answers:
                ranked[row] = _without_masks(mark_nowhere(generation.text, self.config.obj_token, [False],
                                                          mark=REJECTED), batch.image_sizes[row])
            else:
                masks, scores = masks_and_scores(logits)
                ranked[row] = SegmentResult(masks.cpu().numpy(), scores.cpu().numpy(),
                                            mark_nowhere(generation.text, self.config.obj_token, [True]),
                                            logits.cpu().numpy())
        return ranked

    def _rank_best(self, generations: list[Generation], batch, sam: torch.Tensor, images: list,
                   ref_lists: list[list], rows: list[int], allow_untrained: bool) -> dict[int, tuple[torch.Tensor, float]]:
        """For each of ``rows`` that has location candidates: (its best one by the text rank head, mask logits
        1 x H x W at the image's size, drawn again with a wider window when ``config.rank_redraw_window`` says so
        (``_redrawn``); that one's probability). The candidates of all rows are drawn in one decoder call per pass,
        and the rows given the same image object (all of a ``segment_many``) are asked in one select forward.
        images: per row, its pixels or None for the ``set_image`` image; sam: the batch's SAM embeddings (1 or B
        rows)."""
        if not rows:
            return {}
        candidates = dict(zip(rows, self._location_candidates(generations, batch, rows, sam)))
        asked: dict[int, list[int]] = {}  # id of an image given -> its rows with candidates, asked in one forward
        for row, (logits, _) in candidates.items():
            if len(logits):
                asked.setdefault(id(images[row]), []).append(row)
        best: dict[int, tuple[torch.Tensor, float]] = {}
        chosen_peaks: dict[int, tuple[int, int]] = {}
        for same_image in asked.values():
            pixels, features = self._pixels_and_features(images[same_image[0]])
            questions = [ReferringSample(image=pixels, references=ref_lists[row], task="select",
                                         candidates=(candidates[row][0] > 0).cpu().numpy(),
                                         selected=np.zeros(len(candidates[row][0]), dtype=bool)) for row in same_image]
            probabilities = self._candidate_probabilities(questions, features, allow_untrained, self.text_rank_head)
            for row, own in zip(same_image, np.split(probabilities, np.cumsum([len(q.candidates)
                                                                               for q in questions])[:-1])):
                chosen = int(own.argmax())
                logits, peaks = candidates[row]
                best[row] = (logits[chosen:chosen + 1], float(own[chosen]))
                chosen_peaks[row] = peaks[chosen]
        return self._redrawn(best, chosen_peaks, generations, batch, sam)

    def _redrawn(self, best: dict[int, tuple[torch.Tensor, float]], peaks: dict[int, tuple[int, int]],
                 generations: list[Generation], batch, sam: torch.Tensor) -> dict[int, tuple[torch.Tensor, float]]:
        """``best`` (row -> (mask logits 1 x H x W, probability)) with each chosen candidate drawn again at its peak
        (``peaks``, row -> cell) with the location map kept within ``config.rank_redraw_window`` cells of it, all
        rows in one decoder call per pass; the redraw replaces the candidate when it covers at least
        REDRAW_COVER of the candidate's pixels (:func:`anyref.candidates.grows`). Why: a candidate is drawn within
        3 x 3 cells of its peak, and an object larger than that comes out cut by a straight edge; the ranking
        itself stays on the candidates its head was fitted on. Unchanged when the setting is off."""
        half_width = self.config.rank_redraw_window
        if half_width is None or not best:
            return best
        rows = sorted(best)
        lows, _ = self.location_peak_masks(*self._location_inputs(generations, batch, rows, sam),
                                           peaks=[[peaks[row]] for row in rows], half_width=half_width)
        redrawn = dict(best)
        for row, low in zip(rows, lows):
            logits, probability = best[row]
            wider = upscale_masks(self.sam, low, batch.sam_sizes[row], batch.image_sizes[row]).float()
            if grows(logits[0] > 0, wider[0] > 0):
                redrawn[row] = (wider, probability)
        return redrawn

    def _model_checks(self) -> list[tuple[float, object]]:
        """The answer checks by the model's own parts that are on, (threshold, probabilities): ``verify`` on the
        mask's bounding box and the prompt's text saying "yes" (``config.verify_answers``), the group head taking
        the mask as the one member of the prompt's group (``config.check_by_group_head``)."""
        return [(threshold, probabilities) for threshold, probabilities in (
            (self.config.verify_answers, self._verify_probabilities),
            (self.config.check_by_group_head, self._group_check_probabilities)) if threshold is not None]

    def _pixel_checks(self) -> list[tuple[float, object]]:
        """The answer verifier's check when it is on (``config.verify_by_pixels``), as ``_model_checks``."""
        threshold = self.config.verify_by_pixels
        return [] if threshold is None else [(threshold, self._verifier_probabilities)]

    def _verified(self, results: list[SegmentResult], images: list, ref_lists: list[list], allow_untrained: bool,
                  checks: list[tuple[float, object]]) -> list[SegmentResult]:
        """``results`` with ``checks`` applied (``_model_checks``, ``_pixel_checks``): each non-empty mask answered to
        a prompt of text alone is kept only when every check gives it at least its threshold; a dropped mask's
        ``<obj>`` is written ``<rejected>``. The questions of the rows given the same image object (all of a
        ``segment_many``) are asked in one batch per check."""
        if not checks:
            return results
        checked = list(results)
        asked: dict[int, list[tuple[int, int]]] = {}  # id of an image given -> its (row, mask index) to check
        for row, (result, references) in enumerate(zip(results, ref_lists)):
            if all(isinstance(r, str) for r in references):
                for k, mask in enumerate(result.masks):
                    if mask.any():
                        asked.setdefault(id(images[row]), []).append((row, k))
        for slots in asked.values():
            regions = [(results[row].masks[k], ref_lists[row]) for row, k in slots]
            passed = np.ones(len(slots), dtype=bool)
            for threshold, probabilities in checks:
                passed &= probabilities(images[slots[0][0]], regions, allow_untrained) >= threshold
            keep = {row: np.ones(len(results[row].masks), dtype=bool) for row, _ in slots}
            for (row, k), ok in zip(slots, passed):
                keep[row][k] = ok
            for row, kept in keep.items():
                result = results[row]
                checked[row] = SegmentResult(
                    result.masks[kept], result.scores[kept],
                    mark_nowhere(result.text, self.config.obj_token, kept.tolist(), mark=REJECTED),
                    None if result.logits is None else result.logits[kept])
        return checked

    @torch.no_grad()
    def check_scores(self, image=None, prompt=None, masks=None, allow_untrained: bool = False) -> np.ndarray:
        """What ``config.check_by_group_head`` compares with its threshold, for each of ``masks`` (K x H x W at the
        image's size, say a ``segment`` answer's): the probability that ``prompt`` describes that mask, by the text
        check head (``config.text_check_head``) or else the group head - the prompt asked as a ``select`` prompt
        with the mask as its one candidate. All K in one forward pass; image as in ``segment``. Returns K floats.
        ``segment`` checks its masks before ``config.mask_crf`` refines them: to read exactly what it read, pass the
        masks of an answer given with the CRF off (``set_mask_crf(None)``)."""
        pixels, _ = self._pixels_and_features(image)
        if masks is None:
            raise ValueError("no masks given: pass masks=, K x H x W masks at the image's size")
        masks = check_candidates(masks, *pixels.shape[:2])
        references = self._prompt_references(_references(prompt, "prompt"), allow_untrained)
        return self._group_check_probabilities(pixels, [(mask, references) for mask in masks], allow_untrained)

    @torch.no_grad()
    def verifier_scores(self, image=None, prompt: str | None = None, masks=None) -> np.ndarray:
        """What ``config.verify_by_pixels`` compares with its threshold, for each of ``masks`` (K x H x W at the
        image's size, say a ``segment`` answer's): the answer verifier's probability that the text ``prompt``
        describes that mask. image as in ``segment``. Returns K floats. ``segment`` checks its masks as it answers
        them, after ``config.mask_crf`` refines them: this reads exactly what it read of an answer's masks."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the verifier reads a text prompt: give prompt= a non-empty str, got {prompt!r}")
        if masks is None:
            raise ValueError("no masks given: pass masks=, K x H x W masks at the image's size")
        pixels, _ = self._pixels_and_features(image)
        masks = check_candidates(masks, *pixels.shape[:2])
        return self._verifier_probabilities(pixels, [(mask, [prompt]) for mask in masks], False)

    @torch.no_grad()
    def select(self, image=None, prompt=None, candidates=None, allow_untrained: bool = False,
               threshold: float | None = None, empty_threshold: float | None = None,
               sam_options: dict | None = None) -> GroupResult:
        """The group of masks ``prompt`` refers to, chosen among candidates in ONE forward pass (RAS), or with
        ``config.group_by_obj`` by the mask of one ``<obj>`` the prompt is answered with (one forward as well;
        with ``config.group_obj_answer="generated"`` the model writes that answer itself, a few decoding steps
        whatever the number of candidates, and ``GroupResult.text`` keeps it).

        image: as in ``segment`` (None for the ``set_image`` image). prompt: a str, MaskRef, Box, ExampleImage,
        Audio or a list of them ("everything the same colour as", MaskRef(mask)). candidates: N x H x W masks at
        the image's size (an instance segmenter's, say), or None for SAM's automatic masks
        (``SamAutomaticMaskGenerator`` on this model's SAM, with ``sam_options``). threshold: the membership
        probability above which a candidate joins the group (None: ``config.group_threshold``). empty_threshold:
        the group is empty unless some candidate's probability exceeds it (None: ``config.group_empty_threshold``;
        when that is None too, ``threshold`` decides alone; :func:`anyref.group_heads.group_members`). Returns a
        GroupResult; the group may be empty.
        """
        threshold = self.config.group_threshold if threshold is None else threshold
        empty_threshold = self.config.group_empty_threshold if empty_threshold is None else empty_threshold
        for name, value in (("threshold", threshold), ("empty_threshold", empty_threshold)):
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be a probability in (0, 1), got {value}")
        _references(prompt, "prompt")  # before SAM's candidates, which take long to find
        pixels, features = self._pixels_and_features(image)
        height, width = pixels.shape[:2]
        source = "caller" if candidates is not None else "sam"
        if candidates is None:
            candidates = sam_candidates(self.sam, pixels, **(sam_options or {}))
        candidates = check_candidates(candidates, height, width)
        references, text = self._prompt_references(prompt, allow_untrained), None
        if self.config.group_by_obj and self.config.group_obj_answer == "generated":
            probs, text = self._group_by_generated_obj(None if image is None else pixels, references, candidates,
                                                       allow_untrained)
        elif self.config.group_by_obj:
            probs = self._group_by_obj(pixels, features, references, candidates, allow_untrained)
        else:
            probs = self._candidate_probabilities([ReferringSample(
                image=pixels, references=references, task="select", candidates=candidates,
                selected=np.zeros(len(candidates), dtype=bool))], features, allow_untrained)
        indices = np.flatnonzero(group_members(probs, threshold, empty_threshold))
        return GroupResult(candidates[indices], probs[indices].astype(np.float32), indices, candidates,
                           probs.astype(np.float32), source, text)

    def _group_by_obj(self, pixels: np.ndarray, features: "_ImageFeatures | None", references: list,
                      candidates: np.ndarray, allow_untrained: bool) -> np.ndarray:
        """Membership probabilities N of ``group_by_obj``: each candidate's mean of the group's ``<obj>`` mask
        probability over its pixels (0 for all when the ``<obj>`` is placed nowhere)."""
        self.check_references(references, allow_untrained)
        empty = np.zeros((1, *pixels.shape[:2]), dtype=bool)  # the answer's mask slot; nothing reads it
        sample = ReferringSample(image=pixels, references=references, task="segment", answer=[OBJ], masks=empty)
        batch = collate([prepare(sample, self.builder)], self.ids.pad).to(self.device, self.dtype)
        grids = features.grid if features is not None else None
        sam = features.sam if features is not None else None
        return _candidate_means(candidates, self.group_obj_map(batch, grids, sam))

    def _group_by_generated_obj(self, image, references: list, candidates: np.ndarray,
                                allow_untrained: bool) -> tuple[np.ndarray, str]:
        """(membership probabilities N, the answer) of ``group_obj_answer="generated"``: the prompt answered as in
        ``segment`` ("all red objects <obj>."), each candidate scored by the mean over its pixels of the mask
        probability of the answer's first placed ``<obj>`` (0 for all when it has none or places it nowhere).
        image: H x W x 3 pixels, or None for the ``set_image`` image."""
        generations, batch, sam = self._run(image, [references], "segment", allow_untrained)
        result = self._crf_refined(self._masks_for(generations, batch, sam), [image])[0]
        group_map = torch.from_numpy(result.logits[0]).sigmoid() if result.found else None
        return _candidate_means(candidates, group_map), result.text

    def _crf_refined(self, results: list[SegmentResult], images: list) -> list[SegmentResult]:
        """``results`` with each mask's edges snapped to its image's by ``config.mask_crf`` (as they are when it is
        off). It comes after the answer checks, which judge the masks they were fitted on (the decoder's own), and
        refines only masks that have a pixel: an answer without a mask stays without one. images: per result, its
        H x W x 3 pixels, or None for the ``set_image`` image."""
        crf = self.config.crf
        if crf is None:
            return results
        # the callers pass pixels already read, or None: no image is read or hashed again per result
        return [result if not result.found
                else crf_refined_result(result, self._pixels_and_features(None)[0] if image is None else image, crf,
                                        self.device)
                for result, image in zip(results, images)]

    def _masks_for(self, generations: list[Generation], batch, sam: torch.Tensor | None = None,
                   regions: list[np.ndarray | None] | None = None,
                   bounds: list[np.ndarray | None] | None = None, skip: Collection[int] = ()) -> list[SegmentResult]:
        """One SegmentResult per generation (row of ``batch``): SAM's image encoder runs once per distinct image
        (not at all when ``sam``, 1 x C x g x g for a one-image batch, is already computed) and its mask decoder
        once for every mask of the batch. regions: per row, None or an H x W bool region at the image's size that
        the row's first ``<obj>`` is drawn from (``describe_box_prior``); bounds: the same, the pixels outside of
        which the row's first ``<obj>`` mask is cut off, its logits capped at CLIPPED_LOGIT
        (``describe_box_margin``); skip: rows whose masks are not drawn (answered otherwise), given no mask and
        their text as generated."""
        skip = set(skip)
        counts = [0 if row in skip else len(g.obj_states) for row, g in enumerate(generations)]
        if sum(counts) == 0:
            return [_without_masks(g.text, size) for g, size in zip(generations, batch.image_sizes)]
        owners = torch.cat([torch.full((n,), row) for row, n in enumerate(counts)]).to(self.device)
        sam = self._sam_of(batch, sam)
        embeddings = sam if len(sam) == 1 else sam[owners]
        image_states = None
        if self.obj_locator is not None:
            image_states = torch.stack([g.image_states for g in generations])[owners]
        obj_states = torch.cat([g.obj_states[:n] for g, n in zip(generations, counts)])
        low, locations = self.decode_obj_masks(embeddings, obj_states, image_states)
        starts = np.cumsum([0] + counts[:-1])
        for row, region in enumerate(regions or []):
            if region is not None and counts[row]:
                first = int(starts[row])
                own = embeddings if len(embeddings) == 1 else embeddings[first:first + 1]
                prompt = self.obj_projection(obj_states[first:first + 1])
                region = torch.from_numpy(region).to(self.device)
                low[first:first + 1] = self.redraw_obj_masks(own, prompt, [region])
        rows = owners.tolist()
        low = self.refine_obj_masks(embeddings, obj_states, low, [batch.sam_sizes[r] for r in rows],
                                    [batch.image_sizes[r] for r in rows])
        placed = torch.ones(len(low), dtype=torch.bool, device=low.device)
        if self.config.obj_nowhere:
            placed = ~placed_nowhere(locations)
        results = []
        for row, generation in enumerate(generations):
            if row in skip:
                results.append(_without_masks(generation.text, batch.image_sizes[row]))
                continue
            mine = owners == row
            logits = upscale_masks(self.sam, low[mine & placed], batch.sam_sizes[row], batch.image_sizes[row]).float()
            bound = bounds[row] if bounds else None
            if bound is not None and counts[row] and bool(placed[int(starts[row])]):
                outside = ~torch.from_numpy(bound).to(logits.device)
                logits[0] = torch.where(outside, logits[0].clamp(max=CLIPPED_LOGIT), logits[0])
            masks, scores = masks_and_scores(logits)
            text = mark_nowhere(generation.text, self.config.obj_token, placed[mine].tolist())
            results.append(SegmentResult(masks.cpu().numpy(), scores.cpu().numpy(), text, logits.cpu().numpy()))
        return results


@dataclass
class _ImageFeatures:
    """What ``set_image`` keeps: a key of the pixels, the pixels, vision features 1 x C_v x G x G, the SAM image
    embedding 1 x C x g x g, and the KV cache of the prompt prefix every query on the image starts with."""

    key: str
    pixels: np.ndarray
    grid: torch.Tensor
    sam: torch.Tensor
    prefix: PrefixCache | None = None

    def keep_prefix(self, prefix: PrefixCache) -> None:
        self.prefix = prefix


def _without_masks(text: str, size: tuple[int, int]) -> SegmentResult:
    """An answer with no mask on an image of ``size`` (H, W)."""
    return SegmentResult(np.zeros((0, *size), dtype=bool), np.zeros(0, dtype=np.float32), text,
                         np.zeros((0, *size), dtype=np.float32))


def _candidate_means(candidates: np.ndarray, probability: torch.Tensor | None) -> np.ndarray:
    """N: each of the N x H x W candidates' mean of an H x W mask probability map over its pixels (the group of
    ``group_by_obj``); 0 for all when there is no map (the ``<obj>`` was placed nowhere, or never written)."""
    if probability is None:
        return np.zeros(len(candidates), dtype=np.float32)
    cover = torch.from_numpy(candidates).to(probability.device, torch.float32).flatten(1)  # N x HW
    return ((cover @ probability.float().flatten()) / cover.sum(1)).cpu().numpy()


def _pixel_key(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels).view(np.uint8)).hexdigest() + str(pixels.shape)


def _region_mask(region, size: tuple[int, int]) -> np.ndarray:
    """A region given as a mask: H x W bool at the image's size."""
    mask = np.asarray(region)
    if mask.shape != tuple(size):
        raise ValueError(f"a region mask must be H x W at the image's size {tuple(size)}, got shape {mask.shape}; "
                         "or pass a Box")
    return binary_mask(mask, "the region mask")


def _references(ref, argument: str = "ref") -> list:
    """``ref`` as a list of references; ``argument`` names the caller's parameter in the error for None."""
    if ref is None:
        raise ValueError(f"no reference given: pass {argument}= a str, Box, ExampleImage, Audio, MaskRef, or a list "
                         "of them")
    return as_reference_list(ref)
