"""What a training step optimises: AnyRef's own loss, or SynthRef's dense encoder warm-up.

A tiny model starts from random weights, where the paper starts from CLIP, SAM and ImageBind. The warm-up stage
of the SynthRef presets gives the encoders what pretraining would: on the vision tower's patch grid and on SAM's
image embedding, per-cell supervision of what lies in each cell (background or an object's colour and size) and
per-object supervision of shape, colour and size from the features mask-pooled under each object (a ViT from
scratch learns shapes far faster as "what its cells hold together" than cell by cell), and the sounding shapes from
the audio embeddings. Its heads live here, in the trainer, and are never exported: the shipped model is AnyRef
alone.

A second, optional help for from-scratch runs is the pointer loss (a stage's ``pointer_weight``): a small head reads
each ``<obj>`` state against the LLM's last-layer states of the image tokens and is trained to point at the target
mask's cells - a direct signal of WHERE the answer is, which the mask loss gives only through SAM's decoder. Its
head is trainer-only too, except in a model that gives SAM a location map (``obj_location_prompt``): there the
pointer loss supervises the model's own map (:class:`anyref.heads.ObjLocator`) and the trainer has no head of its
own.

A third is SAM's own promptable segmentation (a stage's ``sam_prompt_weight``, train/sam_prompts.py): SAM's decoder
draws each object (warm-up) or each target mask (joint stage) from a box, as SAM is pretrained to.

The module DeepSpeed wraps is :class:`TrainingObjective`:
``forward(batch, dense=None, objective="anyref", pointer_weight=0.0, sam_prompt_weight=0.0, refine_weight=0.0,
box_prior_weight=0.0)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anyref.heads import location_logits, upscale_masks
from anyref.losses import mask_bce, mask_dice
from anyref.mask_tokens import pool_masks
from anyref.outputs import AnyRefOutput
from anyref.references import Audio, Box
from anyref.samples import ReferringSample
from anyref.synthref.vocabulary import COLOURS, SHAPES, SIZES
from encoders.llava import vision_patch_grid
from train.sam_prompts import box_prompt_loss

__all__ = ["OBJECTIVES", "TrainingObjective", "DenseTargets", "dense_targets", "pointer_targets"]

OBJECTIVES = ("anyref", "synthref_dense")
# class 0 of every attribute is "background" (no object in the cell)
_ATTRIBUTES = (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES))
_CLASSES = [len(values) + 1 for _, values in _ATTRIBUTES]


class DenseTargets:
    """Warm-up targets of a batch.

    vision: B x (sum of classes) x G x G, each attribute's block a distribution over cells' pixels (background
    first); sam: the same on SAM's g x g embedding grid. Objects (M of them, sample by sample): labels M x 3
    (shape, colour, size indices), owners M (sample index), vision_weights M x G x G and sam_weights M x g x g
    (area fractions, for mask pooling). audio: Na x len(SHAPES) {0, 1}, one row per Audio reference in batch order.
    object_masks: per sample, its objects' K_i x H x W bool visible masks (the box prompts' targets).
    """

    def __init__(self, vision, sam, labels, owners, vision_weights, sam_weights, audio, object_masks):
        self.vision, self.sam, self.audio = vision, sam, audio
        self.labels, self.owners, self.vision_weights, self.sam_weights = labels, owners, vision_weights, sam_weights
        self.object_masks = object_masks

    def to(self, device) -> "DenseTargets":
        return DenseTargets(*(t.to(device) for t in (self.vision, self.sam, self.labels, self.owners,
                                                     self.vision_weights, self.sam_weights, self.audio)),
                            [m.to(device) for m in self.object_masks])


def _attribute_maps(sample: ReferringSample) -> torch.Tensor:
    """(sum of classes) x H x W one-hot attribute maps of the sample's visible objects (background where none)."""
    if "object_masks" not in sample.meta or "objects" not in sample.meta:
        raise ValueError("the synthref_dense objective needs SynthRef samples (object masks and attributes in meta); "
                         f"got a sample from {sample.source or 'an unnamed source'}")
    masks = torch.from_numpy(np.asarray(sample.meta["object_masks"], dtype=bool))
    height, width = sample.image.shape[:2]
    blocks = []
    for (key, values), classes in zip(_ATTRIBUTES, _CLASSES):
        block = torch.zeros((classes, height, width))
        for obj, mask in zip(sample.meta["objects"], masks):
            block[1 + values.index(obj[key])] += mask.float()
        block[0] = 1.0 - block[1:].sum(0).clamp(max=1.0)
        blocks.append(block)
    return torch.cat(blocks)


