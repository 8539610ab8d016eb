"""SAM's box-prompted mask loss (train/sam_prompts.py): boxes from masks, the loss on a batch with and without
masks, that it teaches a random tiny SAM to draw a boxed object, and the stage settings that use it."""
import numpy as np
import pytest
import torch

from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.synthref import SynthRef
from encoders.sam import SamConfig, build_sam, sam_preprocess
from train.config import Stage
from train.objectives import TrainingObjective, dense_targets
from train.sam_prompts import box_prompt_loss, jitter_boxes, mask_boxes


def _rect(shape, y0, y1, x0, x1) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_mask_boxes_are_one_past_the_last_pixel():
    masks = torch.stack([_rect((40, 50), 3, 10, 7, 20), _rect((40, 50), 0, 40, 49, 50)])
    masks[0, 12, 30] = True  # a stray pixel widens the box
    assert mask_boxes(masks).tolist() == [[7.0, 3.0, 31.0, 13.0], [49.0, 0.0, 50.0, 40.0]]
    with pytest.raises(ValueError, match="at least one pixel"):
        mask_boxes(torch.zeros((1, 5, 5), dtype=torch.bool))


def test_jitter_moves_each_side_within_its_fraction():
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0]]).repeat(500, 1)
    moved = jitter_boxes(boxes, 0.1) - boxes
    limits = torch.tensor([4.0, 2.0, 4.0, 2.0])
    assert (moved.abs() <= limits).all() and (moved.abs().amax(0) > 0.9 * limits).all()


def test_loss_on_masks_and_on_none_reaches_the_whole_prompt_path():
    sam = build_sam(SamConfig.named("tiny"))
    embeddings = torch.randn(2, 64, 16, 16, requires_grad=True)
    sizes = [(128, 128), (128, 128)]
    masks = [torch.stack([_rect((128, 128), 10, 50, 20, 60)]), torch.zeros((0, 128, 128), dtype=torch.bool)]
    bce, dice, iou = box_prompt_loss(sam, embeddings, masks, sizes, sizes)
    assert bce > 0 and 0 < dice < 1 and 0 <= iou <= 1
    empty = [torch.zeros((0, 128, 128), dtype=torch.bool), torch.zeros((1, 128, 128), dtype=torch.bool)]
    bce, dice, iou = box_prompt_loss(sam, embeddings, empty, sizes, sizes)
    assert bce == 0 and dice == 0 and iou == 0
    (bce + dice).backward()  # no masks: zero, yet the prompt encoder's box rows and the decoder join the graph
    assert sam.prompt_encoder.point_embeddings[2].weight.grad is not None
    assert all(p.grad is not None for p in sam.mask_decoder.transformer.parameters())


def test_box_prompts_teach_a_random_sam_to_draw_the_boxed_objects():
    """A hundred steps on four SynthRef scenes: the untrained SAM draws nothing like the objects, the trained one
    draws each object of the scenes from its box (every object, 2-5 per scene, from the same embeddings)."""
    torch.manual_seed(0)
    sam = build_sam(SamConfig.named("tiny"))
    scenes = SynthRef().split("val", "box", 4)
    pixels = torch.stack([sam_preprocess(s.image, 128)[0] for s in scenes])
    masks = [torch.from_numpy(np.asarray(s.meta["object_masks"])) for s in scenes]
    sizes = [(128, 128)] * len(scenes)

    def iou() -> float:
        with torch.no_grad():
            return float(box_prompt_loss(sam, sam.image_encoder(pixels), masks, sizes, sizes, jitter=0.0)[2])

    before = iou()
    optimizer = torch.optim.AdamW(sam.parameters(), lr=3e-3)
    for _ in range(100):
        bce, dice, _ = box_prompt_loss(sam, sam.image_encoder(pixels), masks, sizes, sizes)
        optimizer.zero_grad()
        (2 * bce + 0.5 * dice).backward()
        optimizer.step()
    after = iou()
    assert before < 0.1 and after > 0.6, (before, after)


def test_the_objective_adds_the_loss_in_both_stage_kinds():
    world = SynthRef()
    model = build_tiny(corpus=world.vocabulary(), seed=0).train()
    objective = TrainingObjective(model)
    samples = [world.sample_at(0, i, {"text": 1, "example": 1}) for i in range(2)]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    torch.manual_seed(0)
    plain = objective(batch, pointer_weight=0.5)
    torch.manual_seed(0)
    prompted = objective(batch, pointer_weight=0.5, sam_prompt_weight=0.5)
    added = 0.5 * (model.config.bce_weight * prompted.terms["prompt_bce"]
                   + model.config.dice_weight * prompted.terms["prompt_dice"])
    torch.testing.assert_close(prompted.loss, plain.loss + added)
    dense = dense_targets(samples, model.grid, model.config.sam.embedding_size)
    assert [len(m) for m in dense.object_masks] == [len(s.meta["objects"]) for s in samples]
    warm = objective(batch, dense=dense, objective="synthref_dense", sam_prompt_weight=1.0)
    assert warm.terms["prompt_bce"] > 0 and "prompt_bce" not in objective(batch, dense=dense,
                                                                        objective="synthref_dense").terms


def test_stage_settings_are_checked():
    Stage("warm-up", 10, trainable="encoders_promptable", objective="synthref_dense", sam_prompt_weight=1.0)
    Stage("joint", 10, trainable="all", sam_prompt_weight=0.5)
    with pytest.raises(ValueError, match="freezes"):
        Stage("warm-up", 10, trainable="encoders", objective="synthref_dense", sam_prompt_weight=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        Stage("joint", 10, trainable="all", sam_prompt_weight=-1.0)
