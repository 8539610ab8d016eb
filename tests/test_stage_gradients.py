"""A stage trains only its own policy's groups: the run's other groups take no gradient while it runs, so a later
stage that freezes what an earlier one trained skips their backward pass (train.trainable.follow_stage)."""
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.synthref import SynthRef
from train.objectives import TrainingObjective
from train.trainable import apply_policies, follow_stage


def test_a_later_stage_that_freezes_the_encoders_gives_them_no_gradient():
    model = build_tiny(seed=0).train()
    objective = TrainingObjective(model)
    groups = apply_policies(model, {"encoders", "all_but_encoders"}, objective.trainer_heads())
    world = SynthRef.for_model(model.config)
    samples = [world.sample_at(0, index, {"text": 1.0, "audio1": 1.0}) for index in range(4)]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)

    follow_stage(groups, "all_but_encoders")
    objective(batch, pointer_weight=0.5).loss.backward()
    frozen = groups["vision"] + groups["sam_encoder"] + groups["audio_encoder"] + groups["warmup_heads"]
    assert frozen and all(p.grad is None for p in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["llm"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["mask_decoder"])

    follow_stage(groups, None)  # export reads every trained group's weights again
    assert all(p.requires_grad for params in groups.values() for p in params)