def _sounding_shapes(sample: ReferringSample) -> list[torch.Tensor]:
    rows = []
    for ref in sample.references:
        if isinstance(ref, Audio):
            shapes = sample.meta.get("shapes") or [sample.meta["shape"]]
            row = torch.zeros(len(SHAPES))
            row[[SHAPES.index(s) for s in shapes]] = 1.0
            rows.append(row)
    return rows


def dense_targets(samples: list[ReferringSample], vision_grid: int, sam_grid: int) -> DenseTargets:
    """Targets for ``samples`` (SynthRef, square images that both encoders see whole, as the "resize" mode and
    SAM's longest-side resize of a square image give)."""
    maps, labels, owners, masks, per_sample = [], [], [], [], []
    for row, sample in enumerate(samples):
        height, width = sample.image.shape[:2]
        if height != width:
            raise ValueError(f"the synthref_dense objective needs square images, got {height} x {width}")
        maps.append(_attribute_maps(sample))
        per_sample.append(torch.from_numpy(np.asarray(sample.meta["object_masks"], dtype=bool)))
        for obj, mask in zip(sample.meta["objects"], sample.meta["object_masks"]):
            labels.append([values.index(obj[key]) for key, values in _ATTRIBUTES])
            owners.append(row)
            masks.append(torch.from_numpy(np.asarray(mask, dtype=np.float32)))
    stacked = torch.stack(maps)
    objects = torch.stack(masks)[:, None]
    audio = [row for sample in samples for row in _sounding_shapes(sample)]
    return DenseTargets(vision=F.adaptive_avg_pool2d(stacked, vision_grid), sam=F.adaptive_avg_pool2d(stacked, sam_grid),
                        labels=torch.tensor(labels, dtype=torch.long), owners=torch.tensor(owners, dtype=torch.long),
                        vision_weights=F.adaptive_avg_pool2d(objects, vision_grid)[:, 0],
                        sam_weights=F.adaptive_avg_pool2d(objects, sam_grid)[:, 0],
                        audio=torch.stack(audio) if audio else torch.zeros((0, len(SHAPES))), object_masks=per_sample)


def _object_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(mean over attributes of the cross-entropy of M x (6 + 6 + 2) pooled-object logits, accuracy per
    attribute)."""
    total, accuracy = logits.new_zeros(()), {}
    sizes = [len(values) for _, values in _ATTRIBUTES]
    for index, ((name, _), part) in enumerate(zip(_ATTRIBUTES, logits.split(sizes, 1))):
        total = total + F.cross_entropy(part, labels[:, index])
        accuracy[name] = (part.argmax(1) == labels[:, index]).float().mean().detach()
    return total / len(_ATTRIBUTES), accuracy


def pointer_targets(batch, grid: int, nowhere: bool = False) -> torch.Tensor:
    """N x grid*grid: each ``<obj>``'s target mask as a distribution over the cells of the image-token grid the
    LLM reads (area fractions, normalised), in the order the model lists ``<obj>`` (sample by sample). Needs the
    "resize" vision mode, where the grid covers the whole image. With ``nowhere``, N x (grid*grid + 1): an empty
    target mask (an absent object) puts all its weight on the last place, "nowhere"; without it such a row is all
    zeros (no pointer loss)."""
    rows = [F.adaptive_avg_pool2d(masks.float()[:, None], grid).flatten(1) for masks in batch.masks if len(masks)]
    if not rows:
        return torch.zeros((0, grid * grid + nowhere))
    cells = torch.cat(rows)
    cells = cells / cells.sum(1, keepdim=True).clamp_min(1e-6)
    if not nowhere:
        return cells
    return torch.cat([cells, (cells.sum(1, keepdim=True) == 0).float()], dim=1)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(mean over cells and attributes of the cross-entropy of B x C x G x G logits against soft targets, per
    attribute the accuracy of the arg-max on cells that are mostly one object, for the log)."""
    total, accuracy = logits.new_zeros(()), {}
    for (name, _), part_logits, part_targets in zip(_ATTRIBUTES, logits.split(_CLASSES, 1), targets.split(_CLASSES, 1)):
        total = total - (part_targets * part_logits.log_softmax(1)).sum(1).mean()
        confident, label = part_targets.max(1)
        on_object = (confident > 0.5) & (label > 0)
        hits = ((part_logits.argmax(1) == label) & on_object).sum()
        accuracy[name] = (hits / on_object.sum().clamp_min(1)).detach().float()
    return total / len(_CLASSES), accuracy


