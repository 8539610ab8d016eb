"""The trainer end to end (DeepSpeed ZeRO-2 on CPU, gloo): a run killed with SIGKILL resumes to exactly the weights
of an uninterrupted one, two ranks train and export, a later stage that freezes the encoders leaves them as they were,
a NaN loss stops the run with the last checkpoint intact, and a bf16 run merges LoRA from its fp32 masters."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anyref import AnyRef
from train.config import PRESETS_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "anyref" / "torch_extensions"))
    return env


def _config(tmp_path: Path, name: str, **changes) -> Path:
    """The smoke preset with ``changes`` (steps=12: the last stage's steps), written to tmp_path/name.json."""
    data = json.loads((PRESETS_DIR / "smoke.json").read_text())
    steps = changes.pop("steps", None)
    if steps is not None:
        data["stages"] = [*data["stages"][:-1], {**data["stages"][-1], "steps": steps}]
    data.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train.loop", "--config", str(config), "--out", str(out), "--threads", "1",
            "--no-progress", *extra]


def _train(config: Path, out: Path, *extra: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(config, out, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def _weights(out: Path) -> dict:
    return load_file(out / "model" / "model.safetensors")


def test_killed_run_resumes_exactly(tmp_path):
    config = _config(tmp_path, "run", steps=14, checkpoint_every=2, log_every=1)
    _train(config, tmp_path / "straight")

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(config, killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not marker.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-run, maybe mid-save: no clean-up code runs
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed; give it more steps"
    assert not (killed / "model").exists()
    stopped_at = marker.read_text()

    # --export at the checkpoint's own step trains nothing and writes the checkpoint's weights as a model
    exported = _train(config, killed, "--steps", stopped_at.split("-")[1], "--export")
    assert f"wrote {killed / f'model-{stopped_at}'}" in exported.stdout and not (killed / "model").exists()
    saved = torch.load(killed / "checkpoints" / stopped_at / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)["module"]  # DeepSpeed's own file, written by this test's run
    weights = load_file(killed / f"model-{stopped_at}" / "model.safetensors")
    assert weights and all(torch.equal(weights[k], saved["model." + k]) for k in weights if "model." + k in saved)
    assert sum("model." + k in saved for k in weights) > len(weights) // 2

    resumed = _train(config, killed)
    assert f"resumed from {killed / 'checkpoints' / stopped_at}" in resumed.stdout
    straight, again = _weights(tmp_path / "straight"), _weights(killed)
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(straight[key], again[key]), key
    # steps the killed run logged after its last checkpoint are logged again, not twice
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (tmp_path / "straight", killed)]
    assert [e["step"] for e in logs[1]] == [e["step"] for e in logs[0]]
    assert [e["loss"] for e in logs[1]] == [e["loss"] for e in logs[0]]
    model = AnyRef.from_pretrained(killed / "model")
    assert model.segment(np.zeros((64, 64, 3), np.uint8), "the red circle").masks.shape[1:] == (64, 64)

    # the warm-up stage's end is kept beside the two latest; a run branched from it ends where the straight one did
    warm_end = tmp_path / "straight" / "checkpoints" / "step-000002"
    assert warm_end.is_dir() and (tmp_path / "straight" / "checkpoints" / "step-000016").is_dir()
    branched = tmp_path / "branched"
    result = subprocess.run(_command(config, branched, "--branch-from", str(warm_end)), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "resumed from" in result.stdout, result.stderr[-3000:]
    again = _weights(branched)
    for key in straight:
        assert torch.equal(straight[key], again[key]), key
    # a branch whose config doubles the learning rate trains at the doubled rates, not at the checkpoint's
    faster = _config(tmp_path, "faster", steps=14, checkpoint_every=2, log_every=1, lr=2e-3)
    _train(faster, tmp_path / "faster", "--branch-from", str(warm_end))
    rates = [[e["lr"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if e["step"] > 2]
             for run in (tmp_path / "straight", tmp_path / "faster")]
    assert len(rates[1]) == 14 and rates[1] == pytest.approx([2 * r for r in rates[0]], rel=1e-12)
    entries = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert entries[-1]["step"] == 2 + 14 and '"lr"' in (killed / "log.jsonl").read_text()
    assert {e["stage"] for e in entries} == {"warm-up", "all"}
    assert "dense_sam" in entries[0] and "pointer" in entries[-1] and "group" in entries[-1]


def test_validation_leaves_the_trained_weights_as_they_are(tmp_path):
    # why it matters: a recipe timed with --eval-every 0 trains the model its validated run shipped
    config = _config(tmp_path, "run", steps=4, eval_every=1)
    _train(config, tmp_path / "validated")
    _train(config, tmp_path / "plain", "--eval-every", "0")
    assert len((tmp_path / "validated" / "val.jsonl").read_text().splitlines()) == 2 + 4
    assert not (tmp_path / "plain" / "val.jsonl").exists()
    validated, plain = _weights(tmp_path / "validated"), _weights(tmp_path / "plain")
    assert validated.keys() == plain.keys()
    for key in validated:
        assert torch.equal(validated[key], plain[key]), key


def test_two_ranks_zero2_over_gloo(tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29700 + os.getpid() % 200), "-m", "train.loop", "--preset", "smoke", "--out", str(out),
               "--threads", "1", "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    # ZeRO-2 partitions the optimizer state: one shard per rank, and each rank's RNG saved
    shards = sorted(p.name for p in checkpoint.glob("*optim_states.pt"))
    assert len(shards) == 2 and shards[0].startswith("zero_pp_rank_0") and shards[1].startswith("zero_pp_rank_1")
    assert {p.name for p in checkpoint.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    config = json.loads((out / "train_config.json").read_text())
    assert len((out / "log.jsonl").read_text().splitlines()) == sum(stage["steps"] for stage in config["stages"])
    model = AnyRef.from_pretrained(out / "model")
    assert model.segment(np.zeros((48, 64, 3), np.uint8), "the red circle").masks.shape[1:] == (48, 64)
    # resumed by one rank, its samples and optimizer shards would not line up: refused, saying how to resume
    single = subprocess.run(command[:1] + command[command.index("train.loop") - 1:], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 2 and "saved by 2 rank(s), this run has 1" in single.stderr
    assert "Traceback" not in single.stderr


def test_a_later_stage_that_freezes_the_encoders_leaves_them_as_the_earlier_stage_wrote_them(tmp_path):
    # why it matters: such a stage gives the encoders no gradient (ZeRO-2 steps them on zeros, at lr 0), which must
    # hold in a run resumed inside it too, and the export must still write every trained part
    config = _config(tmp_path, "frozen", eval_every=0, checkpoint_every=2,
                     stages=[{"name": "warm-up", "steps": 2, "trainable": "encoders_promptable",
                              "objective": "synthref_dense", "sam_prompt_weight": 1.0},
                             {"name": "frozen", "steps": 4, "trainable": "all_but_encoders", "pointer_weight": 0.5}])
    out = tmp_path / "run"
    _train(config, out, "--steps", "2", "--export")  # the warm-up's end
    _train(config, out, "--steps", "4")  # two frozen steps, then resumed inside the frozen stage
    _train(config, out)
    warmed, final = load_file(out / "model-step-000002" / "model.safetensors"), _weights(out)
    encoders = [k for k in final if k.startswith(("llava.model.vision_tower.", "sam.image_encoder.", "audio_encoder."))]
    assert encoders and all(torch.equal(warmed[k], final[k]) for k in encoders)
    language = [k for k in final if k.startswith("llava.model.language_model.")]
    assert language and not all(torch.equal(warmed[k], final[k]) for k in language)


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path):
    # an absurd learning rate sends the weights to inf after the first update, so the second loss is not finite
    config = _config(tmp_path, "diverge", steps=6, checkpoint_every=1, warmup_steps=1, lr=1e30)
    out = tmp_path / "diverge"
    result = _train(config, out, expect=3)
    assert "non-finite loss at step" in result.stderr and "last good checkpoint: step-" in result.stderr
    tag = (out / "checkpoints" / "latest").read_text()
    assert (out / "checkpoints" / tag / "rng_rank0.pt").is_file() and not (out / "model").exists()
    # the checkpoint is loadable: resuming reaches the same non-finite step again rather than crashing on load
    again = _train(config, out, expect=3)
    assert f"resumed from {out / 'checkpoints' / tag}" in again.stdout


def test_a_bf16_run_merges_lora_from_its_fp32_masters(tmp_path):
    """DeepSpeed trains a bf16 run's weights as rounded copies of fp32 masters; export merges LoRA from the masters,
    so the exported q_proj is the bf16 rounding of (base + scale * B @ A) computed in float32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    config = _config(tmp_path, "bf16", precision="bf16", lora={"r": 8, "alpha": 16, "dropout": 0.05}, eval_every=0,
                     stages=[{"name": "paper", "steps": 3, "trainable": "paper"}])
    _train(config, tmp_path / "run")
    masters = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "run" / "checkpoints"), tag="step-000003")
    layer = "model.llava.model.language_model.base_model.model.layers.0.self_attn.q_proj."
    lora_b = masters[layer + "lora_B.default.weight"]
    assert lora_b.abs().max() > 0  # trained: B starts at zero
    merged = masters[layer + "base_layer.weight"] + (16 / 8) * lora_b @ masters[layer + "lora_A.default.weight"]
    exported = _weights(tmp_path / "run")["llava.model.language_model.layers.0.self_attn.q_proj.weight"]
    assert exported.dtype == torch.bfloat16 and torch.equal(exported, merged.to(torch.bfloat16))
