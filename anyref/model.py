"""AnyRef: a LLaVA whose answers can point at pixels.

Any reference (text, box, example image, audio, mask) becomes tokens in the prompt; each ``<obj>`` the model emits
becomes a mask: its last-layer state, refocused on the answer tokens before it, is projected (gamma) into SAM's
mask decoder as a sparse prompt. For mask groups (RAS) the prompt also lists candidate masks as mask tokens, which
the answer repeats; a classifier on those answer positions picks the group in one forward pass.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import roi_align
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from anyref.answer_verifier import AnswerVerifier
from anyref.batching import Batch
from anyref.candidate_crops import CROP_CHANNELS, CROP_SIDE, candidate_crops
from anyref.config import AnyRefConfig
from anyref.decoding import greedy_generate
from anyref.group_heads import (
    GEOMETRY_INPUTS, GroupMapHead, PromptGroupHead, RelationGroupHead, build_group_head, candidate_geometry,
    group_cell_loss, group_loss, pad_rows,
)
from anyref.heads import (
    ObjLocator, ObjProjection, coverage_logits, decode_masks, location_cells, location_prompt,
    map_peaks, peak_windows, placed_nowhere, upscale_masks,
)
from anyref.image_reread import ImageReread
from anyref.image_tokens import ImageTokenMerger, ImageTokenPositions
from anyref.losses import mask_bce, mask_dice
from anyref.mask_tokens import MaskProjector, MaskSource, pool_masks, position_map
from anyref.language_depth import insert_identity_layers
from anyref.lora import lora_enabled, unwrapped
from anyref.outputs import AnyRefOutput, Generation, escape_answer_markers
from anyref.prefix import PrefixCache
from anyref.prompts import IGNORE_INDEX, PromptBuilder
from anyref.refocus import LastLayerAttentionTap, attention_rows, project_keys, refocus
from anyref.region_geometry import RegionGeometry, box_geometry, mask_geometry
from anyref.tokens import IMAGE_WRAP_TOKENS, SPECIAL_TOKENS, SpecialTokenIds, special_token_ids
from encoders.imagebind_audio import ImageBindAudioEncoder
from encoders.llava import patch_grid_size, project_vision, vision_patch_grid
from encoders.timm_features import TIMM_PREFIX, timm_sources

__all__ = ["AnyRefModel", "unique_rows"]


def unique_rows(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct images of a B x ... batch, B indices into them): a batch of queries on one image encodes it
    once."""
    keys, first, inverse = {}, [], []
    for row in range(len(pixels)):
        key = pixels[row].detach().float().cpu().numpy().tobytes()  # float: numpy has no bfloat16
        if key not in keys:
            keys[key] = len(first)
            first.append(row)
        inverse.append(keys[key])
    index = torch.tensor(inverse, device=pixels.device)
    return pixels[first], index


