"""Data-parallel training needs every rank's backward to produce gradients for the same parameters in the same
order (DeepSpeed ZeRO-2 reduces them in arrival order). The training forward must therefore build the same graph
whatever a batch holds: text only, no target at all, boxes, example images, one or two sounds, mask references and
mask-group candidates."""
import pytest

from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.synthref import SynthRef
from train.objectives import TrainingObjective


def _gradient_order(model, world, tasks: list[str], module=None, **kwargs) -> list[str]:
    """Names of the parameters of ``module`` (default: the model) in the order backward reaches them, for a
    batch of the given tasks; kwargs go to the module's forward."""
    module = module or model
    samples = [world.sample_at(0, index, {task: 1}) for index, task in enumerate(tasks)]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    names = {id(p): n for n, p in module.named_parameters()}
    arrived: list[str] = []
    hooks = [p.register_post_accumulate_grad_hook(lambda p: arrived.append(names[id(p)]))
             for p in module.parameters()]
    try:
        module.zero_grad()
        module(batch, **kwargs).loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return arrived


@pytest.mark.parametrize("overrides", [{}, {"group_head_attends_prompt": True},
                                       {"image_token_merge": 2, "image_positions": True},
                                       {"image_token_merge": 2, "obj_location_prompt": True},
                                       {"image_token_merge": 2, "group_head_maps_image": True}],
                         ids=["ras-head", "prompt-head", "positions", "location-prompt", "map-head"])
def test_every_batch_builds_the_same_graph(overrides):
    world = SynthRef()
    model = build_tiny(corpus=world.vocabulary(), seed=0, config_overrides=overrides).train()
    for p in model.parameters():
        p.requires_grad_(True)
    compositions = [["text", "no_target"], ["no_target", "no_target"], ["audio2", "box"], ["example", "text"],
                    ["example_masked", "audio1"], ["group", "text"], ["mask_caption", "group"]]
    orders = [_gradient_order(model, world, tasks) for tasks in compositions]
    for tasks, order in zip(compositions[1:], orders[1:]):
        assert order == orders[0], f"{tasks} reaches the parameters in another order than {compositions[0]}"
    used = set(orders[0])
    for branch in ("audio_projection.weight", "audio_encoder.", "mask_decoder.", "multi_modal_projector.",
                   "mask_projector.", "group_head.") + (("obj_locator.",) if model.obj_locator is not None else ()):
        assert any(branch in name for name in used), branch


def test_box_prompts_keep_every_batch_on_the_same_graph():
    """The trainer's objective with SAM's box-prompted loss: a batch without any target mask reaches the prompt
    encoder's box rows and the decoder in the same order as one with masks."""
    world = SynthRef()
    model = build_tiny(corpus=world.vocabulary(), seed=0).train()
    objective = TrainingObjective(model)
    for p in objective.parameters():
        p.requires_grad_(True)
    compositions = [["text", "example"], ["no_target", "no_target"], ["audio2", "group"]]
    orders = [_gradient_order(model, world, tasks, objective, pointer_weight=0.5, sam_prompt_weight=0.5)
              for tasks in compositions]
    for tasks, order in zip(compositions[1:], orders[1:]):
        assert order == orders[0], f"{tasks} reaches the parameters in another order than {compositions[0]}"
    assert "model.sam.prompt_encoder.point_embeddings.2.weight" in orders[0]
