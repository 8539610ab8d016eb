"""The training loop, top to bottom: config -> model -> DeepSpeed ZeRO-2 engine -> steps -> checkpoints -> export.

Launch:
    anyref train --preset synthref-tiny --out runs/synthref-tiny          # one process (CPU or one GPU)
    torchrun --nproc_per_node 2 -m train.loop --preset synthref-tiny --out runs/x      # 2 ranks (gloo on CPU)
    deepspeed --num_gpus 8 --module train.loop --config cfg.json --out runs/full       # one machine, 8 GPUs
    deepspeed --hostfile hostfile --module train.loop --config cfg.json --out runs/full  # several machines
A run resumes from OUT/checkpoints/latest when one exists; at the end the LoRA is merged and OUT/model is written,
a directory ``AnyRef.from_pretrained`` loads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from anyref.batching import collate, prepare
from anyref.lora import enable_lora, merge_lora
from encoders.checkpoints import write_text_atomically
from train.checkpointing import checkpoint_tag, latest_tag, load_latest, save_checkpoint, truncate_logs
from train.config import TrainConfig, config_changes, load_config, preset_lines
from train.data import Mixture
from train.model_factory import build_model
from train.objectives import TrainingObjective, dense_targets
from train.trainable import apply_policies, describe_groups, follow_stage
from train.validation import validate

__all__ = ["main", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


def _setup_distributed() -> tuple[int, int]:
    """Defaults for a plain single-process start (DeepSpeed otherwise looks for MPI), then the process group."""
    import deepspeed

    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if not torch.cuda.is_available():
        return "fp32"
    # without the emulation flag torch says yes on any GPU that can hold a bf16 tensor (a T4 too), where bf16 is
    # emulated and slow; the paper's older GPUs train in fp16 with dynamic loss scaling
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def deepspeed_config(config: TrainConfig, world_size: int) -> dict:
    """The JSON file's ZeRO settings plus what the training config decides (batch, optimiser, precision)."""
    path = Path(config.deepspeed_config)
    path = path if path.is_file() else Path(__file__).parent / path
    ds = json.loads(path.read_text())
    ds.update({
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accumulation,
        "train_batch_size": config.micro_batch * config.grad_accumulation * world_size,
        "gradient_clipping": config.grad_clip,
        "optimizer": {"type": "AdamW", "params": {"lr": config.lr, "weight_decay": config.weight_decay,
                                                  "betas": [0.9, 0.95], "torch_adam": True}},
    })
    precision = _precision(config)
    if precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}  # dynamic loss scaling
    elif precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds


def lr_multipliers(config: TrainConfig, group_names: list[str]):
    """One LambdaLR function per parameter group: within each stage, warmup then cosine to min_lr_ratio, scaled to
    the stage's lr (parts new in this run: the stage's new_layers_lr, if set); 0 while the current stage does not train
    that group."""
    from train.trainable import POLICIES

    def schedule(name: str):
        def factor(step: int) -> float:
            stage, within = config.stage_position(step)
            if name not in POLICIES[stage.trainable]:
                return 0.0
            own = name == "new_parts" and stage.new_layers_lr is not None
            peak = stage.new_layers_lr if own else config.stage_lr(stage)
            scale = peak / config.lr
            warmup = config.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
            if within < warmup:
                return scale * (within + 1) / warmup
            progress = (within - warmup) / max(1, stage.steps - warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            return scale * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)
        return factor

    return [schedule(name) for name in group_names]


def follow_config_schedule(scheduler, base_lr: float, step: int) -> None:
    """Set the scheduler to this run's config at optimiser step ``step``. Two things move it off: a checkpoint
    brings back the base and current rates of the run that saved it (so a run branched from another with a
    different ``lr`` would train at the other's rates without a word), and DeepSpeed does not step the scheduler
    on a step it skips (an fp16 overflow, a non-finite gradient), which would shift warm-up, cosine and the stage
    boundaries behind the loop's own step. For a run on schedule this rewrites the same values (the expression
    LambdaLR computes), so a resumed run stays bit-identical."""
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(step)
    state = scheduler.state_dict()  # LambdaLR's own record, as get_last_lr() and its next step read it
    state.update(base_lrs=[base_lr] * len(scheduler.base_lrs), last_epoch=step,
                 _last_lr=[group["lr"] for group in scheduler.optimizer.param_groups])
    scheduler.load_state_dict(state)