class AnyRefModel(nn.Module):
    """The network: parts passed in, assembled by builders (:mod:`anyref.builders`).

    llava: transformers LlavaForConditionalGeneration (LLM, CLIP vision tower, projector).
    sam: segment-anything Sam (image encoder and prompt encoder frozen; mask decoder trained).
    audio_encoder: ImageBind audio branch, or None for a model without audio references.
    mask_encoders: timm name -> ``encoders.timm_features.TimmFeatures``, one per "timm:NAME" in
        ``config.mask_features`` (frozen further encoders for mask tokens).
    """

    def __init__(self, config: AnyRefConfig, llava: LlavaForConditionalGeneration, sam: Sam,
                 tokenizer: PreTrainedTokenizerBase, audio_encoder: ImageBindAudioEncoder | None = None,
                 mask_encoders: dict[str, nn.Module] | None = None):
        super().__init__()
        self.config = config
        self.llava = llava
        self.sam = sam
        self.tokenizer = tokenizer
        self.audio_encoder = audio_encoder
        hidden = llava.config.text_config.hidden_size
        self.audio_projection = None if audio_encoder is None else nn.Linear(config.audio.out_dim, hidden)
        self.obj_projection = ObjProjection(hidden, config.sam.prompt_dim)
        self.obj_locator = None
        if config.obj_location_prompt:
            # drawn aside from the random stream, so that every other module starts as in a model without it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch.initial_seed() + 1)
                self.obj_locator = ObjLocator(hidden, nowhere=config.obj_nowhere)
        lam = torch.tensor(float(config.refocus_lambda))
        if config.refocus_learnable:
            self.refocus_lambda = nn.Parameter(lam)
        else:
            self.register_buffer("refocus_lambda", lam)
        texts = dict(SPECIAL_TOKENS, obj=config.obj_token)
        self.ids = SpecialTokenIds.from_tokenizer(tokenizer, texts)
        if self.ids.image != llava.config.image_token_id:
            raise ValueError(f"tokenizer's <image> id {self.ids.image} != LLaVA image_token_id "
                             f"{llava.config.image_token_id}")
        wrap = None
        if config.image_wrap:
            wrap_ids = special_token_ids(tokenizer, IMAGE_WRAP_TOKENS, "config.image_wrap")
            wrap = (wrap_ids["start"], wrap_ids["end"])
        self.grid = patch_grid_size(llava.config)
        if self.grid % config.image_token_merge:
            raise ValueError(f"image_token_merge {config.image_token_merge} does not divide the {self.grid} x "
                             f"{self.grid} patch grid")
        self.llm_grid = self.grid // config.image_token_merge  # side of the image-token grid the LLM reads
        self.image_merger = (ImageTokenMerger(config.image_token_merge, hidden) if config.image_token_merge > 1
                             else None)
        self.image_positions = self._new_image_positions(hidden) if config.image_positions else None
        self.image_reread = ImageReread(hidden, config.image_reread) if config.image_reread != "off" else None
        wanted = timm_sources(config.mask_features)
        mask_encoders = dict(mask_encoders or {})
        if sorted(mask_encoders) != sorted(wanted):
            raise ValueError(f"config.mask_features asks for timm encoders {wanted}, got {sorted(mask_encoders)}")
        self.mask_encoders = nn.ModuleDict({name.replace(".", "_"): mask_encoders[name] for name in wanted})
        self.mask_sources = self._mask_sources(mask_encoders)
        self.register_buffer("mask_positions", position_map(config.mask_position_grid, config.mask_position_channels),
                             persistent=False)
        self.mask_projector = MaskProjector({n: s.channels for n, s in self.mask_sources.items()}, hidden,
                                            config.mask_token_norm)
        self.region_geometry = self._new_region_geometry(hidden) if config.region_geometry else None
        # parts added to this finished model that start as a no-op - LLM layers (add_language_layers), the image
        # position map (add_image_positions) - for the trainer, which may give them a learning rate of their own (a
        # tuple: not registered twice, and not saved - a loaded model's parts are all its own)
        self.new_parts: tuple[nn.Module, ...] = ()
        self.group_head = build_group_head(config, hidden)
        # a second head of the group head's kind that checks text answers (config.text_check_head), or None
        self.text_check_head = build_group_head(config, hidden) if config.text_check_head else None
        # the head that ranks a text answer's location-map peaks (config.text_rank_head), or None
        self.text_rank_head = (RelationGroupHead(hidden, reads_pixels=config.text_rank_head_reads_pixels)
                               if config.text_rank_head else None)
        # the network that checks text answers by their masks' own pixels (config.answer_verifier), or None
        self.answer_verifier = AnswerVerifier(len(tokenizer)) if config.answer_verifier else None
        self.builder = PromptBuilder(config, tokenizer, self.ids, self.llm_grid ** 2, wrap, self.mask_sources)

    def _mask_sources(self, mask_encoders: dict[str, nn.Module]) -> dict[str, MaskSource]:
        """Every feature map mask tokens pool, in config order (see anyref.mask_tokens)."""
        vision = self.llava.config.vision_config
        sources = {}
        for name in self.config.mask_features:
            if name == "vision":
                sources[name] = MaskSource(vision.hidden_size, vision.image_size, self.grid)
            elif name == "position":
                sources[name] = MaskSource(self.config.mask_position_channels, vision.image_size,
                                           self.config.mask_position_grid)
            elif name == "sam":
                sam = self.config.sam
                sources[name] = MaskSource(sam.prompt_dim, sam.image_size, sam.embedding_size)
            else:
                encoder = mask_encoders[name[len(TIMM_PREFIX):]]
                sources[name] = MaskSource(encoder.channels, encoder.image_size, encoder.grid, encoder.preprocess)
        return sources

    def _reconfigure(self, **changes) -> None:
        """The one way a built model's config changes (validated as any config is): the prompt builder reads the
        same config object."""
        self.config = self.builder.config = self.config.replace(**changes)

    def replace_group_head(self, **changes) -> None:
        """Swap in a new, untrained group head of the kind ``changes`` ask for (the config's ``group_head_*``
        fields), e.g. to train one alone on a finished model (a training config's "new_group_head",
        docs/mask-groups.md)."""
        odd = [name for name in changes if not name.startswith("group_head_")]
        if odd:
            raise ValueError(f"replace_group_head takes the config's group_head_* fields only, got {odd}")
        changed = [name for name, value in changes.items() if getattr(self.config, name) != value]
        if changed and self.text_check_head is not None:
            # the check head is built from the same fields, so it cannot outlive a change of kind
            warnings.warn(f"the group head's kind changes ({', '.join(changed)}): the text check head, of the old "
                          "kind, is removed and the text check turned off; fit a new one with `anyref "
                          "fit-group-head --check-head`", stacklevel=2)
            self.text_check_head = None
            self._reconfigure(text_check_head=False, check_by_group_head=None)
        self._reconfigure(**changes)
        self.group_head = self._new_group_head()

    def add_text_check_head(self) -> nn.Module:
        """Give the model a new, untrained text check head of its group head's kind (``config.text_check_head``),
        replacing any it has, e.g. to fit it alone on a finished model (``anyref fit-group-head --check-head``).
        Returns it."""
        self._reconfigure(text_check_head=True)
        self.text_check_head = self._new_group_head()
        return self.text_check_head

    def add_text_rank_head(self, reads_pixels: bool = False, crop_dropout: float = 0.0) -> RelationGroupHead:
        """Give the model a new, untrained text rank head (``config.text_rank_head``; with ``reads_pixels``, one
        that also reads the candidates' own pixels, their features dropped at ``crop_dropout`` in training),
        replacing any it has, e.g. to fit it alone on a finished model (``anyref fit-group-head --rank-head``).
        Returns it."""
        self._reconfigure(text_rank_head=True, text_rank_head_reads_pixels=reads_pixels)
        self.text_rank_head = self._as_part(RelationGroupHead(self.hidden_size, reads_pixels=reads_pixels,
                                                              crop_dropout=crop_dropout))
        return self.text_rank_head

    def add_answer_verifier(self) -> AnswerVerifier:
        """Give the model a new, untrained answer verifier (``config.answer_verifier``), replacing any it has, e.g.
        to fit it alone on a finished model (``anyref fit-verifier``). Returns it."""
        self._reconfigure(answer_verifier=True)
        self.answer_verifier = self._as_part(AnswerVerifier(len(self.tokenizer)))
        return self.answer_verifier

    def _new_group_head(self) -> nn.Module:
        """A new, untrained head of the config's group head kind, on the model's device and dtype."""
        return self._as_part(build_group_head(self.config, self.hidden_size))

    @property
    def hidden_size(self) -> int:
        """The LLM's width H."""
        return self.llava.config.text_config.hidden_size

    def _as_part(self, module: nn.Module) -> nn.Module:
        """A part new to a built model, moved to the model's device and dtype."""
        reference = next(self.obj_projection.parameters())
        return module.to(device=reference.device, dtype=reference.dtype)

    def add_nowhere(self) -> None:
        """Give a finished model's location map its "nowhere" place (``obj_nowhere``), new and untrained, e.g. to
        teach it absent objects in a continuation (a training config's "add_nowhere", docs/training.md)."""
        if self.obj_locator is None:
            raise ValueError("this model has no location map (obj_location_prompt is off): nowhere needs one")
        if self.obj_locator.nowhere is not None:
            raise ValueError("this model's location map already has its nowhere place")
        self._reconfigure(obj_nowhere=True)
        reference = self.obj_locator.query.weight
        self.obj_locator.nowhere = nn.Linear(reference.shape[0], 1).to(device=reference.device, dtype=reference.dtype)

    def add_image_reread(self, mode: str = "added") -> None:
        """Give a finished model the image's second read, after the answer (``image_reread`` = ``mode``), its
        weights zero: with "added" it answers and locates as before until it trains (a training config's
        "add_image_reread")."""
        if self.image_reread is not None:
            raise ValueError("this model already reads the image a second time")
        self._reconfigure(image_reread=mode)  # validated: a mode, and a model with a location map
        self.image_reread = self._as_part(ImageReread(self.hidden_size, mode))

    def add_language_layers(self, count: int) -> None:
        """Deepen a finished model's LLM by ``count`` new decoder layers before its last, each the identity until it
        trains (anyref/language_depth.py), so that it answers exactly as before (a training config's
        "add_language_layers"). Not with LoRA on: the new layers would be frozen behind the adapter."""
        if lora_enabled(self):
            raise ValueError("add_language_layers needs a model without LoRA (the new layers train in full)")
        self.new_parts += insert_identity_layers(self.language_model, count, seed=torch.initial_seed() + 3)
        llava = copy.deepcopy(self.config.llava)  # what a saved model is rebuilt from
        llava["text_config"]["num_hidden_layers"] = self.language_model.config.num_hidden_layers
        self._reconfigure(llava=llava)

    @staticmethod
    def _new_region_geometry(hidden: int) -> RegionGeometry:
        # drawn aside from the random stream, so that every other module (and a continued run's stream) starts as
        # without it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 2)
            return RegionGeometry(hidden)

    def add_region_geometry(self) -> None:
        """Give a finished model the size-and-place code of its box and mask tokens (``region_geometry``), new and
        zero, so that it answers as before until it trains (a training config's "add_region_geometry")."""
        if self.region_geometry is not None:
            raise ValueError("this model already has its region geometry code")
        self._reconfigure(region_geometry=True)
        self.region_geometry = self._as_part(self._new_region_geometry(self.hidden_size))

    def add_image_positions(self) -> None:
        """Give a finished model the learned 2-D position map of its image tokens (``image_positions``), new and
        zero, so that it answers as before until it trains (a training config's "add_image_positions"): the tiny
        model's image tokens carry nothing of where they are, and its LLM keeps little of x (the position probe)."""
        if self.image_positions is not None:
            raise ValueError("this model already has its image position map")
        self._reconfigure(image_positions=True)
        self.image_positions = self._as_part(self._new_image_positions(self.hidden_size))
        self.new_parts += (self.image_positions,)

    def _new_image_positions(self, hidden: int) -> ImageTokenPositions:
        """A zero position map over the image-token grid the LLM reads, its cells in vision-input pixels."""
        cell = self.llava.config.vision_config.patch_size * self.config.image_token_merge
        return ImageTokenPositions(self.llm_grid, hidden, cell)

    def decide_groups_by_obj(self, answer: str = "given") -> None:
        """Let ``select`` decide groups by an ``<obj>`` (``group_by_obj``), e.g. before a continuation that teaches
        it SynthRef's groups posed as "segment" samples (a training config's "group_by_obj"). answer: "given" (the
        answer "<obj>" teacher-forced) or "generated" (its own answer, ``group_obj_answer``)."""
        if not self.config.obj_nowhere:
            raise ValueError("group_by_obj needs a location map with a nowhere place (an empty group is an <obj> "
                             'placed nowhere): add it first ("add_nowhere")')
        self._reconfigure(group_by_obj=True, group_obj_answer=answer)

    def set_mask_refinements(self, count: int) -> None:
        """Redraw each ``<obj>``'s mask ``count`` more times at inference, each from the previous mask's coverage of
        the image-token grid (``config.mask_refinements``, validated as the config is; 0: one decoder pass)."""
        self._reconfigure(mask_refinements=count)

    def set_mask_crf(self, settings: dict | None) -> None:
        """Snap each mask's edges to the image's by a local dense CRF at inference (``config.mask_crf``: a dict of
        ``anyref.mask_crf.MaskCRF``'s settings, validated as the config is); None: off."""
        self._reconfigure(mask_crf=None if settings is None else dict(settings))

    def set_box_zoom(self, on: bool) -> None:
        """Read box tokens from each box's own crop, encoded again (``config.box_zoom``), or by RoIAlign; for a
        training run that continues a model (a training config's "box_zoom")."""
        self._reconfigure(box_zoom=bool(on))

    def set_describe_box_prior(self, on: bool) -> None:
        """Draw the region of a ``describe`` prompt's one box from the box itself (``config.describe_box_prior``,
        validated as the config is)."""
        self._reconfigure(describe_box_prior=bool(on))

    def set_describe_box_margin(self, margin: float | None) -> None:
        """Keep the mask of a ``describe`` prompt's one box within the box grown by ``margin`` of its sides
        (``config.describe_box_margin``, validated as the config is); None: not clipped."""
        self._reconfigure(describe_box_margin=None if margin is None else float(margin))

    def set_example_self_mask(self, on: bool) -> None:
        """Mask an example image given without a mask by the model's own answer on it first
        (``config.example_self_mask``)."""
        self._reconfigure(example_self_mask=bool(on))

    def set_group_threshold(self, threshold: float) -> None:
        """The membership probability above which ``select`` keeps a candidate when the call gives none
        (``config.group_threshold``, validated as the config is)."""
        self._reconfigure(group_threshold=float(threshold))

    def set_group_empty_threshold(self, threshold: float | None) -> None:
        """The probability some candidate must exceed for ``select`` to answer with a group at all
        (``config.group_empty_threshold``, validated as the config is); None: the membership threshold decides."""
        self._reconfigure(group_empty_threshold=None if threshold is None else float(threshold))

    def set_verify_answers(self, threshold: float | None) -> None:
        """Check each mask answered to a text prompt with the model's own "verify" question, dropping those whose
        probability of "yes" is below ``threshold`` (``config.verify_answers``, validated as the config is);
        None: off."""
        self._reconfigure(verify_answers=None if threshold is None else float(threshold))

    def set_check_by_group_head(self, threshold: float | None) -> None:
        """Check each mask answered to a text prompt with the text check head, or the group head when the model has
        none (the text as a ``select`` prompt, the mask its one candidate), dropping those whose membership
        probability is below ``threshold`` (``config.check_by_group_head``, validated as the config is); None:
        off."""
        self._reconfigure(check_by_group_head=None if threshold is None else float(threshold))

    def set_rank_text_answers(self, threshold: float | None) -> None:
        """Choose each one-``<obj>`` answer to a text prompt again among masks drawn at its location map's peaks,
        by the text rank head, answering nothing unless the best is over ``threshold``
        (``config.rank_text_answers``, validated as the config is); None: off."""
        self._reconfigure(rank_text_answers=None if threshold is None else float(threshold))

    def set_location_peaks(self, peaks: int, spacing: int) -> None:
        """Draw up to ``peaks`` candidates from a location map, their peaks at least ``spacing`` cells apart
        (``config.location_peaks``, ``config.location_peak_spacing``, validated as the config is). Fit the text rank
        head again after changing them: it ranks the candidates it was fitted on best."""
        self._reconfigure(location_peaks=int(peaks), location_peak_spacing=int(spacing))

    def set_rank_redraw_window(self, half_width: int | None) -> None:
        """Draw the candidate ``rank_text_answers`` chose again with the location map kept within ``half_width``
        cells of its peak, keeping the redraw when it grows the candidate (``config.rank_redraw_window``, validated
        as the config is); None: off."""
        self._reconfigure(rank_redraw_window=None if half_width is None else int(half_width))

    def set_verify_by_pixels(self, threshold: float | None) -> None:
        """Check each mask answered to a text prompt with the answer verifier, which reads the mask's own pixels,
        dropping those whose probability is below ``threshold`` (``config.verify_by_pixels``, validated as the
        config is); None: off."""
        self._reconfigure(verify_by_pixels=None if threshold is None else float(threshold))

    # ----------------------------------------------------------------------------------------------- parts
    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (LlamaModel), unwrapped from a PEFT wrapper if LoRA is on."""
        return unwrapped(self.llava.model.language_model)

    @property
    def device(self) -> torch.device:
        return self.obj_projection[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.obj_projection[0].weight.dtype

    # -------------------------------------------------------------------------------------------- encoding
    def sam_embeddings(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x Ss x Ss -> B x C x g x g SAM image embeddings (no graph when the encoder is frozen)."""
        encoder = self.sam.image_encoder
        trainable = any(p.requires_grad for p in encoder.parameters()) and torch.is_grad_enabled()
        with torch.set_grad_enabled(trainable):
            return encoder(sam_pixels)

    def mask_tokens(self, batch: Batch, grids: torch.Tensor, sam_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Every mask token of the batch (MaskRefs, then candidates, sample by sample): M x H.

        grids: B x C_v x G x G vision features; sam_embeddings: B x C x g x g (needed when "sam" is a source).
        """
        owners = batch.mask_owners
        pooled = {}
        for name in self.mask_sources:
            weights = batch.mask_weights[name]
            if name == "vision":
                pooled[name] = pool_masks(grids, weights, owners)
            elif name == "position":
                pooled[name] = pool_masks(self.mask_positions.to(grids.dtype), weights, owners)
            elif name == "sam":
                if sam_embeddings is None and len(owners):
                    raise ValueError("mask tokens pool SAM's embedding: pass sam_embeddings")
                pooled[name] = (weights.new_zeros((0, self.mask_sources[name].channels), dtype=grids.dtype)
                                if sam_embeddings is None else pool_masks(sam_embeddings.to(grids.dtype), weights,
                                                                          owners))
            else:
                pooled[name] = self._pool_timm(name, batch, weights, owners, grids.dtype)
        tokens = self.mask_projector(pooled)
        if self.region_geometry is not None:
            tokens = tokens + self.region_geometry(mask_geometry(batch.mask_weights["vision"])).to(tokens.dtype)
        return tokens

    def _pool_timm(self, name: str, batch: Batch, weights, owners, dtype) -> torch.Tensor:
        encoder = self.mask_encoders[name[len(TIMM_PREFIX):].replace(".", "_")]
        if not len(owners):
            return weights.new_zeros((0, encoder.channels), dtype=dtype)
        images = owners.unique()  # only the images that have masks run through the encoder
        with torch.no_grad():
            features = encoder(batch.extra_pixels[name][images].to(dtype))
        return pool_masks(features, weights, torch.searchsorted(images, owners))

    def box_regions(self, batch: Batch, grids: torch.Tensor) -> torch.Tensor:
        """Nb x C_v x pool x pool vision features of the batch's boxes (``batch.boxes``: Nb x 5, sample index and
        x0, y0, x1, y1 in vision-input pixels): RoIAligned from the images' patch grids (B x C_v x G x G), or with
        ``config.box_zoom`` the vision tower's grid of each box's crop, resampled to the tower's input size."""
        pool = self.config.region_pool
        boxes = batch.boxes.float()  # RoIAlign in float32: torchvision's kernels have no bfloat16
        if not self.config.box_zoom:
            patch = self.llava.config.vision_config.patch_size
            return roi_align(grids.float(), boxes, output_size=pool, spatial_scale=1.0 / patch, sampling_ratio=2,
                             aligned=True).to(grids.dtype)
        if not len(boxes):  # never the tower on zero images
            return grids.new_zeros((0, grids.shape[1], pool, pool))
        side = self.llava.config.vision_config.image_size
        # one bilinear sample per output pixel: a crop is an upsampling, and a whole-image box gives the image back
        crops = roi_align(batch.clip_pixels.float(), boxes, output_size=side, spatial_scale=1.0,
                          sampling_ratio=1, aligned=True).to(grids.dtype)  # Nb x 3 x S x S
        return F.adaptive_avg_pool2d(vision_patch_grid(self.llava, crops), pool)

    def reference_tokens(self, batch: Batch, grids: torch.Tensor, example_grids: torch.Tensor,
                         sam_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """All reference feature tokens of the batch, sample by sample in prompt order: T x H (a select sample's
        candidates twice, after its references: once in the question, once in the answer).

        grids: B x C_v x G x G patch features of the query images (boxes are read from them: ``box_regions``);
        example_grids: Ne x C_v x G x G those of the example images; sam_embeddings: B x C x g x g.
        Every branch the model has runs on every batch, on zero items when the batch has none of that kind: the
        autograd graph then has the same shape for every batch, which data-parallel training needs (DeepSpeed
        reduces gradients in the order they arrive, so ranks with different graphs would sum different tensors).
        """
        pool = self.config.region_pool
        by_kind = {"box": project_vision(self.llava, self.box_regions(batch, grids).flatten(2).transpose(1, 2))}
        if self.image_positions is not None:
            by_kind["box"] = by_kind["box"] + self.image_positions.at_boxes(batch.boxes, pool).to(grids.dtype)
        if self.region_geometry is not None:  # one code per box, on each of its tokens
            side = self.llava.config.vision_config.image_size
            code = self.region_geometry(box_geometry(batch.boxes[:, 1:], side))
            by_kind["box"] = by_kind["box"] + code[:, None].to(grids.dtype)
        pooled = F.adaptive_avg_pool2d(example_grids, pool)  # 2-D blocks of the patch grid
        by_kind["example"] = project_vision(self.llava, pooled.flatten(2).transpose(1, 2))
        if self.audio_encoder is not None:
            clips = batch.audio.flatten(0, 1)  # Na*3 x 1 x 128 x 204
            embeddings = self.audio_encoder(clips).view(*batch.audio.shape[:2], self.config.audio.out_dim)  # Na x 3 x D
            by_kind["audio"] = self.audio_projection(embeddings.to(self.dtype))
        elif len(batch.audio):
            raise ValueError("this model has no audio encoder; it cannot take Audio references")
        by_kind["mask"] = self.mask_tokens(batch, grids, sam_embeddings)
        pieces = []
        for order, (first, count) in zip(batch.reference_order, batch.candidate_spans):
            for kind, index in order:
                piece = by_kind[kind][index]
                pieces.append(piece[None] if kind == "mask" else piece)  # one token per mask
            if count:
                candidates = by_kind["mask"][first:first + count]
                pieces += [candidates, candidates]
        hidden = self.hidden_size
        # the empty branches join the result with zero rows, so that they stay in the graph
        unused = [tokens.reshape(-1, hidden)[:0] for tokens in by_kind.values()]
        return torch.cat(pieces + unused) if pieces else torch.cat(unused)

    def input_embeddings(self, batch: Batch, grids: torch.Tensor | None = None,
                         sam_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image patches and reference features scattered into their placeholders.

        grids: B x C_v x G x G vision features of the query images when already computed (``set_image``);
        sam_embeddings: B x C x g x g SAM image embeddings when already computed (computed here when mask tokens
        pool them). Returns B x L x H. Raises if placeholder counts and feature counts differ.
        """
        ids = batch.input_ids
        if sam_embeddings is None and "sam" in self.mask_sources and len(batch.mask_owners):
            unique, inverse = unique_rows(batch.sam_pixels.to(self.dtype))
            sam_embeddings = self.sam_embeddings(unique)[inverse]
        if grids is None:
            # query and example images in one vision pass, each distinct image once (never the tower on zero)
            unique, inverse = unique_rows(torch.cat([batch.clip_pixels, batch.examples]).to(self.dtype))
            all_grids = vision_patch_grid(self.llava, unique)[inverse]
            grids, example_grids = all_grids[:len(ids)], all_grids[len(ids):]
        elif len(batch.examples):
            example_grids = vision_patch_grid(self.llava, batch.examples.to(self.dtype))
        else:
            example_grids = grids.new_zeros((0, *grids.shape[1:]))
        image_tokens = project_vision(self.llava, grids.flatten(2).transpose(1, 2))  # B x G*G x H
        if self.image_merger is not None:
            image_tokens = self.image_merger(image_tokens)  # B x (G/k)^2 x H
        if self.image_positions is not None:
            image_tokens = self.image_positions.add_to_image(image_tokens)
        if self.image_reread is not None and self.image_reads(ids) == 2:  # a sequence with the image's second read
            image_tokens = torch.cat([image_tokens, self.image_reread.second_copy(image_tokens)], dim=1)
        reference_tokens = self.reference_tokens(batch, grids, example_grids, sam_embeddings)  # T x H
        placeholders = (ids == self.ids.image) | (ids == self.ids.ref_feature)
        embeds = self.llava.get_input_embeddings()(ids.masked_fill(placeholders, self.ids.pad))
        for token_id, features, what in ((self.ids.image, image_tokens, "Image"),
                                         (self.ids.ref_feature, reference_tokens, "Reference")):
            features = features.reshape(-1, embeds.shape[-1])
            slots = ids == token_id
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(f"{what} features and {what.lower()} tokens do not match: "
                                 f"{int(slots.sum())} tokens, {features.shape[0]} features")
            embeds = embeds.masked_scatter(slots[..., None].expand_as(embeds), features.to(embeds.dtype))
        return embeds

    # ------------------------------------------------------------------------------------------- training
    def answer_states(self, batch: Batch, embeds: torch.Tensor | None = None):
        """Teacher-forced LLM pass (over ``embeds``, B x L x H input embeddings, when already computed). Returns
        (hidden B x L x H, CE over answer tokens, rows N, cols N, refocused ``<obj>`` states N x H), where
        (rows, cols) are the positions that emit ``<obj>``."""
        ids, labels, attention = batch.input_ids, batch.labels, batch.attention_mask
        if embeds is None:
            embeds = self.input_embeddings(batch)
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        with LastLayerAttentionTap(self.language_model) as tap:
            hidden = self.llava.model.language_model(
                inputs_embeds=embeds, attention_mask=attention, position_ids=positions, use_cache=False
            ).last_hidden_state  # B x L x H
        log_probs, _, predicted = self._answer_token_log_probs(hidden, labels)
        # a sum over the (maybe zero) answer tokens, not a mean: the same graph whether or not there are any
        ce = -log_probs.sum() / predicted.sum().clamp_min(1)
        emits = (ids[:, 1:] == self.ids.obj) & predicted  # position p emits <obj> at p + 1
        rows, cols = emits.nonzero(as_tuple=True)
        keys = project_keys(tap.attention, tap.keys, tap.cos, tap.sin)
        states = self._obj_states(tap, hidden, attention, batch.answer_starts, rows, cols, keys)
        return hidden, ce, rows, cols, states

    def answer_log_likelihoods(self, batch: Batch, grids: torch.Tensor | None = None,
                               sam_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced log-probability of each row's whole answer (the sum over its answer tokens, eos
        included): B. grids / sam_embeddings as in ``input_embeddings``."""
        embeds = self.input_embeddings(batch, grids, sam_embeddings)
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
        hidden = self.llava.model.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        log_probs, rows, _ = self._answer_token_log_probs(hidden, batch.labels)
        return log_probs.new_zeros(len(batch.labels)).index_add(0, rows, log_probs)

    def _answer_token_log_probs(self, hidden: torch.Tensor, labels: torch.Tensor):
        """Teacher-forced log-probabilities of the answer tokens (labels B x L, IGNORE_INDEX elsewhere) from the
        last-layer states B x L x H: (log-probabilities T, the row of each T, which next-token positions are
        answer tokens B x (L-1) bool)."""
        targets = labels[:, 1:]
        predicted = targets != IGNORE_INDEX
        logits = self.llava.lm_head(hidden[:, :-1][predicted]).float()  # only answer positions: T x V
        log_probs = logits.log_softmax(-1).gather(1, targets[predicted][:, None])[:, 0]
        return log_probs, predicted.nonzero(as_tuple=True)[0], predicted

    def forward(self, batch: Batch) -> AnyRefOutput:
        """Teacher-forced forward: text CE on answer tokens, BCE and dice on one mask per ``<obj>``, and the group
        classifier's weighted BCE on the candidates of "select" samples."""
        embeddings = self.sam_embeddings(batch.sam_pixels.to(self.dtype))
        embeds = self.input_embeddings(batch, sam_embeddings=embeddings)
        hidden, ce, rows, _, states = self.answer_states(batch, embeds=embeds)
        ids = batch.input_ids
        group, group_terms = self._group_loss(batch, hidden, embeds)
        # every mask of the batch in ONE decoder call (prompt i on its own image's embedding), plus a zero state
        # weighted 0, so that the decoder is in the graph even for a batch without masks (see reference_tokens)
        owners = torch.cat([rows, rows.new_zeros(1)])
        image_states = self.image_token_states(ids, hidden)[owners] if self.obj_locator is not None else None
        zero = states.new_zeros((1, states.shape[1]))
        low, locations = self.decode_obj_masks(embeddings[owners], torch.cat([states, zero]), image_states)
        locations = None if locations is None else locations[:-1]
        bce = dice = low[-1].sum() * 0.0 + embeddings.sum() * 0.0
        mask_logits = []
        n_masks = 0
        for row in range(len(ids)):
            mine = (rows == row).nonzero(as_tuple=True)[0]
            target = batch.masks[row]
            if len(mine) != target.shape[0]:
                raise ValueError(f"sample {row} emits {len(mine)} <obj> but has {target.shape[0]} target masks")
            if target.shape[0] == 0:
                mask_logits.append(embeddings.new_zeros((0, *batch.image_sizes[row])))
                continue
            full = upscale_masks(self.sam, low[mine], batch.sam_sizes[row], batch.image_sizes[row])
            mask_logits.append(full)
            # per-mask means, summed here and divided by the mask count below: every mask weighs the same
            bce = bce + mask_bce(full, target) * target.shape[0]
            dice = dice + mask_dice(full, target) * target.shape[0]
            n_masks += target.shape[0]
        if n_masks:
            bce, dice = bce / n_masks, dice / n_masks
        config = self.config
        loss = (config.ce_weight * ce + config.bce_weight * bce + config.dice_weight * dice
                + config.group_weight * group)
        return AnyRefOutput(loss=loss, ce=ce.detach(), bce=bce.detach(), dice=dice.detach(), n_masks=n_masks,
                            mask_logits=mask_logits, terms={"group": group.detach(), **group_terms}, hidden=hidden,
                            obj_rows=rows, obj_states=states, obj_locations=locations, sam_embeddings=embeddings)

    def image_token_states(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The states of the image tokens the LLM read, row by row: input_ids B x L, hidden B x L x H ->
        B x T x H (T = the LLM grid's tokens, which every row holds; with ``image_reread`` the first read's
        states combined with the second's, :class:`anyref.image_reread.ImageReread`)."""
        shape = (len(input_ids), self.llm_grid ** 2, hidden.shape[-1])
        if self.image_reread is None:
            return hidden[input_ids == self.ids.image].view(shape)
        if self.image_reads(input_ids) != 2:
            raise ValueError("this model reads the image a second time, after the answer: these rows lack that read")
        first, second = hidden[input_ids == self.ids.image].view(shape[0], 2, *shape[1:]).unbind(1)
        return self.image_reread.combine(first, second)

    def image_reads(self, input_ids: torch.Tensor) -> int:
        """How many times each row of input_ids (B x L) holds the image: 1, or 2 with ``image_reread``'s second
        read after an answer. Rows must agree."""
        per_row = (input_ids == self.ids.image).sum(1)
        tokens = self.llm_grid ** 2
        if len(per_row) and (bool((per_row != per_row[0]).any()) or int(per_row[0]) % tokens):
            raise ValueError(f"every row must hold the image's {tokens} tokens the same number of times, got "
                             f"{per_row.tolist()}")
        return int(per_row[0]) // tokens if len(per_row) else 1

    def decode_obj_masks(self, embeddings: torch.Tensor, obj_states: torch.Tensor,
                         image_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Low-res mask logits N x 1 x 4g x 4g of N ``<obj>`` states (N x H) on their SAM embeddings (N x C x g x g,
        or 1 x C x g x g for one image), and their location logits N x T over the image tokens, N x (T + 1) with
        the nowhere logit last for ``obj_nowhere`` (None unless ``config.obj_location_prompt``, which needs
        image_states: N x T x H, each ``<obj>``'s own row's)."""
        prompts = self.obj_projection(obj_states)
        if self.obj_locator is None:
            return decode_masks(self.sam, embeddings, prompts), None
        if image_states is None:
            raise ValueError("this model gives SAM each <obj>'s location map: pass the image tokens' states")
        locations = self.obj_locator(obj_states, image_states)
        dense = location_prompt(self.sam, location_cells(locations, self.llm_grid ** 2))
        return decode_masks(self.sam, embeddings, prompts, dense), locations

    def redraw_obj_masks(self, embeddings: torch.Tensor, prompts: torch.Tensor, masks: list[torch.Tensor]
                         ) -> torch.Tensor:
        """One refinement pass: SAM's decoder draws N masks again, each with its previous mask's own coverage of the
        image-token grid as its location map - a map without the spread of the ``<obj>``'s own onto neighbouring
        objects. embeddings: N x C x g x g or 1 x C x g x g; prompts: N x C, the ``<obj>`` states' projections;
        masks: N bool H_i x W_i previous masks at their images' size (the frame the grid covers, "resize" vision
        mode). Returns low-res logits N x 1 x 4g x 4g."""
        cells = torch.cat([coverage_logits(mask[None], self.llm_grid) for mask in masks])
        return decode_masks(self.sam, embeddings, prompts,
                            location_prompt(self.sam, cells.to(prompts.device, prompts.dtype)))

    @torch.no_grad()
    def refine_obj_masks(self, embeddings: torch.Tensor, obj_states: torch.Tensor, low: torch.Tensor,
                         sam_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """``config.mask_refinements`` passes of :meth:`redraw_obj_masks` over N first masks (inference only). A mask
        that came out empty is kept as it is (its coverage says nothing about where the object is).

        embeddings: N x C x g x g or 1 x C x g x g; obj_states: N x H; low: N x 1 x 4g x 4g logits of the first
        pass; sam_sizes, image_sizes: one per mask (the frame of each mask's image). Returns N x 1 x 4g x 4g."""
        if not self.config.mask_refinements or not len(low):
            return low
        prompts = self.obj_projection(obj_states)
        for _ in range(self.config.mask_refinements):
            masks = [upscale_masks(self.sam, low[i:i + 1], sam_sizes[i], image_sizes[i])[0] > 0
                     for i in range(len(low))]
            drawn = torch.tensor([bool(mask.any()) for mask in masks], device=low.device)
            low = torch.where(drawn[:, None, None, None], self.redraw_obj_masks(embeddings, prompts, masks), low)
        return low

    def _require_location_map(self) -> None:
        """Refuse, before any work, what needs the peaks of a location map on a model that has none."""
        if self.obj_locator is None:
            raise ValueError("this model has no location map (obj_location_prompt is off): it has no peaks")

    @torch.no_grad()
    def location_peak_masks(self, embeddings: torch.Tensor, obj_states: torch.Tensor, image_states: torch.Tensor,
                            sam_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]],
                            peaks: list[list[tuple[int, int]]] | None = None,
                            half_width: int = 1) -> tuple[list[torch.Tensor], list[list[tuple[int, int]]]]:
        """Candidate masks for N ``<obj>``: for each, one at each of the ``config.location_peaks`` highest cells of
        its location map that lie at least ``config.location_peak_spacing`` cells apart
        (:func:`anyref.heads.map_peaks`), or at the cells ``peaks`` gives, each drawn by SAM's decoder with the
        ``<obj>``'s own prompt and the map kept within the (2 half_width + 1)^2 cells around its peak
        (:func:`peak_windows`; 3 x 3 for the candidates), then refined as answers are (``config.mask_refinements``);
        all N in one decoder call per pass. Why: a wrong answer's map often peaks on the right object too
        (docs/training-experiments.md), so these hold the target more often than the answer.

        embeddings: 1 x C x g x g (one image) or N x C x g x g (each ``<obj>``'s image); obj_states: N x H;
        image_states: N x T x H (the image tokens of each ``<obj>``'s row); sam_sizes, image_sizes: the frame of each
        one's image. Returns (N low-res logits K_i x 1 x 4g x 4g, K_i <= location_peaks, strongest peak first; the
        N lists of K_i peaks (row, column) of the llm_grid x llm_grid map they were drawn at)."""
        self._require_location_map()
        side = self.llm_grid
        maps = location_cells(self.obj_locator(obj_states, image_states), side ** 2).float().view(-1, side, side)
        if peaks is None:
            peaks = [map_peaks(cells, self.config.location_peaks, self.config.location_peak_spacing) for cells in maps]
        windows = [peak_windows(cells, own, half_width=half_width) for cells, own in zip(maps, peaks)]
        owners = torch.cat([torch.full((len(w),), i) for i, w in enumerate(windows)]).to(obj_states.device)
        states = obj_states[owners]
        own = embeddings if len(embeddings) == 1 else embeddings[owners]
        low = decode_masks(self.sam, own, self.obj_projection(states),
                           location_prompt(self.sam, torch.cat(windows).to(obj_states.dtype)))
        rows = owners.tolist()
        low = self.refine_obj_masks(own, states, low, [sam_sizes[r] for r in rows], [image_sizes[r] for r in rows])
        return list(low.split([len(w) for w in windows])), peaks

    def group_logits(self, hidden: torch.Tensor, embeds: torch.Tensor, batch: Batch,
                     head: nn.Module | None = None) -> torch.Tensor:
        """Membership logits of every candidate of the batch (sample by sample, in candidate order): N.
        hidden: B x L x H last-layer states of a forward over ``embeds`` (B x L x H, its input embeddings: at the
        answer's candidate slots, the candidates' mask tokens). head: the group head (None) or the text check
        head."""
        return self._group_outputs(hidden, embeds, batch, head)[0]

    def _group_outputs(self, hidden: torch.Tensor, embeds: torch.Tensor, batch: Batch, head: nn.Module | None = None):
        """(membership logits N, and for a :class:`GroupMapHead` its map: (cell logits S x T, the candidates' cell
        coverage N x T, their owners N among the S "select" rows); None for the other heads), by ``head`` (None:
        the group head)."""
        head = self.group_head if head is None else head
        slots = batch.candidate_slots
        if isinstance(head, GroupMapHead):
            rows = slots.any(1)  # only "select" samples have candidates
            first_slot = slots.int().argmax(1)[rows]
            query = hidden[rows.nonzero(as_tuple=True)[0], first_slot - 1]  # the last prompt position: S x H
            cells = head.cells(query, self.image_token_states(batch.input_ids[rows], hidden[rows]))
            coverage, owners = self.candidate_cells(batch)
            return head(cells, coverage, owners), (cells, coverage, owners)
        if not isinstance(head, PromptGroupHead):
            return head(hidden[slots], embeds[slots]), None
        candidates, candidate_mask, prompt, prompt_mask, geometry = self.prompt_head_inputs(
            hidden, embeds, batch, with_geometry=head.geometry)
        if getattr(head, "reads_pixels", False):
            return head(candidates, prompt, prompt_mask, geometry, self.candidate_crops(batch))[candidate_mask], None
        return head(candidates, prompt, prompt_mask, geometry)[candidate_mask], None

    def prompt_head_inputs(self, hidden: torch.Tensor, embeds: torch.Tensor, batch: Batch,
                           with_geometry: bool = True):
        """What a :class:`PromptGroupHead` reads, for the S "select" samples of the batch (the others have no
        candidates): (candidates S x C x 2H, their mask S x C bool, prompt S x P x 2H, its mask S x P bool), each
        position's [last-layer state, input embedding], left-aligned and zero-padded (hidden, embeds: B x L x H),
        and the candidates' geometry against the prompt's first reference mask, S x C x GEOMETRY_INPUTS
        (:func:`anyref.group_heads.candidate_geometry`, zero-padded; None without ``with_geometry``, so that a
        head that does not read it costs nothing)."""
        slots = batch.candidate_slots
        rows = slots.any(1)
        both = torch.cat([hidden, embeds.to(hidden.dtype)], dim=-1)[rows]
        candidates, candidate_mask = pad_rows(both, slots[rows])
        prompt, prompt_mask = pad_rows(both, self.prompt_positions(batch)[rows])
        if not with_geometry:
            return candidates, candidate_mask, prompt, prompt_mask, None
        geometry = torch.zeros((*candidates.shape[:2], GEOMETRY_INPUTS), device=hidden.device)
        places = mask_geometry(batch.mask_weights["vision"])  # M x 5: the batch's MaskRefs, then candidates
        for row, (sample, (first, count)) in enumerate((s, span) for s, span in enumerate(batch.candidate_spans)
                                                       if span[1]):
            references = torch.nonzero(batch.mask_owners == sample).flatten()
            references = references[(references < first) | (references >= first + count)]
            reference = places[references[0]] if len(references) else None
            geometry[row, :count] = candidate_geometry(places[first:first + count], reference)
        return candidates, candidate_mask, prompt, prompt_mask, geometry

    def candidate_crops(self, batch: Batch) -> torch.Tensor:
        """Each candidate's crop (:func:`anyref.candidate_crops.candidate_crops`) for the S "select" samples of the
        batch, as ``prompt_head_inputs`` orders them: S x C x CROP_CHANNELS x CROP_SIDE x CROP_SIDE, zero-padded."""
        crops = [candidate_crops(batch.sam_pixels[row], batch.sam_sizes[row],
                                 candidates.to(batch.sam_pixels.device))
                 for row, candidates in enumerate(batch.candidates) if candidates is not None and len(candidates)]
        if not crops:
            return batch.sam_pixels.new_zeros((0, 0, CROP_CHANNELS, CROP_SIDE, CROP_SIDE))
        return pad_sequence(crops, batch_first=True)

    def candidate_cells(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's share of each cell of the image-token grid the LLM reads (from the vision tower's
        pooling weights, so in the tower's frame whatever ``vision_resize`` did), and its sample's index among
        the batch's "select" samples: (N x T, N)."""
        weights = batch.mask_weights["vision"]  # M x G x G over the vision tower's patch grid
        merge = self.config.image_token_merge
        coverage, owners = [], []
        for index, (first, count) in enumerate(span for span in batch.candidate_spans if span[1]):
            # the merger's k x k patches are one image token: a token's share is the mean of its patches' shares
            coverage.append(F.avg_pool2d(weights[first:first + count, None].float(), merge).flatten(1))
            owners.append(torch.full((count,), index, dtype=torch.long, device=weights.device))
        if not coverage:
            return (weights.new_zeros((0, self.llm_grid ** 2), dtype=torch.float32),
                    torch.zeros(0, dtype=torch.long, device=weights.device))
        return torch.cat(coverage), torch.cat(owners)

    def prompt_positions(self, batch: Batch) -> torch.Tensor:
        """B x L bool: the question's positions after its image, candidates excluded (each ``<mask-pool-pre>`` and
        the mask token after it) and the image's second read too (``image_reread``): the prompt's words and
        reference tokens, what a group is asked by."""
        ids = batch.input_ids
        span = torch.arange(ids.shape[1], device=ids.device)
        image = ids == self.ids.image
        first_image = torch.where(image, span[None, :], ids.shape[1]).min(1).values
        image_end = first_image + self.llm_grid ** 2  # the first read is one run of image tokens
        pre = ids == self.ids.mask_pool_pre
        candidate = pre | F.pad(pre[:, :-1], (1, 0))
        question = (span[None, :] >= image_end[:, None]) & (span[None, :] < batch.answer_starts[:, None])
        question &= ~image
        return question & batch.attention_mask.bool() & ~candidate

    def _group_loss(self, batch: Batch, hidden: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The candidates' weighted BCE, plus for a :class:`GroupMapHead` its map's per-cell BCE; and for the log,
        that cell term alone ({"group_cells": ...}; {} for the other heads)."""
        logits, group_map = self._group_outputs(hidden, embeds, batch)
        if not len(logits):  # no "select" sample: zero, still in the graph
            zero = logits.sum() * 0.0
            return zero, ({} if group_map is None else {"group_cells": zero.detach()})
        targets = torch.cat([s for s, (_, n) in zip(batch.selected, batch.candidate_spans) if n]).to(logits.device)
        owners = torch.cat([torch.full((n,), row, dtype=torch.long)
                            for row, (_, n) in enumerate(batch.candidate_spans) if n]).to(logits.device)
        loss = group_loss(logits, targets, owners, self.config.group_pos_weight)
        if group_map is None:
            return loss, {}
        cell = group_cell_loss(*group_map, targets)
        return loss + cell, {"group_cells": cell.detach()}

    def _obj_states(self, tap, hidden, attention, answer_starts, rows, cols, keys) -> torch.Tensor:
        """Refocused states for the ``<obj>``-emitting positions (rows, cols) of a full (uncached) forward.

        hidden: B x L x H last-layer states; keys: B x KVH x L x D rotary keys of the last layer. Returns N x H.
        """
        span = torch.arange(hidden.shape[1], device=hidden.device)
        before = span[None, :] <= cols[:, None]  # causal: keys up to the emitting position
        key_mask = before & attention[rows].bool()
        weights = attention_rows(tap.attention, tap.queries[rows, cols], tap.cos[rows, cols], tap.sin[rows, cols],
                                 keys[rows], key_mask)
        answer_mask = before & (span[None, :] >= answer_starts[rows, None])
        return refocus(hidden[rows, cols], hidden[rows], weights, answer_mask, self.refocus_lambda,
                       self.config.refocus_answer_grad)

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def select_states(self, batch: Batch, grids: torch.Tensor | None = None,
                      sam_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ONE forward pass over a batch of "select" samples: (last-layer states, input embeddings), both
        B x L x H. grids, sam_embeddings: cached image features, as in generate."""
        attention = batch.attention_mask
        embeds = self.input_embeddings(batch, grids, sam_embeddings)
        hidden = self.llava.model.language_model(
            inputs_embeds=embeds, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp_min(0),
            use_cache=False).last_hidden_state
        return hidden, embeds

    @torch.no_grad()
    def select_logits(self, batch: Batch, grids: torch.Tensor | None = None,
                      sam_embeddings: torch.Tensor | None = None, head: nn.Module | None = None) -> torch.Tensor:
        """The group of each "select" sample in ONE forward pass, whatever the number of candidates: membership
        logits N (all candidates, sample by sample), by ``head`` (None: the group head)."""
        hidden, embeds = self.select_states(batch, grids, sam_embeddings)
        return self.group_logits(hidden, embeds, batch, head)

    @torch.no_grad()
    def group_obj_map(self, batch: Batch, grids: torch.Tensor | None = None,
                      sam_embeddings: torch.Tensor | None = None) -> torch.Tensor | None:
        """The group of a one-sample "segment" batch whose answer is the given "<obj>" (``group_by_obj``), in ONE
        teacher-forced forward: that ``<obj>``'s mask probabilities H x W at the image's size, or None when it is
        placed nowhere (an empty group). grids, sam_embeddings (1 x C x g x g): cached image features."""
        if len(batch.input_ids) != 1:
            raise ValueError(f"group_obj_map takes one sample, got a batch of {len(batch.input_ids)}")
        if sam_embeddings is None:
            sam_embeddings = self.sam_embeddings(batch.sam_pixels)
        embeds = self.input_embeddings(batch, grids, sam_embeddings)
        hidden, _, _, _, states = self.answer_states(batch, embeds=embeds)
        if len(states) != 1:
            raise ValueError(f"the group's answer must hold exactly one <obj>, got {len(states)}")
        low, locations = self.decode_obj_masks(sam_embeddings, states,
                                               self.image_token_states(batch.input_ids, hidden))
        if placed_nowhere(locations)[0]:
            return None
        low = self.refine_obj_masks(sam_embeddings, states, low, batch.sam_sizes, batch.image_sizes)
        return upscale_masks(self.sam, low, batch.sam_sizes[0], batch.image_sizes[0])[0].float().sigmoid()

    def generate(self, batch: Batch, max_new_tokens: int | None = None, grids: torch.Tensor | None = None,
                 refocus: bool = True, stop_at_eos: bool = True, sam_embeddings: torch.Tensor | None = None,
                 prefix: PrefixCache | None = None, keep_prefix=None, share_prefix: bool = True
                 ) -> list[Generation]:
        """Greedy decoding with a KV cache for a left-padded batch; refocused ``<obj>`` states (anyref.decoding).

        grids: B x C_v x G x G precomputed vision features (``set_image``); sam_embeddings: B x C x g x g
        precomputed SAM embeddings (used by mask tokens when SAM is one of their sources). The tokens all rows
        start with run once (anyref.prefix); ``prefix`` is a PrefixCache of them computed before (used when its
        ids match), ``keep_prefix`` is called with a newly computed one, share_prefix=False runs every row whole.
        refocus=False takes the raw ``<obj>`` states (for measuring what refocusing costs); stop_at_eos=False
        always generates ``max_new_tokens`` (fixed-length answers for benchmarks).
        """
        return greedy_generate(self, batch, max_new_tokens, grids, refocus, stop_at_eos, sam_embeddings, prefix,
                               keep_prefix, share_prefix)

    def decode_text(self, token_ids: list[int]) -> str:
        """Answer text with ``<obj>`` marking each mask (and nothing else: see outputs.escape_answer_markers); other
        special tokens dropped."""
        pieces, current = [], []
        for token in token_ids:
            if token == self.ids.obj:
                pieces.append(self._decode_plain(current))
                pieces.append(self.config.obj_token)
                current = []
            else:
                current.append(token)
        pieces.append(self._decode_plain(current))
        return "".join(pieces).strip()

    def _decode_plain(self, token_ids: list[int]) -> str:
        """Text of answer tokens without an ``<obj>``: ordinary tokens that spell "<obj>" do not read as one."""
        return escape_answer_markers(self.tokenizer.decode(token_ids, skip_special_tokens=True), self.config.obj_token)
