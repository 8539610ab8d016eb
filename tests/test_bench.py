"""``anyref bench``: the full-size budget counted on the meta device, and one short run's results file."""
import json

import pytest

from anyref import AnyRef, cli
from eval import bench
from eval import results as eval_results
from eval.bench import full_size_budget


def test_full_size_budget_counts_the_real_architecture():
    budget = full_size_budget()
    params = budget["parameters"]
    assert 6.9e9 < params["llava"] < 7.2e9  # LLaMA-7B + CLIP-L/336 + projector
    assert 6.3e8 < params["sam"] < 6.5e8  # SAM ViT-H: 641 M
    assert 8.0e7 < params["audio_encoder"] < 9.0e7  # ImageBind-H audio branch
    assert 13 < budget["weights_gib_bf16"] < 15 and budget["fits_24_gib"]


def test_bench_checks_out_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run_bench", lambda *args, **kwargs: pytest.fail("the bench ran before --out was "
                                                                                "checked"))
    assert cli.main(["bench", "--out", str(tmp_path)]) == 2  # a folder: usage error, nothing run
    error = capsys.readouterr().err
    assert "--out" in error and "is a directory" in error


def test_bench_prints_its_ratios_before_writing_them(tmp_path, monkeypatch, capsys):
    figures = {"ratios": {"engine_vs_reference": {"value": 3.5, "target": ">= 3"}}}
    monkeypatch.setattr(bench, "run_bench", lambda *args, **kwargs: dict(figures))

    def full_disk(path, results):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(eval_results, "write_results", full_disk)
    with pytest.raises(OSError, match="No space"):
        cli.main(["bench", "--out", str(tmp_path / "bench.json")])
    assert "engine_vs_reference: 3.500 (target >= 3)" in capsys.readouterr().out


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
    shipped = AnyRef.from_pretrained("synthref-tiny").config  # the text answer checks it was timed with
    assert results["answer_checks"] == {"verify_answers": shipped.verify_answers,
                                        "check_by_group_head": shipped.check_by_group_head,
                                        "rank_text_answers": shipped.rank_text_answers,
                                        "verify_by_pixels": shipped.verify_by_pixels}
    assert results["provenance"]["model_config_sha256"] and results["provenance"]["device"] == "cpu"
