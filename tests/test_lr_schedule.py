"""The trainer's learning-rate schedule after a checkpoint is loaded: it follows the loading run's config, so a run
branched from another with a different ``lr`` trains at its own rates, and a resumed run at exactly the ones it
would have had."""
import pytest
import torch

from train.config import load_config
from train.loop import follow_config_schedule, lr_multipliers


def _scheduler(config, lr: float):
    """A real AdamW with two parameter groups under the trainer's LambdaLR (config's stages; base rate ``lr``)."""
    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW([{"params": [weights[0]]}, {"params": [weights[1]]}], lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multipliers(config, ["llm", "vision"]))


def _saved_at(config, lr: float, steps: int) -> tuple[dict, dict]:
    optimizer, scheduler = _scheduler(config, lr)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer.state_dict(), scheduler.state_dict()


@pytest.mark.parametrize("steps", [50, 2100])  # in the warm-up stage, and in the joint stage's own warm-up
def test_a_branch_with_another_lr_follows_its_own_config(steps):
    config = load_config("synthref-tiny")
    optimizer_state, scheduler_state = _saved_at(config, 1e-3, steps)
    optimizer, scheduler = _scheduler(config, 2e-3)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    assert scheduler.base_lrs == [1e-3, 1e-3]  # what loading alone leaves: the saving run's rates
    follow_config_schedule(scheduler, 2e-3, steps)
    factors = [factor(steps) for factor in scheduler.lr_lambdas]
    assert scheduler.base_lrs == [2e-3, 2e-3]
    assert [group["lr"] for group in optimizer.param_groups] == [2e-3 * f for f in factors]
    assert scheduler.get_last_lr() == [2e-3 * f for f in factors] and max(factors) > 0
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [2e-3 * factor(steps + 1) for factor in scheduler.lr_lambdas]


def test_a_resumed_run_keeps_exactly_its_rates():
    config = load_config("synthref-tiny")
    optimizer_state, scheduler_state = _saved_at(config, 1e-3, 2100)
    straight_optimizer, straight = _scheduler(config, 1e-3)
    straight_optimizer.load_state_dict(optimizer_state)
    straight.load_state_dict(scheduler_state)
    optimizer, scheduler = _scheduler(config, 1e-3)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    follow_config_schedule(scheduler, 1e-3, 2100)
    assert scheduler.get_last_lr() == straight.get_last_lr()
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in straight_optimizer.param_groups]


def test_a_step_the_scheduler_missed_is_caught_up():
    """DeepSpeed leaves the scheduler alone on a step it skips (fp16 overflow): the loop's step decides."""
    config = load_config("synthref-tiny")
    optimizer, scheduler = _scheduler(config, 1e-3)
    for _ in range(2099):
        optimizer.step()
        scheduler.step()
    assert scheduler.last_epoch == 2099  # one step short of the loop's 2,100, across the stage boundary at 2,000
    follow_config_schedule(scheduler, 1e-3, 2100)
    assert scheduler.last_epoch == 2100
    assert scheduler.get_last_lr() == [1e-3 * factor(2100) for factor in scheduler.lr_lambdas]
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [1e-3 * factor(2101) for factor in scheduler.lr_lambdas]
