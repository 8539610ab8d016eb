"""Refocusing computed from one attention row equals the eager-attention computation, in training and generation."""
import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.config import AnyRefConfig
from anyref.lora import enable_lora
from anyref.refocus import refocus
from tests.conftest import rect_mask, scene


def _batch(model):
    image = scene(1)
    shape = image.shape[:2]
    samples = [
        ReferringSample(image, ["the red circle"], "segment", ["the red circle ", OBJ, "."],
                        rect_mask(shape, 5, 30, 5, 30)[None]),
        ReferringSample(image, ["a much longer expression about two things"], "segment",
                        ["first ", OBJ, " then the second one ", OBJ, "."],
                        np.stack([rect_mask(shape, 5, 30, 5, 30), rect_mask(shape, 40, 60, 50, 90)])),
        ReferringSample(image, ["obj first"], "segment", [OBJ, " at once."], rect_mask(shape, 1, 9, 1, 9)[None]),
    ]
    return collate([prepare(s, model.builder) for s in samples], model.ids.pad)


def _eager_reference(model, batch, lam):
    """h_obj + lam * sum a_i h_i from the full eager attention matrix of the last layer."""
    lm = model.language_model
    lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attention = batch.attention_mask
            out = lm(inputs_embeds=model.input_embeddings(batch), attention_mask=attention,
                     position_ids=(attention.cumsum(-1) - 1).clamp_min(0), output_attentions=True)
    finally:
        lm.set_attn_implementation("sdpa")
    hidden, scores = out.last_hidden_state, out.attentions[-1]  # B x L x H, B x heads x L x L
    expected = []
    for row in range(batch.input_ids.shape[0]):
        start = int(batch.answer_starts[row])
        for p in range(batch.input_ids.shape[1] - 1):
            if batch.input_ids[row, p + 1] == model.ids.obj and batch.labels[row, p + 1] != -100:
                weights = scores[row, :, p, start:p + 1].mean(0)
                context = (weights / weights.sum())[:, None] * hidden[row, start:p + 1] if p >= start else 0
                expected.append(hidden[row, p] + lam * (context.sum(0) if p >= start else 0))
    return torch.stack(expected)


def test_refocus_equals_eager_attention():
    model = build_tiny(seed=2)
    model.refocus_lambda.fill_(0.7)
    batch = _batch(model)
    with torch.no_grad():
        _, _, rows, cols, states = model.answer_states(batch)
    expected = _eager_reference(model, batch, 0.7)
    assert len(states) == 4 == len(expected)
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-5)
    # the refocus term is not negligible: lambda 0 gives clearly different states
    model.refocus_lambda.fill_(0.0)
    with torch.no_grad():
        plain = model.answer_states(batch)[4]
    assert (plain - states).abs().max() > 1e-2


def test_refocus_uses_the_forwards_own_attention_under_lora_dropout():
    """In training, LoRA dropout on q_proj draws a new mask on every call: the attention row refocusing reads must
    be the one the forward itself used, so it equals an eager forward that draws the same masks (same seed)."""
    model = build_tiny(seed=2)
    enable_lora(model, dropout=0.5)
    with torch.no_grad():  # a fresh adapter's B is zero, which would hide the dropout altogether
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    model.refocus_lambda.fill_(0.7)
    model.train()
    batch = _batch(model)
    torch.manual_seed(5)
    with torch.no_grad():
        states = model.answer_states(batch)[4]
    torch.manual_seed(5)
    expected = _eager_reference(model, batch, 0.7)
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-5)
    torch.manual_seed(6)  # another draw gives other states: the dropout is really in play
    other = _eager_reference(model, batch, 0.7)
    assert (other - expected).abs().max() > 1e-3


def test_answer_grad_scales_only_the_gradient_into_answer_states():
    torch.manual_seed(0)
    h_obj, weights = torch.randn(2, 8), torch.rand(2, 5)
    answer_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    answers = torch.randn(2, 5, 8)

    def run(answer_grad):
        states = answers.clone().requires_grad_()
        out = refocus(h_obj, states, weights, answer_mask, 1.0, answer_grad)
        out.square().sum().backward()
        return out.detach(), states.grad

    paper, paper_grad = run(1.0)
    scaled, scaled_grad = run(0.1)
    detached, detached_grad = run(0.0)
    torch.testing.assert_close(scaled, paper)  # the forward value is the paper's
    torch.testing.assert_close(detached, paper)
    assert paper_grad.abs().max() > 1e-3
    torch.testing.assert_close(scaled_grad, 0.1 * paper_grad)
    assert detached_grad is None or detached_grad.abs().max() == 0


def test_answer_grad_must_be_a_fraction():
    with pytest.raises(ValueError, match="refocus_answer_grad"):
        AnyRefConfig(llava={"text_config": {}, "vision_config": {}}, refocus_answer_grad=1.5)


def test_generation_states_equal_teacher_forcing(overfit_model):
    """The KV-cache path (keys from the cache, one query row per step) gives the teacher-forced states."""
    model, image, two = overfit_model
    prompts = [ReferringSample(image, ["the two squares"]), ReferringSample(image, ["the purple moon and more"])]
    left = collate([prepare(s, model.builder, with_answer=False) for s in prompts], model.ids.pad, "left")
    generation = model.generate(left)[0]
    assert len(generation.obj_states) == 2, generation.text
    forced = collate([prepare(two, model.builder)], model.ids.pad)
    forced_ids = forced.input_ids[0, forced.answer_starts[0]:-1].tolist()  # answer without eos
    assert generation.token_ids == forced_ids
    with torch.no_grad():
        states = model.answer_states(forced)[4]
    torch.testing.assert_close(generation.obj_states, states, rtol=1e-4, atol=1e-4)
