"""What a model's group head has to read: linear probes of SynthRef candidates' colour and shape.

    python -m eval.group_probe --model synthref-tiny --out probe.json

For the objects among the candidates of SynthRef ``group`` samples (fitted on the val split, scored on the test
split) a ridge-regression probe predicts each object's colour and shape from
- its mask token (the LLM's input at the candidate's answer slot), and
- its last-layer state there (what RAS's classifier reads).
It also gives the mean membership probability per group rule, for members and non-members: a head that reads
the prompt but not the candidate gives both the same. A probe is a lower bound on what a vector holds; a large gap
between the two rows means the LLM's output lost what the candidate is.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from anyref.batching import collate, prepare
from anyref.synthref import SynthRef, SynthRefConfig
from anyref.synthref.vocabulary import COLOURS, SHAPES
from eval.results import RunOutput, run_diagnostic

__all__ = ["candidate_vectors", "ridge_probe_accuracy", "probe_group_head"]


@torch.no_grad()
def candidate_vectors(model, samples, chunk: int = 8) -> dict:
    """For every object candidate of ``samples`` (SynthRef group samples): "token" and "state" (N x H arrays), its
    "labels" (N x 2: colour index, shape index), its membership "probability" and ("rule", member) "keys"."""
    tokens, states, labels, probabilities, keys = [], [], [], [], []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        batch = collate([prepare(s, model.builder) for s in part], model.ids.pad)
        hidden, embeds = model.select_states(batch)
        slots = batch.candidate_slots
        probability = model.group_logits(hidden, embeds, batch).float().sigmoid()
        slot_tokens, slot_states = embeds[slots].float().numpy(), hidden[slots].float().numpy()
        row = 0
        for sample in part:
            objects = sample.meta["objects"]
            for member, owner in zip(sample.selected, sample.meta["candidate_object_ids"]):
                if owner >= 0:  # background patches have no colour or shape to probe
                    tokens.append(slot_tokens[row])
                    states.append(slot_states[row])
                    labels.append((COLOURS.index(objects[owner]["colour"]), SHAPES.index(objects[owner]["shape"])))
                    probabilities.append(float(probability[row]))
                    keys.append((sample.meta["rule"], bool(member)))
                row += 1
    return {"token": np.array(tokens), "state": np.array(states), "labels": np.array(labels),
            "probability": np.array(probabilities), "keys": keys}


def ridge_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                         ridge: float = 1.0) -> float:
    """Accuracy of a one-vs-rest ridge regression (closed form, with a bias) fitted on N x D ``train_x`` to the
    class indices ``train_y`` and scored on ``test_x``/``test_y``."""
    design = np.c_[train_x, np.ones(len(train_x))]
    targets = np.eye(int(max(train_y.max(), test_y.max())) + 1)[train_y]
    weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ targets)
    predicted = (np.c_[test_x, np.ones(len(test_x))] @ weights).argmax(1)
    return float((predicted == test_y).mean())


def probe_group_head(model, n_fit: int = 96, n_test: int = 96, seed: int = 0) -> RunOutput:
    """Probe accuracies (metrics["token"|"state"]["colour"|"shape"]) and mean membership probabilities per rule
    (metrics["membership"][rule]["member"|"non_member"])."""
    world = SynthRef(SynthRefConfig(seed=seed))
    fit = candidate_vectors(model, world.split("val", "group", n_fit))
    test = candidate_vectors(model, world.split("test", "group", n_test))
    metrics: dict = {}
    for vector in ("token", "state"):
        metrics[vector] = {name: ridge_probe_accuracy(fit[vector], fit["labels"][:, column], test[vector],
                                                      test["labels"][:, column])
                           for column, name in enumerate(("colour", "shape"))}
    grouped = defaultdict(list)
    for key, probability in zip(test["keys"], test["probability"]):
        grouped[key].append(probability)
    membership: dict = defaultdict(dict)
    for (rule, member), values in sorted(grouped.items()):
        membership[rule]["member" if member else "non_member"] = float(np.mean(values))
    metrics["membership"] = dict(membership)
    counts = {"fit_objects": len(fit["labels"]), "test_objects": len(test["labels"])}
    return RunOutput(metrics=metrics, counts=counts, settings={"n_fit": n_fit, "n_test": n_test, "seed": seed})


def _report(run: RunOutput, model) -> None:
    for vector in ("token", "state"):
        print(f"{vector:>5}: colour {run.metrics[vector]['colour']:.3f}  shape {run.metrics[vector]['shape']:.3f}")
    for rule, means in run.metrics["membership"].items():
        print(f"{rule:>12}: member {means.get('member', float('nan')):.3f}  "
              f"non-member {means.get('non_member', float('nan')):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthref-tiny", help="a shipped model name or an AnyRef directory")
    parser.add_argument("--n-fit", type=int, default=96, help="val group samples the probes are fitted on")
    parser.add_argument("--n-test", type=int, default=96, help="test group samples they are scored on")
    parser.add_argument("--out", help="write a results JSON here")
    return run_diagnostic(argv, parser, lambda model, args: probe_group_head(model, args.n_fit, args.n_test), _report,
                          "group_probe", split="val->test")


if __name__ == "__main__":
    raise SystemExit(main())
