"""The trainer end to end (DeepSpeed ZeRO-2 on CPU, gloo): a smoke run exports a loadable model, and a stopped run
resumes to exactly the weights of an uninterrupted one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anyref import AnyRef

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "anyref" / "torch_extensions"))
    command = [sys.executable, "-m", "train.loop", "--preset", "smoke", "--out", str(out), "--threads", "1",
               "--no-progress", *extra]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_stopped_run_resumes_exactly(tmp_path):
    _train(tmp_path / "straight")
    _train(tmp_path / "resumed", "--steps", "2")  # stops after the step-2 checkpoint, as a killed run would
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-000002"
    assert not (tmp_path / "resumed" / "model").exists()
    second = _train(tmp_path / "resumed")
    assert "resumed from" in second.stdout
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    model = AnyRef.from_pretrained(tmp_path / "straight" / "model")
    assert model.segment(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy(), "the red circle").masks.shape[1:] == (64, 64)
    log = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"lr"' in log[0]
