"""The summary table: our results next to the published numbers, on the paper's scale."""
import pytest

from eval import cli
from eval.results import RunOutput, make_results, write_results
from eval.summary import PAPER_FIGURES, display_value, render_summary


def _row(table: str, *cells: str) -> str:
    rows = [line for line in table.splitlines() if all(f"| {c} |" in line for c in cells)]
    assert len(rows) == 1, (cells, table)
    return rows[0]


def test_paper_figures_are_unique_and_on_known_benchmarks():
    keys = [(f.benchmark, f.dataset, f.split, f.metric, f.variant, f.method) for f in PAPER_FIGURES]
    assert len(keys) == len(set(keys))
    assert {f.benchmark for f in PAPER_FIGURES} == {"res", "gres", "avs", "fewshot", "reg"}


def test_display_scale():
    assert display_value("ciou", 0.7412) == "74.1"
    assert display_value("fscore", 0.9081) == "0.908"
    assert display_value("cider", 0.69) == "69.0" and display_value("meteor", 0.162) == "16.2"
    assert display_value("giou", None) == "-"


def test_render_summary_matches_results_to_published_numbers():
    res = make_results("res", RunOutput({"ciou": 0.5, "giou": 0.25}, {"samples": 10}, {"split_by": "unc"}),
                       "m", "refcoco", "testA", 1.0, limit=10)
    fss = make_results("fewshot", RunOutput({"miou": 0.7, "fbiou": 0.8}, {"episodes": 1000},
                                            {"fold": 2, "shot": 5, "mask_crop": True}), "m", "coco-20i", "val", 1.0)
    avs = make_results("avs", RunOutput({"miou": 0.8, "fscore": 0.9}, {"videos": 4}), "m", "avsbench-ms3", "test", 1)
    syn = make_results("synthref", RunOutput({"text": {"ciou": 0.9}, "box": {"caption_acc": 1.0}},
                                             {"text": {"samples": 200}, "box": {"samples": 200}, "samples": 400}),
                       "m", "synthref", "test", 1.0)
    table = render_summary([res, fss, avs, syn])
    row = _row(table, "res", "refcoco", "testA", "ciou")
    assert "| 50.0 | 10 | 75.5 (generalist); 79.9 (fine-tuned) [1] |" in row and "partial: first 10" in row
    assert "| - |" in _row(table, "res", "refcoco", "testA", "giou")  # nothing published for gIoU
    row = _row(table, "fewshot", "coco-20i", "val", "miou")
    assert "fold 2, 5-shot, mask crop" in row and "| 70.0 | 1000 | 55.2 (5-shot, mask crop)" in row
    assert "| 0.900 | 4 | 0.663 (generalist)" in _row(table, "avs", "avsbench-ms3", "test", "fscore")
    assert "| 100.0 | 200 | - |" in _row(table, "synthref", "synthref", "test", "box", "caption_acc")
    assert "[1] AnyRef (CVPR 2024), referring segmentation table" in table
    google = make_results("res", RunOutput({"ciou": 0.5}, {"samples": 10}, {"split_by": "google"}), "m", "refcocog",
                          "val", 1.0)  # another partition than the paper's umd val: nothing to compare with
    assert "| 50.0 | 10 | - |" in _row(render_summary([google]), "res", "refcocog", "val", "ciou")
    with pytest.raises(ValueError, match="no results"):
        render_summary([])


def test_cli_summary_writes_markdown(tmp_path, capsys):
    run = RunOutput({"meteor": 0.15, "cider": 0.6}, {"refs": 5}, {"split_by": "umd"})
    paths = [write_results(tmp_path / "reg.json", make_results("reg", run, "m", "refcocog", "val", 2.0))]
    out = tmp_path / "tables" / "table.md"
    assert cli.main(["summary", *map(str, paths), "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    assert "| 60.0 | 5 | 69.0 (generalist); 79.7 (fine-tuned)" in _row(table, "reg", "refcocog", "val", "cider")
    assert cli.main(["summary", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err


def _fewshot(**settings) -> dict:
    run = RunOutput({"miou": 0.7}, {"episodes": 1000}, {"fold": 0, "shot": 1, "mask_crop": True, **settings})
    return make_results("fewshot", run, "m", "pascal-5i", "val", 1.0)


def test_summary_marks_fewshot_runs_not_drawn_as_hsnet_draws():
    row = _row(render_summary([_fewshot(episodes=500, seed=3)]), "fewshot", "pascal-5i", "val", "miou")
    assert "76.5 (1-shot, mask crop)" in row  # still next to the papers' number, with a note saying it differs
    assert "not HSNet's episodes: 500 episodes, seed 3 (published: 1000 episodes, seed 0)" in row
    assert "not HSNet's episodes: seed 1 (" in render_summary([_fewshot(episodes=1000, seed=1)])
    assert "not HSNet" not in render_summary([_fewshot(episodes=1000, seed=0)])
    assert "not HSNet" not in render_summary([_fewshot(episodes=1000)])  # written before the seed was recorded
