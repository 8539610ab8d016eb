"""The two checks of text answers, each alone: ``verify_answers`` (the model's own "verify" question) and
``check_by_group_head`` (the text check head, or the group head, taking the mask as the prompt's one member). Each
drops exactly the masks below its threshold, writes their ``<obj>`` as ``<rejected>``, and leaves prompts with
other references alone."""
import numpy as np
import pytest

from anyref import AnyRef
from anyref.outputs import REJECTED
from anyref.synthref import SynthRef

# check -> (its setter, the probability it compares with its threshold for (model, sample, mask))
CHECKS = {
    "verify": ("set_verify_answers", lambda model, s, mask: model.verify(s.image, mask, s.references)),
    "group head": ("set_check_by_group_head",
                   lambda model, s, mask: float(model.check_scores(s.image, s.references, mask[None])[0])),
}


@pytest.fixture(scope="module")
def shipped():
    model = AnyRef.from_pretrained("synthref-tiny")
    for setter, _ in CHECKS.values():
        getattr(model, setter)(None)  # each test turns on the one check it tests
    model.set_rank_text_answers(None)  # the checks judge the model's own answers, not ranked ones
    return model


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_check_drops_exactly_the_masks_below_its_threshold(shipped, check):
    setter, probability_of = CHECKS[check]
    set_threshold = getattr(shipped, setter)
    sample = next(s for s in SynthRef().split("val", "text", 10) if s.meta["kind"] != "relational")
    try:
        plain = shipped.segment(sample.image, sample.references)
        assert plain.found
        probability = probability_of(shipped, sample, plain.masks[0])
        assert 0.0 < probability < 1.0
        set_threshold((probability + 1.0) / 2)  # just above it
        rejected = shipped.segment(sample.image, sample.references)
        set_threshold(probability / 2)  # below it
        kept = shipped.segment(sample.image, sample.references)
        [many] = shipped.segment_many(sample.image, [sample.references])
        [batched] = shipped.segment_batch([sample.image], [sample.references])
        # several text prompts on one image: their masks are checked in one batch
        both = shipped.segment_many(sample.image, [sample.references, sample.references])
    finally:
        set_threshold(None)
    assert not rejected.found and REJECTED in rejected.text and "check" in rejected.note
    for result in (kept, many, batched, *both):
        np.testing.assert_array_equal(result.masks, plain.masks)
    assert kept.text == plain.text


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_check_leaves_prompts_with_other_references_alone(shipped, check):
    set_threshold = getattr(shipped, CHECKS[check][0])
    sample = SynthRef().split("val", "example_masked", 1)[0]
    try:
        plain = shipped.segment(sample.image, sample.references)
        set_threshold(0.999)
        checked = shipped.segment(sample.image, sample.references)
    finally:
        set_threshold(None)
    assert plain.found
    np.testing.assert_array_equal(checked.masks, plain.masks)
