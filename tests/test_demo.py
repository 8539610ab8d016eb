"""``anyref demo``: overlays for every reference type, a contact sheet and a metrics file, from the CLI."""
import json

import numpy as np
from PIL import Image

from anyref import cli
from anyref.checkpoint import PRETRAINED_DIR
from eval.synthref_eval import SCORED_TASKS


def test_demo_writes_overlays_sheet_and_metrics(tiny_model, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(out), "--n", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "full test split" in printed and "no_target" in printed and "demo.png" in printed
    rows = {words[0]: words[1] for words in map(str.split, printed.splitlines())
            if words[:1] in (["verify"], ["text_select"])}
    assert rows == {"verify": "verify_acc", "text_select": "ciou"}  # a task without a target shows its primary metric
    for task in SCORED_TASKS:
        assert len(list((out / "overlays" / task).glob("*.png"))) == 2, task
    results = json.loads((out / "metrics.json").read_text())
    assert results["benchmark"] == "synthref-demo" and set(results["metrics"]) == set(SCORED_TASKS)
    assert results["counts"]["samples"] == 2 * len(SCORED_TASKS)
    assert results["settings"]["recorded_full_split"] is None  # this model directory has no recorded figures
    assert results["settings"]["targets"]["text"] == [["ciou", 0.8]]
    sheet = np.asarray(Image.open(out / "demo.png"))
    first = np.asarray(Image.open(sorted((out / "overlays" / SCORED_TASKS[0]).glob("*.png"))[0]))
    assert sheet.shape[0] >= len(SCORED_TASKS) * first.shape[0] and sheet.shape[2] == 3
    assert not list(out.glob(".*.tmp"))


def test_demo_bad_arguments_are_clear(tiny_model, tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "no AnyRef model directory" in capsys.readouterr().err
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    assert cli.main(["demo", "--model", str(model_dir), "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_shipped_model_is_the_default(tmp_path, capsys):
    assert (PRETRAINED_DIR / "synthref-tiny" / "config.json").is_file(), "the demo model must ship with the library"
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--n", "1", "--no-progress"]) == 0
    results = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert results["model"] == "synthref-tiny" and results["settings"]["recorded_full_split"] is not None
