"""Does a model know when the referred object is absent, or only fail to say so? A probe of the decision to answer
without a mask.

    python -m eval.no_target_probe --model synthref-tiny --n 100 --split val --out probe.json

The probe reads, on SynthRef no_target prompts (nothing matches) and text prompts (an object matches), the
probability that decides "absent":
- for a model with a nowhere place (``obj_nowhere``), the share of the answer's first ``<obj>`` map on that place
  (the ``<obj>`` gets no mask when it is over 0.5; an answer with no ``<obj>`` counts 1.0);
- otherwise the refusal's first token: greedy decoding refuses ("there is no such object.") exactly when it is the
  most likely first answer token, so its probability at the answer start, teacher-forced, decides.
It reports the mean / median probability on each, the AUC of telling them apart by it (0.5: the model cannot
tell), and for thresholds t, the share of each answered without a mask if that were decided whenever p > t. A high
AUC with few no-target prompts over 0.5 would be a calibration problem a threshold could fix; a low AUC is not.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from anyref.batching import collate, prepare
from anyref.heads import nowhere_share
from anyref.synthref import NO_TARGET_ANSWER, SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic

__all__ = ["refusal_probabilities", "nowhere_probabilities", "separation_auc", "no_target_probe"]

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


@torch.no_grad()
def refusal_probabilities(model, samples: list, chunk: int = 8) -> np.ndarray:
    """N: for each sample's prompt, the probability of the refusal answer's first token as the first answer token."""
    out = []
    for start in range(0, len(samples), chunk):
        part = [replace(s, answer=[NO_TARGET_ANSWER], masks=np.zeros((0, *s.image.shape[:2]), dtype=bool))
                for s in samples[start:start + chunk]]
        batch = collate([prepare(s, model.builder) for s in part], model.ids.pad).to(model.device, model.dtype)
        hidden = model.answer_states(batch)[0]
        rows = torch.arange(len(part), device=hidden.device)
        starts = batch.answer_starts.to(hidden.device)
        logits = model.llava.lm_head(hidden[rows, starts - 1]).float()  # the state that predicts the answer's start
        out.append(torch.softmax(logits, -1)[rows, batch.labels[rows, starts]].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def nowhere_probabilities(model, samples: list) -> np.ndarray:
    """N: for each sample's greedy answer, the share of its first ``<obj>``'s location map on the nowhere place
    (what ``placed_nowhere`` compares with 0.5); 1.0 for an answer without an ``<obj>``."""
    if not model.config.obj_nowhere:
        raise ValueError("this model's location map has no nowhere place (config.obj_nowhere is off)")
    out = []
    for sample in samples:
        batch = collate([prepare(sample, model.builder, with_answer=False)], model.ids.pad, "left")
        generation = model.generate(batch.to(model.device, model.dtype))[0]
        if not len(generation.obj_states):
            out.append(1.0)
            continue
        locations = model.obj_locator(generation.obj_states[:1], generation.image_states[None])
        out.append(float(nowhere_share(locations)[0]))
    return np.array(out)


def separation_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError("the AUC needs at least one sample on each side")
    diff = positives[:, None] - negatives[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def no_target_probe(model, n: int = 100, split: str = "val", world_seed: int = 0) -> RunOutput:
    """The module docstring's figures over the first ``n`` no_target and text samples of the SynthRef split."""
    world = SynthRef.for_model(model.config, world_seed)
    decision = "nowhere" if model.config.obj_nowhere else "refusal"
    read = nowhere_probabilities if decision == "nowhere" else refusal_probabilities
    probs = {task: read(model, world.split(split, task, n)) for task in ("no_target", "text")}
    metrics = {task: {"mean": float(p.mean()), "median": float(np.median(p)),
                      "refused_at": {str(t): float((p > t).mean()) for t in THRESHOLDS}}
               for task, p in probs.items()}
    metrics["auc"] = separation_auc(probs["no_target"], probs["text"])
    return RunOutput(metrics=metrics, counts={task: {"samples": len(p)} for task, p in probs.items()},
                     settings={"n": n, "split": split, "world_seed": world_seed, "decision": decision,
                               "refusal": NO_TARGET_ANSWER})


def _report(run: RunOutput, model) -> None:
    print(f"decided by: {'the nowhere place' if run.settings['decision'] == 'nowhere' else 'the refusal token'}; "
          f"AUC (no_target above text): {run.metrics['auc']:.3f}")
    print(f"{'prompts':>10} {'mean':>6} {'median':>6} | no mask if p > " + " / ".join(map(str, THRESHOLDS)))
    for task in ("no_target", "text"):
        m = run.metrics[task]
        print(f"{task:>10} {m['mean']:6.3f} {m['median']:6.3f} | "
              + " / ".join(f"{m['refused_at'][str(t)]:.2f}" for t in THRESHOLDS))


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=100, split="val"),
                          lambda model, args: no_target_probe(model, args.n, args.split), _report, "no_target_probe")


if __name__ == "__main__":
    raise SystemExit(main())
