"""``anyref bench``: the full-size budget counted on the meta device, and one short run's results file."""
import json

import pytest

from anyref import cli
from eval.bench import full_size_budget


def test_full_size_budget_counts_the_real_architecture():
    budget = full_size_budget()
    params = budget["parameters"]
    assert 6.9e9 < params["llava"] < 7.2e9  # LLaMA-7B + CLIP-L/336 + projector
    assert 6.3e8 < params["sam"] < 6.5e8  # SAM ViT-H: 641 M
    assert 8.0e7 < params["audio_encoder"] < 9.0e7  # ImageBind-H audio branch
    assert 13 < budget["weights_gib_bf16"] < 15 and budget["fits_24_gib"]


@pytest.mark.slow
def test_bench_writes_every_figure(tmp_path, capsys):
    # the shipped model, whose answers contain <obj> (a random tiny model's rarely do), so masks are timed too
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--model", "synthref-tiny", "--repeats", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["latency_per_reference"]) == {"text", "box", "example", "audio"}
    assert set(results["throughput_one_image"]) == {"1", "8", "32"}
    assert set(results["ratios"]) == {"refocus_overhead", "eight_refs_vs_one", "engine_vs_reference"}
    assert all(v["value"] > -1 for v in results["ratios"].values()) and results["peak_memory_mb"] > 0
    scaling = results["select_scaling"]
    assert scaling["candidates"] == [50, 100, 200] and set(scaling["llm_forwards_per_call"].values()) == {1}
    assert "growth" in scaling and len(scaling["ms_per_candidate"]) == 2  # timings: docs/performance.md
    assert "engine_vs_reference" in capsys.readouterr().out
