"""New LLM layers for a finished model (``add_language_layers``): it answers as before, the layers train, the
cache follows the new numbering, and the deeper model saves and loads."""
import numpy as np
import pytest
import torch

from anyref import OBJ, AnyRef, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.lora import enable_lora
from train.config import TrainConfig
from train.loop import lr_multipliers
from train.trainable import parameter_groups

from tests.conftest import fit, rect_mask, scene

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True, "obj_nowhere": True}
ANSWER = ["the red circle", " ", OBJ, "."]


def _batch(model, image):
    sample = ReferringSample(image, ["the red circle"], "segment", ANSWER, rect_mask((96, 112), 20, 60, 30, 70)[None])
    return collate([prepare(sample, model.builder)], model.ids.pad)


def test_a_model_given_new_layers_answers_as_before_and_they_train(tmp_path):
    model, image = build_tiny(seed=3, config_overrides=LOCATED).eval(), scene(2)
    last, depth = model.language_model.layers[-1], len(model.language_model.layers)
    with torch.no_grad():
        before = model(_batch(model, image))
        answered = model.segment(image, "the red circle")
        model.add_language_layers(2)
        after = model(_batch(model, image))
        again = model.segment(image, "the red circle")  # generation: the preallocated cache holds every layer
    layers = model.language_model.layers
    assert len(layers) == depth + 2 == model.llava.config.text_config.num_hidden_layers and layers[-1] is last
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(depth + 2))
    torch.testing.assert_close(after.obj_locations, before.obj_locations, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.ce, before.ce)
    assert again.text == answered.text and np.array_equal(again.masks, answered.masks)

    added = [p for layer in layers[depth - 1:-1] for p in layer.parameters()]
    start = [p.detach().clone() for p in added]
    fit(model.train(), _batch(model, image), 3, lr=1e-3)
    moved = [not torch.equal(p, q) for p, q in zip(start, added)]
    assert all(moved)  # after the output projections leave zero, every weight of the new layers gets a gradient

    model.eval().save_pretrained(tmp_path / "deeper")
    loaded = AnyRef.from_pretrained(tmp_path / "deeper").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch(loaded, image)).ce, model(_batch(model, image)).ce)


def test_bad_requests_are_refused():
    model = build_tiny(seed=0)
    for count in (0, -1, 1.5):
        with pytest.raises(ValueError, match="positive number of layers"):
            model.add_language_layers(count)
    enable_lora(model)
    with pytest.raises(ValueError, match="without LoRA"):
        model.add_language_layers(1)
    stages, mixture = [{"name": "s", "steps": 1, "trainable": "all"}], {"synthref": {"ratio": 1.0}}
    TrainConfig.from_dict({"model": {"init_from": "somewhere", "add_language_layers": 2}, "mixture": mixture,
                           "stages": stages})
    with pytest.raises(ValueError, match='"add_language_layers" deepens an "init_from" model'):
        TrainConfig.from_dict({"model": {"tiny": {}, "add_language_layers": 2}, "mixture": mixture, "stages": stages})


def test_the_trainer_gives_new_layers_a_group_and_a_learning_rate_of_their_own():
    model = build_tiny(seed=0)
    assert parameter_groups(model)["new_parts"] == []  # other runs keep their optimizer layout
    model.add_language_layers(1)
    groups = parameter_groups(model)
    new = list(model.new_parts[0].parameters())
    assert len(groups["new_parts"]) == len(new) and all(p is q for p, q in zip(groups["new_parts"], new))
    assert not any(p is q for p in groups["llm"] for q in new)
    config = TrainConfig.from_dict({
        "model": {"init_from": "somewhere", "add_language_layers": 1}, "mixture": {"synthref": {"ratio": 1.0}},
        "lr": 2e-4, "warmup_steps": 0, "min_lr_ratio": 0.05,
        "stages": [{"name": "s", "steps": 10, "trainable": "all", "new_layers_lr": 1e-3}]})
    llm, new_layers = lr_multipliers(config, ["llm", "new_parts"])
    assert llm(0) == pytest.approx(1.0) and new_layers(0) == pytest.approx(5.0)
    assert new_layers(9) / llm(9) == pytest.approx(5.0)  # the same cosine, five times higher
    with pytest.raises(ValueError, match="new_layers_lr must be > 0"):
        TrainConfig.from_dict({"model": {"init_from": "x"}, "mixture": {"synthref": {"ratio": 1.0}},
                               "stages": [{"name": "s", "steps": 1, "trainable": "all", "new_layers_lr": 0}]})
