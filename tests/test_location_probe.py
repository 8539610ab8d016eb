"""The location probe (eval/location_probe.py): its "own" map is what segment draws, the oracle map is the target's
coverage, and models without a location map are refused."""
import numpy as np
import pytest
import torch

from anyref import AnyRef
from anyref.builders import build_tiny
from anyref.synthref import SynthRef
from anyref.heads import coverage_logits
from eval.location_probe import location_probe, main
from eval.results import read_results


def test_the_oracle_map_is_the_targets_coverage():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:16, :32] = True  # the top-left 2 x 4 cells of an 8 x 8 grid, wholly covered
    logits = coverage_logits(torch.from_numpy(mask)[None], 8).view(8, 8)
    assert logits.shape == (8, 8)
    expected = np.full((8, 8), np.log(1e-3))
    expected[:2, :4] = np.log(1 + 1e-3)
    assert np.allclose(logits.numpy(), expected, atol=1e-6)


def test_the_probe_scores_what_segment_draws(tmp_path):
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    model.set_describe_box_prior(False)  # the probe reads the <obj>'s own map; the prior would draw the box instead
    run = location_probe(model, ("box",), n=2)
    assert run.counts["box"]["scored"] >= 1
    samples = SynthRef().split("test", "box", 2)
    ious = []
    for sample in samples:
        result = model.describe(sample.image, sample.references, with_masks=True)  # box samples ask for a caption
        if len(result.masks) == 1:
            target = sample.masks[0]
            ious.append((result.masks[0] & target).sum() / (result.masks[0] | target).sum())
    assert run.metrics["box"]["own"] == pytest.approx(float(np.mean(ious)), abs=1e-6)
    assert all(0.0 <= run.metrics["box"][m] <= 1.0 for m in ("blank", "oracle"))
    assert main(["--tasks", "text", "--n", "1", "--out", str(tmp_path / "probe.json")]) == 0
    assert read_results(tmp_path / "probe.json")["counts"]["text"]["samples"] == 1


def test_models_without_a_location_map_and_multi_target_tasks_are_refused():
    with pytest.raises(ValueError, match="obj_location_prompt is off"):
        location_probe(build_tiny(seed=0), n=1)
    with pytest.raises(ValueError, match="single target"):
        location_probe(AnyRef.from_pretrained("synthref-tiny"), ("audio2",), n=1)
