"""Shared fixtures: tiny models of the real upstream classes, and a few hand-made samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from train.trainable import apply_policies

torch.set_num_threads(2)


def scene(seed: int = 0, size: int = 96) -> np.ndarray:
    """A random H x W x 3 uint8 image."""
    return (np.random.default_rng(seed).random((size, size + 16, 3)) * 255).astype(np.uint8)


def rect_mask(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def fit(model, batch, steps: int, lr: float, clip: float | None = None):
    """``steps`` AdamW steps of ``model``'s own loss on one batch (its trainable parameters only; gradients
    clipped to ``clip`` as the trainer does, when given). Returns the last step's output."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        output = model(batch)
        output.loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
    return output


def shipped_training_step(samples: list, **weights):
    """One forward and backward of the shipped model's training objective on ``samples`` (``weights``: the
    objective's loss weights), checked to train SAM's mask decoder: (model, batch, output)."""
    from anyref import AnyRef
    from train.objectives import TrainingObjective

    model = AnyRef.from_pretrained("synthref-tiny")
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    output = TrainingObjective(model)(batch, pointer_weight=0.5, **weights)
    output.loss.backward()
    assert model.sam.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    return model, batch, output


def assert_select_batch_scores_as_alone(model, samples: list) -> torch.Tensor:
    """"select" samples padded into one batch get the membership logits each gets alone; returns them."""
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    together = model.select_logits(batch)
    alone = torch.cat([model.select_logits(collate([prepare(s, model.builder)], model.ids.pad)) for s in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    return together


def select_after_save_and_load(model, path, candidates: np.ndarray, image_seed: int = 2):
    """The model saved to ``path`` and loaded back, after checking that its "select" scores on one scene and
    prompt come back unchanged; returns the loaded model."""
    image = scene(image_seed)
    scores = model.select(image, "all squares", candidates=candidates).candidate_scores
    again = type(model).from_pretrained(model.save_pretrained(path))
    np.testing.assert_allclose(again.select(image, "all squares", candidates=candidates).candidate_scores, scores,
                               atol=1e-6)
    return again


def assert_group_head_alone_learns(model, groups: dict[str, list[bool]], candidates: np.ndarray) -> None:
    """Trained alone (the "group_head" stage policy: the rest of the model frozen) on one image's candidates under
    several prompts, the group head selects each prompt's group. groups: prompt -> membership per candidate."""
    torch.manual_seed(0)
    assert list(apply_policies(model, {"group_head"})) == ["group_head"]
    samples = [ReferringSample(scene(0), [prompt], task="select", candidates=candidates, selected=np.array(group))
               for prompt, group in groups.items()]
    fit(model, collate([prepare(s, model.builder) for s in samples], model.ids.pad), 150, lr=3e-3)
    model.eval()
    for prompt, group in groups.items():
        result = model.select(scene(0), prompt, candidates=candidates)
        np.testing.assert_array_equal(result.indices, np.flatnonzero(group), err_msg=prompt)


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny AnyRef (eval mode). Tests must not modify it."""
    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def overfit_model():
    """A tiny AnyRef trained for a few seconds to answer two fixed prompts:
    "the two squares" -> "left square <obj> and right square <obj>." (two masks),
    "the purple moon" -> "there is no such object." (no mask)."""
    model = build_tiny(seed=1).train()
    image = scene(3)
    shape = image.shape[:2]
    two = ReferringSample(image, ["the two squares"], "segment",
                          ["left square ", OBJ, " and right square ", OBJ, "."],
                          np.stack([rect_mask(shape, 20, 60, 10, 40), rect_mask(shape, 30, 80, 60, 100)]))
    none = ReferringSample(image, ["the purple moon"], "segment", ["there is no such object."])
    batch = collate([prepare(s, model.builder) for s in (two, none)], model.ids.pad)
    fit(model, batch, 150, lr=2e-3, clip=1.0)  # clipped as the trainer does; without it the masks swing
    return model.eval(), image, two