def _optimizer_groups(groups: dict, weight_decay: float) -> tuple[list[dict], list[str]]:
    """DeepSpeed parameter groups: per trainable group, decayed matrices and undecayed vectors (norms, biases)."""
    result, names = [], []
    for name, params in groups.items():
        for decay, members in ((weight_decay, [p for p in params if p.ndim >= 2]),
                               (0.0, [p for p in params if p.ndim < 2])):
            if members:
                result.append({"params": members, "weight_decay": decay})
                names.append(name)
    return result, names


def _refuse_a_changed_config(out: Path, config: TrainConfig) -> None:
    """A run is resumed with the config it started with: a preset edited since (or one it extends), another seed
    or another --init-from would silently change the rest of the run."""
    saved = out / "train_config.json"
    if latest_tag(out / "checkpoints") is None or not saved.is_file():
        return
    try:
        changes = config_changes(json.loads(saved.read_text()), config)
    except json.JSONDecodeError as error:
        changes = [f"(its train_config.json is not valid JSON: {error})"]
    if changes:
        shown = ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise SystemExit(f"anyref train: {out} holds a run started with another config (it differs in {shown}). "
                         f"Resume it with the config it started with (--config {saved}), or give a new --out.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train AnyRef (LoRA + DeepSpeed ZeRO-2).")
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a preset in train/presets (--list-presets shows them)")
    source.add_argument("--config", help="a training config JSON file (it may extend a preset: docs/training.md)")
    source.add_argument("--list-presets", action="store_true",
                        help="list the presets, each under the one it extends, and train nothing")
    parser.add_argument("--out", help="run folder: checkpoints, log.jsonl, model/ (required for training)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (\"extends\" and the overrides below applied) as JSON, and "
                             "train nothing")
    parser.add_argument("--steps", type=int, help="stop after this many optimiser steps (the schedule is unchanged)")
    parser.add_argument("--refocus-lambda", type=float, help="override the refocusing lambda (ablations)")
    parser.add_argument("--branch-from", metavar="CHECKPOINT",
                        help="start from another run's checkpoint folder (e.g. its warm-up stage's end, "
                             "OTHER/checkpoints/step-002000) instead of from scratch; the config must match its model")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="for a config that continues a finished model (\"init_from\"): start from this AnyRef "
                             "directory instead, e.g. runs/synthref-tiny/model to rebuild the shipped model's chain")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--eval-every", type=int, metavar="N", help="override the config's eval_every (0: no "
                        "validation); validation only logs val.jsonl, the weights trained are the same")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", action="store_true",
                        help="also write a model where a --steps run stops, as OUT/model-step-NNNNNN (to evaluate a "
                             "checkpoint: --steps at its step resumes it and trains nothing); a finished run always "
                             "writes OUT/model")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher


