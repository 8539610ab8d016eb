"""Does the LLM know where each image token lies? Linear probes of a token's grid column and row.

    python -m eval.position_probe --model synthref-tiny --n 160 --split val --out positions.json

On SynthRef text prompts, every image token the LLM reads (the g x g grid after any merge) has a column x and a
row y. Ridge regressions (one per feature kind) are fitted on the first 3/4 of the images and scored on the rest:
- ``input``: the token's input embedding (projected, merged, plus any position map);
- ``last_layer``: its last-layer state, after the LLM has read the whole prompt.
Figures per kind: held-out R^2 of x and of y (1: exact, 0: no better than the mean, below 0: worse), and the share
of tokens whose rounded (x, y) is their cell. "left of" and "above" prompts need x and y; RoPE gives the LLM the
raster index, from which y is far easier to read than x.
"""
from __future__ import annotations

import numpy as np
import torch

from anyref.batching import collate, prepare
from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic

__all__ = ["image_token_features", "ridge_probe", "position_probe"]


@torch.no_grad()
def image_token_features(model, samples: list, chunk: int = 16) -> dict[str, torch.Tensor]:
    """{"input": N x g*g x H input embeddings, "last_layer": N x g*g x H last-layer states} of the image tokens of
    each sample's prompt, in raster order."""
    grid = model.llm_grid
    inputs, states = [], []
    for start in range(0, len(samples), chunk):
        batch = collate([prepare(s, model.builder) for s in samples[start:start + chunk]], model.ids.pad)
        batch = batch.to(model.device, model.dtype)
        embeds = model.input_embeddings(batch)
        hidden = model.answer_states(batch, embeds=embeds)[0]
        image = batch.input_ids == model.ids.image  # the first read's inputs (image_reread has a second)
        inputs.append(embeds[image].view(len(embeds), -1, grid * grid, embeds.shape[-1])[:, 0].float().cpu())
        states.append(model.image_token_states(batch.input_ids, hidden).float().cpu())
    return {"input": torch.cat(inputs), "last_layer": torch.cat(states)}


def ridge_probe(features: torch.Tensor, fit_share: float = 0.75, alpha: float = 1.0) -> dict:
    """features: N x g*g x H (images x raster-ordered tokens). Fits (x, y) on the first ``fit_share`` of the
    images, scores the rest: {"r2_x", "r2_y", "exact_cell"}."""
    count, cells, width = features.shape
    grid = int(round(cells ** 0.5))
    fit = int(count * fit_share)
    if not 0 < fit < count:
        raise ValueError(f"need images both to fit and to score; got {count} with fit_share {fit_share}")
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    cell_xy = torch.tensor(np.stack([cols.ravel(), rows.ravel()], 1), dtype=torch.float64)  # g*g x 2

    def design(part: torch.Tensor) -> torch.Tensor:
        flat = part.reshape(-1, width).double()
        return torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], 1)

    train, test = design(features[:fit]), design(features[fit:])
    targets, truth = cell_xy.repeat(fit, 1), cell_xy.repeat(count - fit, 1)
    weights = torch.linalg.solve(train.T @ train + alpha * torch.eye(train.shape[1], dtype=train.dtype),
                                 train.T @ targets)
    predicted = test @ weights
    r2 = 1 - ((predicted - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    exact = (predicted.round().clamp(0, grid - 1) == truth).all(1).double().mean()
    return {"r2_x": float(r2[0]), "r2_y": float(r2[1]), "exact_cell": float(exact)}


def position_probe(model, n: int = 160, split: str = "val", world_seed: int = 0) -> RunOutput:
    """ridge_probe of both feature kinds over the first ``n`` text samples of the SynthRef split."""
    world = SynthRef.for_model(model.config, world_seed)
    features = image_token_features(model, world.split(split, "text", n))
    metrics = {kind: ridge_probe(values) for kind, values in features.items()}
    return RunOutput(metrics=metrics, counts={"images": n, "tokens_per_image": model.llm_grid ** 2},
                     settings={"n": n, "split": split, "fit_share": 0.75, "alpha": 1.0, "world_seed": world_seed})


def _report(run: RunOutput, model) -> None:
    print(f"{'features':>11} {'R2 x':>6} {'R2 y':>6} {'exact cell':>10}")
    for kind, m in run.metrics.items():
        print(f"{kind:>11} {m['r2_x']:6.3f} {m['r2_y']:6.3f} {m['exact_cell']:10.3f}")


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=160, split="val", n_help="text samples (images)"),
                          lambda model, args: position_probe(model, args.n, args.split), _report, "position_probe")


if __name__ == "__main__":
    raise SystemExit(main())
