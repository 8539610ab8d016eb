"""Learning-curve plots from a trainer's log.jsonl and val.jsonl, and clear errors for files that are not logs."""
import json

import pytest

from train.curves import main, plot_curves


def _run(folder, steps=(50, 100, 150)):
    folder.mkdir()
    lines = [{"step": 25, "stage": "warm-up", "loss": 2.0, "ce": 0.0, "bce": 0.0, "dice": 0.0}]
    lines += [{"step": s, "stage": "joint", "loss": 1.0 / s, "ce": 0.5 / s, "bce": 0.2, "dice": 0.3, "group": 0.1}
              for s in steps]
    (folder / "log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    val = [{"step": s, "metrics": {"text": {"ciou": s / 200}, "box": {"caption_acc": 0.1}},
            "primary": {"text": "ciou", "box": "caption_acc"}} for s in steps]
    (folder / "val.jsonl").write_text("\n".join(json.dumps(v) for v in val) + "\n")
    return folder / "log.jsonl"


def test_curves_plot_train_terms_and_val_metrics(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", steps=(60, 120))
    out = plot_curves([a, b], tmp_path / "plots" / "curves.png", labels=["a", "b"], title="two runs")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "plots").glob(".*.tmp"))


def test_curves_refuse_what_is_not_a_log(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main([str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match="labels"):
        plot_curves([_run(tmp_path / "c")], tmp_path / "y.png", labels=["1", "2"])
