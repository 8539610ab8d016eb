"""The image read a second time, after the answer (``image_reread``): where the prompt holds it, that generation
reads it as training does, and that a finished model given it starts where it was."""
import numpy as np
import pytest
import torch

from anyref import OBJ, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.prompts import IGNORE_INDEX
from train.config import TrainConfig

from tests.conftest import fit, rect_mask, scene

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True, "obj_nowhere": True}
SHAPE = (96, 112)
ANSWER = ["the red circle", " ", OBJ, "."]


def _sample(image):
    return ReferringSample(image, ["the red circle"], "segment", ANSWER, rect_mask(SHAPE, 20, 60, 30, 70)[None])


def test_the_second_read_follows_the_answer_and_is_never_predicted():
    model = build_tiny(seed=0, config_overrides={**LOCATED, "image_reread": "added"})
    tokens = model.llm_grid ** 2
    taught = model.builder.encode("segment", ["the red circle"], answer=ANSWER)
    image = [i for i, token in enumerate(taught.input_ids) if token == model.ids.image]
    assert len(image) == 2 * tokens and image[tokens:] == list(range(len(taught.input_ids) - tokens,
                                                                       len(taught.input_ids)))
    assert taught.input_ids[-tokens - 1] == model.ids.eos  # right after the answer
    assert set(taught.labels[-tokens:]) == {IGNORE_INDEX}
    asked = model.builder.encode("segment", ["the red circle"])  # a prompt to generate from: the first read only
    assert asked.input_ids.count(model.ids.image) == tokens
    with pytest.raises(ValueError, match="needs obj_location_prompt"):
        build_tiny(seed=0, config_overrides={"image_reread": "added"})
    with pytest.raises(ValueError, match="image_reread must be one of"):
        build_tiny(seed=0, config_overrides={**LOCATED, "image_reread": "twice"})


@pytest.fixture(scope="module", params=["added", "alone"])
def taught(request):
    """A tiny model with the second read (its weights drawn, so that it counts) taught one answer, and the image."""
    model, image = build_tiny(seed=4, config_overrides={**LOCATED, "image_reread": request.param}), scene(5)
    with torch.no_grad():
        for parameter in model.image_reread.parameters():
            parameter.normal_(0.0, 0.05)
    fit(model, collate([prepare(_sample(image), model.builder)], model.ids.pad), 60, lr=3e-3, clip=1.0)
    return model.eval(), image


def test_generation_reads_the_image_again_as_training_does(taught):
    model, image = taught
    asked = collate([prepare(_sample(image), model.builder, with_answer=False)] * 2, model.ids.pad, "left")
    with torch.no_grad():
        shared, whole = model.generate(asked), model.generate(asked, share_prefix=False)
        forced = collate([prepare(_sample(image), model.builder)], model.ids.pad)
        hidden = model.answer_states(forced)[0]
        expected = model.image_token_states(forced.input_ids, hidden)[0]
    answer = model.builder.answer_ids(ANSWER)[:-1]  # without eos
    for generation in (*shared, *whole):
        assert generation.token_ids == answer  # the taught answer, so both passes read the same sequence
        torch.testing.assert_close(generation.image_states, expected, atol=1e-4, rtol=1e-4)


def test_a_finished_model_given_the_second_read_answers_as_before():
    model, image = build_tiny(seed=2, config_overrides=LOCATED).eval(), scene(6)
    with torch.no_grad():
        before = model(collate([prepare(_sample(image), model.builder)], model.ids.pad))
        answered = model.segment(image, "the red circle")
        model.add_image_reread()
        after = model(collate([prepare(_sample(image), model.builder)], model.ids.pad))
        again = model.segment(image, "the red circle")
    assert model.config.image_reread and not any(p.any() for p in model.image_reread.parameters())
    torch.testing.assert_close(after.obj_locations, before.obj_locations, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.ce, before.ce)
    assert again.text == answered.text and np.array_equal(again.masks, answered.masks)
    with pytest.raises(ValueError, match="already reads the image"):
        model.add_image_reread()


def test_training_configs_add_the_second_read_to_finished_models_only():
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    mixture = {"synthref": {"ratio": 1.0}}
    TrainConfig.from_dict({"model": {"init_from": "somewhere", "add_image_reread": "alone"}, "mixture": mixture,
                           "stages": stages})
    with pytest.raises(ValueError, match='"add_image_reread" gives an "init_from" model'):
        TrainConfig.from_dict({"model": {"tiny": {}, "add_image_reread": "added"}, "mixture": mixture,
                               "stages": stages})
