"""The trainer's cell-attribute loss (Stage.cell_attribute_weight): what each image token the LLM read holds, read
from its last-layer state by a trainer-only head, against the objects' attribute shares on the LLM's token grid."""
import numpy as np
import pytest
import torch

from anyref import AnyRef
from anyref.batching import collate, prepare
from anyref.synthref import SynthRef, SynthRefConfig
from anyref.synthref.vocabulary import COLOURS, SHAPES, SIZES
from train.config import Stage
from train.objectives import TrainingObjective, dense_targets
from train.trainable import parameter_groups


@pytest.fixture(scope="module")
def shipped_batch():
    model = AnyRef.from_pretrained("synthref-tiny").train()
    world = SynthRef(SynthRefConfig())
    samples = [world.split("val", task, 1)[0] for task in ("text", "box", "no_target")]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    return model, samples, batch


def test_targets_on_the_llm_grid_hold_each_cells_objects(shipped_batch):
    model, samples, _ = shipped_batch
    grid = model.llm_grid
    dense = dense_targets(samples, grid, model.config.sam.embedding_size)
    assert dense.vision.shape == (3, len(SHAPES) + len(COLOURS) + len(SIZES) + 3, grid, grid)
    blocks = dense.vision.split([len(SHAPES) + 1, len(COLOURS) + 1, len(SIZES) + 1], 1)
    for block in blocks:  # each attribute's shares in a cell sum to 1 (background for the uncovered part)
        assert torch.allclose(block.sum(1), torch.ones(3, grid, grid), atol=1e-5)
    # by hand: an attribute value's share of a cell is the cover of the (visible, disjoint) objects that have it
    for row, sample in enumerate(samples):
        masks = np.asarray(sample.meta["object_masks"], dtype=np.float64)
        side = sample.image.shape[0] // grid
        cover = masks.reshape(len(masks), grid, side, grid, side).mean((2, 4))  # K x G x G
        for block, (key, values) in zip(blocks, (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES))):
            expected = np.zeros((len(values), grid, grid))
            for obj, part in zip(sample.meta["objects"], cover):
                expected[values.index(obj[key])] += part
            np.testing.assert_allclose(block[row, 1:].numpy(), expected, atol=1e-5, err_msg=key)


def test_the_loss_is_the_head_read_on_the_image_token_states(shipped_batch):
    model, samples, batch = shipped_batch
    objective = TrainingObjective(model, cell_attributes=True)
    dense = dense_targets(samples, model.llm_grid, model.config.sam.embedding_size)
    torch.manual_seed(0)
    without = objective(batch, dense=dense, pointer_weight=0.5)
    torch.manual_seed(0)
    weighted = objective(batch, dense=dense, pointer_weight=0.5, cell_attribute_weight=0.5)
    cells = weighted.terms["cells"]
    assert weighted.loss.item() == pytest.approx(without.loss.item() + 0.5 * cells.item(), rel=1e-5)
    # by hand: each image token's last-layer state through the head, soft cross-entropy per attribute, averaged
    states = model.image_token_states(batch.input_ids, weighted.hidden)  # B x G^2 x H
    logits = objective.cell_attribute_head(states)  # B x G^2 x C
    targets = dense.vision.flatten(2).transpose(1, 2)  # B x G^2 x C
    sizes = [len(SHAPES) + 1, len(COLOURS) + 1, len(SIZES) + 1]
    by_hand = sum(-(t * l.log_softmax(-1)).sum(-1).mean() for l, t in zip(logits.split(sizes, -1),
                                                                          targets.split(sizes, -1))) / 3
    assert cells.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert 0.0 <= weighted.terms["cell_acc_colour"].item() <= 1.0
    # it reaches the LLM: the states the locator's keys are made from
    model.zero_grad()
    objective.zero_grad()
    objective._cell_attributes(batch, weighted, dense).backward()
    assert model.llava.model.language_model.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0


def test_the_head_exists_only_for_runs_that_use_it(shipped_batch):
    model, samples, batch = shipped_batch
    plain = TrainingObjective(model)
    assert plain.cell_attribute_head is None and plain.trainer_heads()["cell_heads"] == []
    assert parameter_groups(model, plain.trainer_heads())["cell_heads"] == []
    with pytest.raises(ValueError, match="cell head"):
        plain(batch, cell_attribute_weight=1.0)
    with_head = TrainingObjective(model, cell_attributes=True)
    assert len(parameter_groups(model, with_head.trainer_heads())["cell_heads"]) == 2
    with pytest.raises(ValueError, match="dense targets"):
        with_head(batch, cell_attribute_weight=1.0)


def test_stages_refuse_it_where_the_head_does_not_train():
    Stage(name="ok", steps=1, trainable="all", cell_attribute_weight=0.5)
    with pytest.raises(ValueError, match="cell_attribute_weight"):
        Stage(name="x", steps=1, trainable="heads", cell_attribute_weight=0.5)
    with pytest.raises(ValueError, match="cell_attribute_weight"):
        Stage(name="x", steps=1, trainable="all", cell_attribute_weight=-1.0)
