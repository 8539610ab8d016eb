"""``example_self_mask``: an example image given without a mask is masked first by the model's own answer on it
(the example as its own reference), then read as an example with that mask; an example with a mask is untouched."""
import numpy as np
import pytest

from anyref import AnyRef, ExampleImage
from anyref.synthref import SynthRef


@pytest.fixture(scope="module")
def model_and_sample():
    model = AnyRef.from_pretrained("synthref-tiny")
    return model, SynthRef().split("val", "example", 1)[0]


def test_an_unmasked_example_is_read_with_the_models_own_mask_of_it(model_and_sample):
    model, sample = model_and_sample
    example = sample.references[0]
    assert example.mask is None
    model.set_example_self_mask(False)
    try:
        own = model.segment(example.image, ExampleImage(example.image)).masks.any(0)
        plain = model.segment(sample.image, example)
        by_hand = model.segment(sample.image, ExampleImage(example.image, mask=own))
        model.set_example_self_mask(True)
        self_masked = model.segment(sample.image, example)
        [in_a_list] = model.segment_many(sample.image, [[example]])
    finally:
        model.set_example_self_mask(True)  # the shipped setting
    assert own.any() and not own.all()
    np.testing.assert_array_equal(self_masked.logits, by_hand.logits)
    np.testing.assert_array_equal(in_a_list.logits, by_hand.logits)
    assert not np.array_equal(self_masked.logits, plain.logits)  # the setting changed what the model read


def test_a_masked_example_is_left_as_given(model_and_sample):
    model, sample = model_and_sample
    example = sample.references[0]
    mask = np.zeros(example.image.shape[:2], dtype=bool)
    mask[10:40, 20:60] = True
    given = ExampleImage(example.image, mask=mask)
    model.set_example_self_mask(False)
    try:
        off = model.segment(sample.image, given)
        model.set_example_self_mask(True)
        on = model.segment(sample.image, given)
    finally:
        model.set_example_self_mask(True)
    np.testing.assert_array_equal(on.logits, off.logits)
