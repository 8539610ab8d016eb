"""Mask refinements (``AnyRefConfig.mask_refinements``): at inference each ``<obj>``'s mask is drawn again from the
previous mask's own coverage of the image-token grid - in the whole image's frame, an empty mask kept as it is -
and the setting is refused where that coverage would mean nothing; a training stage's refine_weight trains that
same pass."""
import pytest
import torch

from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.heads import coverage_logits, decode_masks, location_prompt, upscale_masks
from anyref.losses import mask_bce, mask_dice
from anyref.samples import ReferringSample
from anyref.synthref import SynthRef
from train.config import Stage

from tests.conftest import scene, shipped_training_step

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True}


@pytest.fixture(scope="module")
def located_model():
    model = build_tiny(seed=2, config_overrides=LOCATED).eval()
    model.set_mask_refinements(1)
    return model


def test_the_setting_is_checked():
    plain = build_tiny(seed=0)
    with pytest.raises(ValueError, match="needs obj_location_prompt"):
        plain.set_mask_refinements(1)
    plain.set_mask_refinements(0)  # off is always allowed
    located = build_tiny(seed=0, config_overrides=LOCATED).config
    with pytest.raises(ValueError, match=">= 0"):
        located.replace(mask_refinements=-1)
    with pytest.raises(ValueError, match='vision_resize "resize"'):
        located.replace(mask_refinements=2, vision_resize="pad")


def test_a_refinement_decodes_the_previous_masks_coverage(located_model):
    """On a non-square image: each redrawn mask is SAM's decoding of the first mask's coverage of the grid, read at
    the image's own size; a first mask that came out empty is kept."""
    model = located_model
    sample = ReferringSample(image=scene(1, 96), references=["the red circle"], task="segment")
    batch = collate([prepare(sample, model.builder, with_answer=False)], model.ids.pad, "left")
    sam_size, image_size = batch.sam_sizes[0], batch.image_sizes[0]
    assert image_size[0] != image_size[1]
    sam = model.sam
    with torch.no_grad():
        embeddings = model.sam_embeddings(batch.sam_pixels)
        torch.manual_seed(0)
        states = torch.randn(3, model.llava.config.text_config.hidden_size)
        side = sam.prompt_encoder.mask_input_size[0]
        low = torch.full((3, 1, side, side), -10.0)
        low[0, :, :, : side // 2] = 10.0  # the left half of the SAM frame: the image's left part
        low[1, :, : side // 4] = 10.0  # a band at the top
        refined = model.refine_obj_masks(embeddings, states, low, [sam_size] * 3, [image_size] * 3)
        first = upscale_masks(sam, low[:2], sam_size, image_size) > 0
        cells = coverage_logits(first, model.llm_grid)
        expected = decode_masks(sam, embeddings, model.obj_projection(states[:2]), location_prompt(sam, cells))
    torch.testing.assert_close(refined[:2], expected)
    torch.testing.assert_close(refined[2], low[2])  # empty: kept
    # the coverage is read in the image's frame, not SAM's padded one: the top quarter of the SAM frame is a larger
    # share of the image's rows than a quarter (sam_size[0] < the SAM side), and the grid's rows say so
    grid = model.llm_grid
    left = cells[0].exp().view(grid, grid)
    assert left[:, : grid // 2].min() > 0.99 and left[:, grid // 2:].max() < 0.01
    share = grid * (sam.image_encoder.img_size / 4) / sam_size[0]  # grid rows the band covers
    full = int(share)
    assert share - full > 0.1  # the padded frame's reading (share = grid / 4, whole rows) would differ
    rows = cells[1].exp().view(grid, grid).mean(1)
    assert rows[:full].min() > 0.99 and rows[full + 1:].max() < 0.01
    assert rows[full].item() == pytest.approx(share - full, abs=0.05)

def test_no_refinement_leaves_the_first_pass():
    model = build_tiny(seed=2, config_overrides=LOCATED).eval()
    low = torch.randn(2, 1, 32, 32)
    out = model.refine_obj_masks(None, torch.zeros(2, 4), low, [(96, 112)] * 2, [(96, 112)] * 2)
    assert out is low


def test_the_training_pass_is_the_inference_pass():
    """refine_weight's loss is the mask loss of the mask refine_obj_masks draws at inference (one refinement, from
    the first pass's mask), and it trains SAM's mask decoder."""
    samples = SynthRef().split("val", "text", 2) + SynthRef().split("val", "audio1", 1)
    model, batch, output = shipped_training_step(samples, refine_weight=1.0)
    with torch.no_grad():
        rows = output.obj_rows
        image_states = model.image_token_states(batch.input_ids, output.hidden)[rows]
        first, _ = model.decode_obj_masks(output.sam_embeddings[rows], output.obj_states, image_states)
        model.set_mask_refinements(1)
        sizes = [batch.sam_sizes[r] for r in rows.tolist()], [batch.image_sizes[r] for r in rows.tolist()]
        refined = model.refine_obj_masks(output.sam_embeddings[rows], output.obj_states, first, *sizes)
        bce = dice = 0.0
        for i, row in enumerate(rows.tolist()):
            full = upscale_masks(model.sam, refined[i:i + 1], batch.sam_sizes[row], batch.image_sizes[row])
            target = batch.masks[row][:1]
            bce, dice = bce + mask_bce(full, target), dice + mask_dice(full, target)
    assert len(rows) == 3 and all(len(m) == 1 for m in batch.masks)  # one mask per sample, all drawn
    assert output.terms["refine_bce"].item() == pytest.approx(bce.item() / 3, rel=1e-4)
    assert output.terms["refine_dice"].item() == pytest.approx(dice.item() / 3, rel=1e-4)


def test_refine_weight_needs_a_stage_that_trains_the_decoder():
    with pytest.raises(ValueError, match="refine_weight"):
        Stage(name="x", steps=1, trainable="mask_projector", refine_weight=1.0)
    with pytest.raises(ValueError, match="refine_weight"):
        Stage(name="x", steps=1, trainable="all", refine_weight=-1.0)
