"""Trainer checkpoints are unpickled by DeepSpeed with weights_only=False, so the trainer first reads what each
file would import (train/checkpointing.py check_pickled_globals) and refuses anything beyond DeepSpeed's state."""
import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler

from train.checkpointing import check_pickled_globals


class _Shouts:
    """A pickle payload that calls print when loaded."""

    def __reduce__(self):
        return print, ("this ran while loading",)


def test_deepspeed_state_passes_and_a_pickled_callable_is_refused_unexecuted(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2), "loss_scaler": LossScaler(1.0), "step": 3}, tmp_path / "optim_states.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp_path / "rng_rank0.pt")
    check_pickled_globals(tmp_path)  # the loss scaler is DeepSpeed's own state

    torch.save({"weights": torch.zeros(2), "extra": _Shouts()}, tmp_path / "model_states.pt")
    with pytest.raises(ValueError, match=r"model_states.pt would import \['builtins.print'\]"):
        check_pickled_globals(tmp_path)
    assert "this ran" not in capsys.readouterr().out  # read, not executed
