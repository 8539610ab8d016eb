"""How much a model's masks rest on its location map, and what a perfect map would give (``obj_location_prompt``).

    python -m eval.location_probe --model synthref-tiny --n 200 --split test --out probe.json

For SynthRef samples with one target whose answer has one ``<obj>``, the same ``<obj>`` prompt is decoded by SAM
with three dense prompts, and each mask's IoU with the target is averaged:
- ``own``: the model's own location map, then ``config.mask_refinements`` redraws (what ``segment`` draws, and
  ``describe`` where ``config.describe_box_prior`` does not draw a box caption's region from its box);
- ``blank``: a uniform map (no location at all), which shows how much the masks depend on it;
- ``oracle``: the target's own coverage of the LLM's image-token grid (log of each cell's covered share), which
  bounds what a better map could give this SAM.
With ``config.mask_crf`` every map's mask is then refined by it, as ``segment`` finishes its masks.
"""
from __future__ import annotations

import numpy as np
import torch

from anyref.batching import collate, prepare
from anyref.heads import coverage_logits, decode_masks, location_cells, location_prompt, upscale_masks
from anyref.mask_crf import crf_refine_found
from anyref.synthref import SynthRef
from eval.results import RunOutput, diagnostic_parser, run_diagnostic

__all__ = ["MAPS", "TASKS", "location_probe"]

MAPS = ("own", "blank", "oracle")
TASKS = ("text", "box", "example", "example_masked", "audio1")  # tasks whose samples have one target


@torch.no_grad()
def _ious(model, sample) -> dict[str, float] | None:
    """IoU of the sample's target with the mask decoded under each map, or None when the answer has no single
    ``<obj>``."""
    batch = collate([prepare(sample, model.builder, with_answer=False)], model.ids.pad, "left")
    batch = batch.to(model.device, model.dtype)
    generation = model.generate(batch)[0]
    if len(generation.obj_states) != 1:
        return None
    embeddings = model.sam_embeddings(batch.sam_pixels)
    prompts = model.obj_projection(generation.obj_states)
    own = location_cells(model.obj_locator(generation.obj_states, generation.image_states[None]), model.llm_grid ** 2)
    maps = {"own": own, "blank": torch.zeros_like(own),
            "oracle": coverage_logits(torch.from_numpy(sample.masks[0])[None], model.llm_grid).to(own)}
    target = torch.from_numpy(sample.masks[0]).to(model.device)
    crf = model.config.crf
    ious = {}
    for name, logits in maps.items():
        low = decode_masks(model.sam, embeddings, prompts, location_prompt(model.sam, logits))
        if name == "own":  # then its refinements, if the model's config asks for them: what segment draws
            low = model.refine_obj_masks(embeddings, generation.obj_states, low, batch.sam_sizes, batch.image_sizes)
        logits = upscale_masks(model.sam, low, batch.sam_sizes[0], batch.image_sizes[0]).float()
        if crf is not None:  # every map's mask as segment would finish it
            logits = crf_refine_found(sample.image, logits, crf)
        mask = logits[0] > 0
        ious[name] = float((mask & target).sum() / max(int((mask | target).sum()), 1))
    return ious


def location_probe(model, tasks=TASKS, n: int = 200, split: str = "test", world_seed: int = 0) -> RunOutput:
    """Mean IoU per task and map (the module docstring's) over the first ``n`` samples of each SynthRef task."""
    if getattr(model, "obj_locator", None) is None:
        raise ValueError("this model gives SAM no location map (config.obj_location_prompt is off): nothing to probe")
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} have no single target per sample; choose from {TASKS}")
    world = SynthRef.for_model(model.config, world_seed)
    metrics, counts = {}, {}
    for task in tasks:
        rows = [r for r in (_ious(model, s) for s in world.split(split, task, n)) if r is not None]
        metrics[task] = {name: float(np.mean([r[name] for r in rows])) if rows else 0.0 for name in MAPS}
        counts[task] = {"samples": n, "scored": len(rows)}
    return RunOutput(metrics=metrics, counts=counts, settings={"n": n, "split": split, "world_seed": world_seed})


def _report(run: RunOutput, model) -> None:
    print(f"{'task':>15} {'scored':>6} | mean IoU: " + " / ".join(MAPS))
    for task, figures in run.metrics.items():
        print(f"{task:>15} {run.counts[task]['scored']:>6} | " + " / ".join(f"{figures[m]:.3f}" for m in MAPS))


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="test", tasks=TASKS),
                          lambda model, args: location_probe(model, args.tasks, args.n, args.split), _report,
                          "location_probe")


if __name__ == "__main__":
    raise SystemExit(main())
