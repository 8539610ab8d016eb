"""The inference engine: ``set_image`` encodes an image once for many queries, ``segment_many`` answers several
references in one batch, and both give what one-at-a-time ``segment`` gives."""
import numpy as np
import pytest
import torch

from anyref import Audio, Box, ExampleImage
from tests.conftest import scene


class CallCounter:
    """Counts forward calls of a module."""

    def __init__(self, module):
        self.calls = 0
        self._handle = module.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        self._handle.remove()


def _same(a, b):
    assert a.text == b.text
    assert a.masks.shape == b.masks.shape
    # batched matmuls round differently; mask logits reach |60|, so float32 noise is ~1e-4 there
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3, rtol=1e-4)


def _refs():
    waveform = np.random.default_rng(3).standard_normal((1, 16000)).astype(np.float32) * 0.1
    return ["the red circle", Box(10, 12, 60, 70), ["the object like", ExampleImage(scene(4, 48))],
            Audio(waveform, sample_rate=16000)]


def test_set_image_encodes_once_and_answers_as_segment(overfit_model):
    model = overfit_model[0]
    image = scene(1)
    expected = [model.segment(image, ref, allow_untrained=True) for ref in _refs()]
    sam = CallCounter(model.sam.image_encoder)
    vision = CallCounter(model.llava.model.vision_tower)
    try:
        model.set_image(image)
        got = [model.segment(ref=ref, allow_untrained=True) for ref in _refs()]
        again = model.segment(image.copy(), "the red circle")  # the same pixels again: the cache is used
    finally:
        sam.remove()
        vision.remove()
        model.set_image(None)
    assert sam.calls == 1
    assert vision.calls == 2  # the image once, plus the one example-image reference
    for a, b in zip(expected, got):
        _same(a, b)
    _same(expected[0], again)


def test_segment_many_equals_one_at_a_time(overfit_model):
    model = overfit_model[0]
    image = scene(2)
    refs = ["the two squares", "the purple moon", Box(5, 5, 40, 50), "the two squares"]
    one_by_one = [model.segment(image, ref, allow_untrained=True) for ref in refs]
    sam = CallCounter(model.sam.image_encoder)
    try:
        together = model.segment_many(image, refs, allow_untrained=True)
    finally:
        sam.remove()
    assert sam.calls == 1 and len(together) == len(refs)
    for a, b in zip(one_by_one, together):
        _same(a, b)
    assert len(together[0].masks) == 2 and len(together[1].masks) == 0  # the overfit model's two answers


def test_engine_errors_say_what_to_do(tiny_model):
    tiny_model.set_image(None)
    with pytest.raises(ValueError, match="call set_image"):
        tiny_model.segment(ref="the dog")
    with pytest.raises(ValueError, match="no reference given"):
        tiny_model.segment(scene(0))
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_model.segment_many(scene(0), [])


def test_refocus_off_equals_lambda_zero(tiny_model):
    """``generate(refocus=False)`` (the benchmark's baseline) takes the raw <obj> state: what lambda 0 gives."""
    from anyref.batching import collate, prepare
    from anyref.samples import ReferringSample

    sample = ReferringSample(image=scene(3), references=["the red circle"], task="segment")
    batch = collate([prepare(sample, tiny_model.builder, with_answer=False)], tiny_model.ids.pad, "left")
    with torch.no_grad():
        off = tiny_model.generate(batch, max_new_tokens=12, refocus=False, stop_at_eos=False)[0]
        saved = tiny_model.refocus_lambda.clone()
        tiny_model.refocus_lambda.fill_(0.0)
        try:
            zero = tiny_model.generate(batch, max_new_tokens=12, stop_at_eos=False)[0]
        finally:
            tiny_model.refocus_lambda.copy_(saved)
    assert len(off.token_ids) <= 12
    assert off.token_ids == zero.token_ids
    torch.testing.assert_close(off.obj_states, zero.obj_states)


class InputLengths:
    """Records the sequence length of every language-model forward."""

    def __init__(self, module):
        self.lengths: list[int] = []
        self._handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.lengths.append(kwargs["inputs_embeds"].shape[1])

    def remove(self):
        self._handle.remove()


def test_shared_prefix_runs_once_and_changes_nothing(overfit_model):
    """Rows of one image share the prefix [bos] USER: <image>...: it runs once, as one row, and the answers (token
    ids, refocused <obj> states) equal those of running every row whole."""
    from anyref.batching import collate, prepare
    from anyref.samples import ReferringSample

    model, image, _ = overfit_model
    refs = [["the two squares"], ["the purple moon"], [Box(5, 5, 40, 50)], ["the two squares", Box(1, 2, 30, 40)]]
    samples = [ReferringSample(image=image, references=r, task="segment") for r in refs]
    batch = collate([prepare(s, model.builder, with_answer=False) for s in samples], model.ids.pad, "left")
    lm = InputLengths(model.llava.model.language_model)
    try:
        with torch.no_grad():
            whole = model.generate(batch, share_prefix=False)
            first = len(lm.lengths)
            shared = model.generate(batch)
    finally:
        lm.remove()
    assert lm.lengths[0] == batch.input_ids.shape[1]  # whole rows
    prefix = model.grid ** 2 + 1  # the image tokens and what precedes them
    assert lm.lengths[first] >= prefix and lm.lengths[first + 1] == batch.input_ids.shape[1] - lm.lengths[first]
    assert any(len(g.obj_states) == 2 for g in shared)
    for a, b in zip(whole, shared):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.obj_states, b.obj_states, atol=1e-4, rtol=1e-4)


def test_set_image_keeps_the_prefix_for_later_queries(overfit_model):
    model, image, _ = overfit_model
    expected = model.segment(image, "the two squares")
    lm = InputLengths(model.llava.model.language_model)
    try:
        model.set_image(image)
        model.segment(ref="the purple moon")
        calls = len(lm.lengths)
        again = model.segment(ref="the two squares")
    finally:
        lm.remove()
        model.set_image(None)
    assert max(lm.lengths[calls:]) < model.grid ** 2  # the second query never ran the image tokens again
    _same(expected, again)


def test_segment_batch_answers_pairs_on_several_images(overfit_model):
    model, image, _ = overfit_model
    other = scene(7)
    pairs = [(image, "the two squares"), (other, "the two squares"), (image, "the purple moon"), (other, "red")]
    one_by_one = [model.segment(i, r) for i, r in pairs]
    sam = CallCounter(model.sam.image_encoder)
    vision = CallCounter(model.llava.model.vision_tower)
    try:
        together = model.segment_batch([i for i, _ in pairs], [r for _, r in pairs])
    finally:
        sam.remove()
        vision.remove()
    assert sam.calls == 1 and vision.calls == 1  # one pass each, over the two distinct images
    for a, b in zip(one_by_one, together):
        _same(a, b)
    assert together[1].masks.shape[1:] == other.shape[:2]
    with pytest.raises(ValueError, match="same length"):
        model.segment_batch([image], ["a", "b"])