def main(argv: list[str] | None = None) -> int:
    """``python -m train.loop`` (what the deepspeed and torchrun launchers start): ``anyref train``'s arguments; a
    bad config, data or checkpoint ends with its message, as ``anyref train`` ends."""
    try:
        return run(parse_args(argv))
    except (ValueError, FileNotFoundError) as error:
        print(f"anyref train: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say (the parsed command line)."""
    if args.list_presets:
        print("\n".join(preset_lines()))
        return 0
    config = load_config(args.preset, args.config, init_from=args.init_from, refocus_lambda=args.refocus_lambda,
                         seed=args.seed, eval_every=args.eval_every)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if not args.out:
        raise SystemExit("anyref train: --out RUN_FOLDER is required (where checkpoints, logs and the model go)")
    _refuse_a_changed_config(Path(args.out), config)
    mixture = Mixture(config.mixture, config.seed)  # a wrong dataset path fails now: before a 7B model loads
    import deepspeed
    from tqdm import tqdm

    threads = args.threads or config.num_threads
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # tiny models drive some activations to denormals, which are slow on CPU
    rank, world = _setup_distributed()
    out = Path(args.out)
    checkpoints = out / "checkpoints"
    if rank == 0:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out / "train_config.json", json.dumps(config.to_dict(), indent=2))

    torch.manual_seed(config.seed)
    model = build_model(config)
    if config.lora:
        enable_lora(model, **config.lora)
    if config.refocus_lambda is not None:
        model.refocus_lambda.data.fill_(config.refocus_lambda)
    objective = TrainingObjective(model, cell_attributes=any(s.cell_attribute_weight for s in config.stages))
    heads = objective.trainer_heads()
    groups = apply_policies(model, {stage.trainable for stage in config.stages}, heads)
    if rank == 0:
        print(describe_groups(model, heads), flush=True)
    param_groups, group_names = _optimizer_groups(groups, config.weight_decay)
    engine, _, _, scheduler = deepspeed.initialize(
        model=objective.train(), model_parameters=param_groups, config=deepspeed_config(config, world),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multipliers(config, group_names)),
    )
    if args.branch_from and latest_tag(checkpoints) is None:
        branch(Path(args.branch_from), checkpoints, rank)
    step = load_latest(engine, checkpoints)
    follow_config_schedule(scheduler, config.lr, step)
    if rank == 0 and step:
        print(f"resumed from {checkpoints / latest_tag(checkpoints)} at step {step}", flush=True)
    if config.refocus_lambda is not None:  # again: a loaded checkpoint brings the lambda it was saved with
        model.refocus_lambda.data.fill_(config.refocus_lambda)

    builder = model.builder
    last_step = min(config.total_steps, args.steps or config.total_steps)
    dtype = next(p for p in engine.module.parameters() if p.is_floating_point()).dtype
    grids = (model.grid, model.config.sam.embedding_size)
    ends = [sum(s.steps for s in config.stages[:i + 1]) for i in range(len(config.stages))]
    stage_ends = frozenset(checkpoint_tag(e) for e in ends[:-1])  # kept: later runs can branch from them
    if rank == 0:
        truncate_logs([out / "log.jsonl", out / "val.jsonl"], step)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=last_step, initial=step, disable=rank != 0 or args.no_progress, desc="train", unit="step")
    window: dict[str, float] = {}
    started = time.time()
    try:
        following = None
        while step < last_step:
            stage = config.stage_at(step)
            if stage is not following:
                follow_stage(groups, stage.trainable)
                following = stage
            for micro in range(config.grad_accumulation):
                first = ((step * config.grad_accumulation + micro) * world + rank) * config.micro_batch
                samples = [mixture.sample(first + j, stage.mixture) for j in range(config.micro_batch)]
                batch = collate([prepare(s, builder) for s in samples], model.ids.pad).to(engine.device, dtype)
                dense = None
                if stage.objective == "synthref_dense":
                    dense = dense_targets(samples, *grids).to(engine.device)
                elif stage.cell_attribute_weight:  # targets on the grid of image tokens the LLM reads
                    dense = dense_targets(samples, model.llm_grid, grids[1]).to(engine.device)
                output = engine(batch, dense=dense, objective=stage.objective, pointer_weight=stage.pointer_weight,
                                sam_prompt_weight=stage.sam_prompt_weight, refine_weight=stage.refine_weight,
                                box_prior_weight=stage.box_prior_weight,
                                cell_attribute_weight=stage.cell_attribute_weight)
                _check_finite(output, step, checkpoints)
                engine.backward(output.loss)
                engine.step()
                terms = {"loss": output.loss, "ce": output.ce, "bce": output.bce, "dice": output.dice, **output.terms}
                for key, value in terms.items():
                    window[key] = window.get(key, 0.0) + float(value.detach()) / config.grad_accumulation
            step += 1
            if scheduler.last_epoch != step:  # DeepSpeed skipped the step and its scheduler (see the function)
                follow_config_schedule(scheduler, config.lr, step)
            window["steps"] = window.get("steps", 0) + 1
            bar.update(1)
            if rank == 0 and (step % config.log_every == 0 or step == last_step):
                entry = {k: v / window["steps"] for k, v in window.items() if k != "steps"}
                entry.update(step=step, stage=stage.name, lr=max(scheduler.get_last_lr()),
                             seconds=round(time.time() - started, 1))
                log.write(json.dumps(entry) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{entry['loss']:.3f}", ce=f"{entry['ce']:.3f}", bce=f"{entry['bce']:.3f}")
                window = {}
            if step % config.checkpoint_every == 0 or step == last_step or step in ends:
                save_checkpoint(engine, checkpoints, step, keep_tags=stage_ends)
            if config.eval_every and (step % config.eval_every == 0 or step == last_step):
                validate(model, config, step, out / "val.jsonl", rank)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3
    finally:
        follow_stage(groups, None)
        bar.close()
        if log:
            log.close()
    if step == config.total_steps or args.export:
        masters = fp32_masters(model)  # every rank: ZeRO gathers each master from its partitions
        if rank == 0:
            target = out / ("model" if step == config.total_steps else f"model-{checkpoint_tag(step)}")
            export(model, target, trained_kinds=mixture.reference_kinds([stage.mixture for stage in config.stages]),
                   masters=masters)
            print(f"wrote {target} (load it with AnyRef.from_pretrained)", flush=True)
    return 0


def branch(source: Path, checkpoints: Path, rank: int) -> None:
    """Copy another run's checkpoint folder into this run's checkpoints as its latest (rank 0; the others wait)."""
    if not (source / f"rng_rank{rank}.pt").is_file():
        raise FileNotFoundError(f"--branch-from {source} is not a trainer checkpoint folder with rng_rank{rank}.pt "
                                "(one of OTHER/checkpoints/step-*)")
    target = checkpoints / source.name
    if rank == 0 and not target.is_dir():  # a whole copy from a run killed before "latest" is used as it is
        staging = checkpoints / f".branch-{source.name}"  # copied aside and renamed: a killed copy leaves no half
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        os.replace(staging, target)
    if rank == 0:
        write_text_atomically(checkpoints / "latest", source.name)
    if dist.is_initialized():
        dist.barrier()


def _check_finite(output, step: int, checkpoints: Path) -> None:
    """Stop every rank on a NaN/inf loss, before it reaches the weights."""
    # on the loss's device: NCCL, the process group on GPUs, reduces CUDA tensors only
    bad = torch.tensor([0.0 if torch.isfinite(output.loss).item() else 1.0], device=output.loss.device)
    if dist.is_initialized():
        dist.all_reduce(bad)
    if bad.item():
        last = latest_tag(checkpoints) or "none yet"
        raise TrainingDiverged(
            f"non-finite loss at step {step} (ce={float(output.ce):.4g}, bce={float(output.bce):.4g}, "
            f"dice={float(output.dice):.4g}); stopped before updating the weights; last good checkpoint: {last}. "
            "Lower the learning rate or check the data, then resume.")


def fp32_masters(model) -> dict:
    """parameter -> its float32 master weights, for a model DeepSpeed trains in bf16 or fp16 (there the module's
    weights are rounded copies and the optimizer keeps the masters); {} for a float32 model. Call it on every rank."""
    if all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad):
        return {}
    from deepspeed.utils import safe_get_full_fp32_param

    return {p: safe_get_full_fp32_param(p) for p in model.parameters() if p.requires_grad}


def export(model, directory: Path, trained_kinds: set[str], masters: dict | None = None) -> None:
    """Merge LoRA into the base weights and write one directory AnyRef.from_pretrained loads; its config records
    the lambda the run used and no longer marks the reference kinds it trained as untrained. masters
    (fp32_masters): LoRA is merged in float32 from the trained weights' masters, so that a small update is not lost
    to bf16 rounding before it is added, and the merged model is saved in the dtype it trained in."""
    from anyref.lora import lora_enabled

    dtypes = {}
    if masters:  # parameters only (buffers keep their dtype), and the same objects, so the masters still match them
        for param in model.parameters():
            dtypes[param], param.data = param.dtype, param.data.float()
            if masters.get(param) is not None:
                param.data.copy_(masters[param].reshape(param.shape))
    if lora_enabled(model):
        merge_lora(model)  # merged into the base layers' own parameters; the adapters are dropped
    for param in model.parameters():
        if param in dtypes:
            param.data = param.data.to(dtypes[param])
    model.config = model.config.replace(
        refocus_lambda=float(model.refocus_lambda),
        untrained_references=tuple(k for k in model.config.untrained_references if k not in trained_kinds))
    model.eval().save_pretrained(directory)


if __name__ == "__main__":
    sys.exit(main())