class TrainingObjective(nn.Module):
    """The AnyRef model plus the warm-up heads; ``objective`` picks the loss of this step.

    "anyref": the model's own forward (text CE, mask BCE and dice). "synthref_dense": the encoders only, through
    1x1 heads on the vision grid and on SAM's embedding and a linear head on the audio embeddings. Every
    parameter that trains in any stage joins each step's graph (unused ones at zero weight), so that ZeRO-2 ranks
    always reduce the same gradients.
    """

    def __init__(self, model: nn.Module, cell_attributes: bool = False):
        super().__init__()
        self.model = model
        classes, attributes = sum(_CLASSES), sum(len(values) for _, values in _ATTRIBUTES)
        vision_width, sam_width = model.llava.config.vision_config.hidden_size, model.config.sam.prompt_dim
        self.vision_head = nn.Conv2d(vision_width, classes, 1)
        self.sam_head = nn.Conv2d(sam_width, classes, 1)
        self.vision_object_head = nn.Linear(vision_width, attributes)
        self.sam_object_head = nn.Linear(sam_width, attributes)
        self.audio_head = None if model.audio_encoder is None else nn.Linear(model.config.audio.out_dim, len(SHAPES))
        hidden = model.llava.config.text_config.hidden_size
        # a model that locates its <obj> itself is pointed through its own locator (anyref.heads.ObjLocator)
        if model.obj_locator is None:
            self.pointer_query, self.pointer_key = nn.Linear(hidden, 64), nn.Linear(hidden, 64)
        # what each image token the LLM read holds, read from its last-layer state (cell_attribute_weight); made only
        # for a run that uses it, so other runs' checkpoints keep their layout
        self.cell_attribute_head = nn.Linear(hidden, classes) if cell_attributes else None

    def pointer_heads(self) -> list[nn.Module]:
        return [self.pointer_query, self.pointer_key] if self.model.obj_locator is None else []

    def warmup_heads(self) -> list[nn.Module]:
        heads = (self.vision_head, self.sam_head, self.vision_object_head, self.sam_object_head, self.audio_head)
        return [m for m in heads if m is not None]

    def cell_heads(self) -> list[nn.Module]:
        return [] if self.cell_attribute_head is None else [self.cell_attribute_head]

    def trainer_heads(self) -> dict[str, list[nn.Module]]:
        """The heads that exist only in training, by parameter group (see train.trainable)."""
        return {"warmup_heads": self.warmup_heads(), "pointer_heads": self.pointer_heads(),
                "cell_heads": self.cell_heads()}

    def forward(self, batch, dense: DenseTargets | None = None, objective: str = "anyref",
                pointer_weight: float = 0.0, sam_prompt_weight: float = 0.0, refine_weight: float = 0.0,
                box_prior_weight: float = 0.0, cell_attribute_weight: float = 0.0) -> AnyRefOutput:
        if objective == "anyref":
            output = self.model(batch)
            pointer = self._pointer_loss(batch, output)
            output.terms["pointer"] = pointer.detach()
            unused = (self.warmup_heads() + ([] if pointer_weight else self.pointer_heads())
                      + ([] if cell_attribute_weight else self.cell_heads()))
            output.loss = output.loss + pointer_weight * pointer + self._untouched(unused)
            if cell_attribute_weight:
                output.loss = output.loss + cell_attribute_weight * self._cell_attributes(batch, output, dense)
            if sam_prompt_weight:
                output.loss = output.loss + sam_prompt_weight * self._box_prompts(
                    batch, output.sam_embeddings, batch.masks, output.terms)
            if refine_weight:
                output.loss = output.loss + refine_weight * self._refined_masks(batch, output)
            if box_prior_weight:
                output.loss = output.loss + box_prior_weight * self._box_prior_masks(batch, output)
            return output
        if objective != "synthref_dense":
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if dense is None:
            raise ValueError("the synthref_dense objective needs dense targets")
        return self._dense(batch, dense, sam_prompt_weight)

    def _box_prompts(self, batch, embeddings: torch.Tensor, masks: list[torch.Tensor], terms: dict) -> torch.Tensor:
        """SAM's box-prompted mask loss on ``masks`` (per sample), weighted as the model weighs its own masks;
        its terms go to ``terms`` for the log."""
        config = self.model.config
        bce, dice, iou = box_prompt_loss(self.model.sam, embeddings, masks, batch.sam_sizes, batch.image_sizes)
        terms.update(prompt_bce=bce.detach(), prompt_dice=dice.detach(), prompt_iou=iou)
        return config.bce_weight * bce + config.dice_weight * dice

    def _refined_masks(self, batch, output: AnyRefOutput) -> torch.Tensor:
        """The mask loss (weighted as the model weighs its own) of one refinement pass, as inference draws it
        (AnyRefModel.refine_obj_masks): each ``<obj>``'s mask drawn again from its first mask's coverage of the
        image-token grid. The first mask is a decision at inference, so it is detached here; a first mask that came
        out empty is not redrawn there and adds nothing here. Its terms go to ``output.terms`` for the log."""
        model = self.model
        fulls, targets = [], []
        for row, first in enumerate(output.mask_logits):
            drawn = (first.detach() > 0).flatten(1).any(1)
            if not drawn.any():
                continue
            mine = (output.obj_rows == row).nonzero(as_tuple=True)[0][drawn]
            prompts = model.obj_projection(output.obj_states[mine])
            low = model.redraw_obj_masks(output.sam_embeddings[row:row + 1], prompts, list(first.detach()[drawn] > 0))
            fulls.append(upscale_masks(model.sam, low, batch.sam_sizes[row], batch.image_sizes[row]))
            targets.append(batch.masks[row][drawn.to(batch.masks[row].device)].to(low.device))
        return self._redrawn_loss(fulls, targets, "refine", output)

    def _box_prior_masks(self, batch, output: AnyRefOutput) -> torch.Tensor:
        """The mask loss of each one-box ``describe`` answer's first ``<obj>`` drawn from the box's coverage of the
        image-token grid instead of the ``<obj>``'s location map, as inference draws it (``describe_box_prior``,
        AnyRef.describe). The box is read in the vision tower's frame, the frame the grid covers; the region is
        the pixels it touches (:meth:`anyref.Box.mask`), as at inference. Terms ``box_prior_*`` go to the log."""
        model = self.model
        side = batch.clip_pixels.shape[-1]
        fulls, targets = [], []
        for row, first in enumerate(output.mask_logits):
            boxes = batch.boxes[batch.boxes[:, 0] == row, 1:]
            if batch.tasks[row] != "describe" or len(boxes) != 1 or not len(first):
                continue
            region = torch.from_numpy(Box(*boxes[0].tolist()).mask(side, side)).to(first.device)
            index = (output.obj_rows == row).nonzero(as_tuple=True)[0][:1]
            low = model.redraw_obj_masks(output.sam_embeddings[row:row + 1],
                                         model.obj_projection(output.obj_states[index]), [region])
            fulls.append(upscale_masks(model.sam, low, batch.sam_sizes[row], batch.image_sizes[row]))
            targets.append(batch.masks[row][:1].to(low.device))
        return self._redrawn_loss(fulls, targets, "box_prior", output)

    def _redrawn_loss(self, fulls: list[torch.Tensor], targets: list[torch.Tensor], name: str,
                      output: AnyRefOutput) -> torch.Tensor:
        """The model's mask loss (its BCE and dice weights) of masks drawn again, per sample K_i x H_i x W_i logits
        against K_i targets; terms ``{name}_bce`` / ``{name}_dice`` go to ``output.terms``. No mask: a zero in the
        graph of the loss, so data-parallel ranks build the same graph."""
        if not fulls:
            zero = output.loss * 0.0
            output.terms.update({f"{name}_bce": zero.detach(), f"{name}_dice": zero.detach()})
            return zero
        # images differ in size, so the per-mask means are taken sample by sample and weighted by their masks
        count = sum(len(t) for t in targets)
        bce = sum(mask_bce(f, t) * len(t) for f, t in zip(fulls, targets)) / count
        dice = sum(mask_dice(f, t) * len(t) for f, t in zip(fulls, targets)) / count
        output.terms.update({f"{name}_bce": bce.detach(), f"{name}_dice": dice.detach()})
        return self.model.config.bce_weight * bce + self.model.config.dice_weight * dice

    def _cell_attributes(self, batch, output: AnyRefOutput, dense: DenseTargets | None) -> torch.Tensor:
        """Soft cross-entropy of what each image token the LLM read holds (per attribute: background or the shape,
        colour, size of the objects under it, as area shares), read by a linear head from its last-layer state -
        the state the ``<obj>`` locator's keys are made from. ``dense``: targets pooled to the LLM's token grid.
        Terms ``cells`` and ``cell_acc_*`` go to the log."""
        if self.cell_attribute_head is None or dense is None:
            raise ValueError("cell_attribute_weight needs the trainer's cell head and dense targets on the LLM grid")
        model = self.model
        states = model.image_token_states(batch.input_ids, output.hidden)  # B x G^2 x H, row by row
        logits = self.cell_attribute_head(states).transpose(1, 2).unflatten(-1, (model.llm_grid, model.llm_grid))
        loss, accuracy = _soft_cross_entropy(logits.float(), dense.vision.to(logits.device))
        output.terms.update(cells=loss.detach(), **{f"cell_acc_{k}": v for k, v in accuracy.items()})
        return loss

    def _pointer_loss(self, batch, output: AnyRefOutput) -> torch.Tensor:
        """Cross-entropy of each <obj> state's pointer over the image tokens (and "nowhere", ``obj_nowhere``)
        against its target's cells."""
        model = self.model
        logits = output.obj_locations  # N x G^2, from the model's own locator when it has one
        if logits is None:
            image_states = model.image_token_states(batch.input_ids, output.hidden)  # B x G^2 x H
            logits = location_logits(self.pointer_query(output.obj_states),
                                     self.pointer_key(image_states[output.obj_rows]))
        targets = pointer_targets(batch, model.llm_grid, nowhere=model.config.obj_nowhere).to(logits.device)
        return -(targets * logits.float().log_softmax(-1)).sum(-1).mean() if len(logits) else logits.sum() * 0.0

    @staticmethod
    def _untouched(modules: list[nn.Module]) -> torch.Tensor:
        """0 * (a sum over the parameters of modules this step does not use), to keep them in the graph."""
        return sum(p.sum() * 0.0 for module in modules for p in module.parameters())

    def _dense(self, batch, dense: DenseTargets, sam_prompt_weight: float = 0.0) -> AnyRefOutput:
        model = self.model
        grids = vision_patch_grid(model.llava, batch.clip_pixels.to(model.dtype))
        embeddings = model.sam.image_encoder(batch.sam_pixels.to(model.dtype))
        vision_loss, _ = _soft_cross_entropy(self.vision_head(grids), dense.vision)
        sam_loss, _ = _soft_cross_entropy(self.sam_head(embeddings), dense.sam)
        pooled_vision = pool_masks(grids, dense.vision_weights, dense.owners)
        pooled_sam = pool_masks(embeddings, dense.sam_weights, dense.owners)
        vision_objects, vision_acc = _object_cross_entropy(self.vision_object_head(pooled_vision), dense.labels)
        sam_objects, sam_acc = _object_cross_entropy(self.sam_object_head(pooled_sam), dense.labels)
        loss = vision_loss + sam_loss + vision_objects + sam_objects
        audio_loss = loss.new_zeros(())
        if self.audio_head is not None:
            clips = batch.audio.flatten(0, 1)
            embedded = model.audio_encoder(clips).view(*batch.audio.shape[:2], model.config.audio.out_dim).mean(1)
            logits = self.audio_head(embedded)
            if len(logits):
                audio_loss = F.binary_cross_entropy_with_logits(logits, dense.audio)
            loss = loss + audio_loss + logits.sum() * 0.0
        used_modules = [model.llava.model.vision_tower, model.sam.image_encoder, model.audio_encoder,
                        *self.warmup_heads()]
        terms = {}
        if sam_prompt_weight:
            loss = loss + sam_prompt_weight * self._box_prompts(batch, embeddings, dense.object_masks, terms)
            used_modules += [model.sam.prompt_encoder, model.sam.mask_decoder]
        used = {id(p) for m in used_modules if m is not None for p in m.parameters()}
        rest = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad and id(p) not in used)
        zero = loss.new_zeros(())
        return AnyRefOutput(loss=loss + rest, ce=zero, bce=zero, dice=zero, n_masks=0,
                            terms={**terms, "dense_vision": vision_loss.detach(), "dense_sam": sam_loss.detach(),
                                   "object_vision": vision_objects.detach(), "object_sam": sam_objects.detach(),
                                   "dense_audio": audio_loss.detach(),
                                   **{f"vision_acc_{k}": v for k, v in vision_acc.items()},
                                   **{f"sam_acc_{k}": v for k, v in sam_acc.items()}})
