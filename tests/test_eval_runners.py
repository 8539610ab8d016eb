"""How the runners turn answers into metric inputs, checked with stand-in models whose answers are known: mask
unions, the GRES no-target flag, per-video AVS scoring from logits, and the atomic results file."""
import hashlib
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from anyref.outputs import SegmentResult
from eval.datasets import AvsReader, GrefReader, ResReader
from eval.metrics import avs_fscore, avs_miou, ciou, giou, gres_scores
from eval import provenance
from eval.compare import compare_results
from eval.results import RunOutput, make_results, read_results, write_results
from eval.runners import NO_MASK_LOGIT, logit_map, run_avs, run_gres, run_res
from eval.summary import render_summary
from tests.test_eval_avsbench import write_ms3
from tests.test_eval_grefcoco import write_grefcoco
from tests.test_eval_refer import write_refer


def result(masks: np.ndarray, logits=None) -> SegmentResult:
    if logits is None:
        logits = np.where(masks, 5.0, -5.0).astype(np.float32)
    return SegmentResult(masks, np.ones(len(masks), np.float32), "answer", logits)


class StandIn:
    """A model whose answer to each prompt is ``answer(image, references)``."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def segment(self, image, references, allow_untrained=False):
        self.calls += 1
        return self.answer(image, references)


def test_logit_map():
    assert (logit_map(result(np.zeros((0, 2, 3), bool)), (2, 3)) == NO_MASK_LOGIT).all()
    logits = np.array([[[1.0, -2.0]], [[-1.0, 3.0]]], dtype=np.float32)
    np.testing.assert_array_equal(logit_map(result(logits > 0, logits), (1, 2)), [[1.0, 3.0]])


def test_res_scores_the_union_of_the_answer_masks(tmp_path):
    root = write_refer(tmp_path / "refer")
    truth = {s.meta["expression"]: s.masks[0] for s in ResReader(root, "refcoco", "val")}

    def answer(image, references):
        gt = truth[references[0]]
        if references[0] == "the dog":  # no mask at all
            return result(np.zeros((0, *gt.shape), bool))
        top, bottom = gt.copy(), gt.copy()  # the object split over two masks, plus one stray pixel
        top[gt.shape[0] // 2:], bottom[: gt.shape[0] // 2] = False, False
        bottom[0, 0] = True
        return result(np.stack([top, bottom]))

    out = run_res(StandIn(answer), ResReader(root, "refcoco", "val"), progress=False)
    preds = [truth[e] | (np.arange(truth[e].size).reshape(truth[e].shape) == 0) for e in ("man on the left",
                                                                                           "person in red")]
    preds.append(np.zeros_like(truth["the dog"]))
    gts = [truth["man on the left"], truth["person in red"], truth["the dog"]]
    assert out.metrics == pytest.approx({"ciou": ciou(preds, gts), "giou": giou(preds, gts)})
    assert out.counts == {"samples": 3, "no_mask": 1, "several_masks": 2, "images": 1}


def test_gres_no_target_flag_is_an_answer_without_mask(tmp_path):
    root = write_grefcoco(tmp_path / "refer")
    samples = list(GrefReader(root, "val"))  # "the man and the dog" (2 targets), "the cat", "a purple horse" (none)
    shape = samples[0].image.shape[:2]
    corner = np.zeros(shape, bool)
    corner[:4, :4] = True

    def answer(image, references):
        if references[0] == "the cat":  # a no-target expression answered with a mask: FN
            return result(corner[None])
        if references[0] == "a purple horse":  # answered without a mask: TP
            return result(np.zeros((0, *shape), bool))
        return result(samples[0].masks)  # the two targets found: TN with IoU 1

    out = run_gres(StandIn(answer), GrefReader(root, "val"), progress=False)
    expected = gres_scores([samples[0].masks[0], corner, np.zeros(shape, bool)],
                           [samples[0].masks[0], np.zeros(shape, bool), np.zeros(shape, bool)],
                           no_target=[False, False, True])
    assert out.metrics == pytest.approx(expected)
    assert out.metrics["n_acc"] == 0.5 and out.metrics["t_acc"] == 1.0
    assert (out.counts["tp"], out.counts["fn"], out.counts["fp"], out.counts["tn"]) == (1, 1, 0, 1)


def test_avs_each_video_scored_alone_from_logits(tmp_path):
    base = tmp_path / "AVS1" / "ms3"
    write_ms3(base, base / "ms3_meta_data.csv")
    reader = AvsReader(tmp_path, "ms3", "test")

    def answer(image, references):
        # two masks from the red and green channels; the frame's logit map is their max
        pixels = image.astype(np.float32)
        logits = np.stack([(pixels[..., 0] - 160) / 20, (pixels[..., 1] - 170) / 25])
        return result(logits > 0, logits)

    model = StandIn(answer)
    out = run_avs(model, reader, progress=False)
    per_video = []
    for video in AvsReader(tmp_path, "ms3", "test"):
        logits = torch.from_numpy(np.stack([answer(s.image, None).logits.max(0) for s in video]))
        gt = torch.from_numpy(np.stack([s.masks[0] for s in video]))
        per_video.append((avs_miou(logits, gt), avs_fscore(logits, gt)))
    assert model.calls == 10
    assert out.metrics["miou"] == pytest.approx(np.mean([m for m, _ in per_video]), abs=1e-7)
    assert out.metrics["fscore"] == pytest.approx(np.mean([f for _, f in per_video]), abs=1e-7)
    # pooling the ten frames as one "video" gives another number: scoring per video matters
    pooled_logits = torch.cat([torch.from_numpy(np.stack([answer(s.image, None).logits.max(0) for s in v]))
                               for v in AvsReader(tmp_path, "ms3", "test")])
    pooled_gt = torch.cat([torch.from_numpy(np.stack([s.masks[0] for s in v]))
                           for v in AvsReader(tmp_path, "ms3", "test")])
    assert avs_fscore(pooled_logits, pooled_gt) != pytest.approx(out.metrics["fscore"], abs=1e-6)


def test_limit_and_empty_reader_checks(tmp_path):
    root = write_refer(tmp_path / "refer")
    model = StandIn(lambda image, refs: result(np.zeros((0, *image.shape[:2]), bool)))
    assert run_res(model, ResReader(root, "refcoco", "val"), limit=1, progress=False).counts["samples"] == 1
    with pytest.raises(ValueError, match="limit"):
        run_res(model, ResReader(root, "refcoco", "val"), limit=0, progress=False)


def test_results_file_is_written_atomically_and_read_back(tmp_path):
    run = RunOutput({"ciou": np.float32(0.5), "giou": float("nan")}, {"samples": np.int64(3)}, {"split_by": "unc"})
    results = make_results("res", run, "model-dir", "refcoco", "val", 1.23456, "anyref eval res ...", "/data", 3)
    path = tmp_path / "out" / "r.json"
    path.parent.mkdir()
    path.write_text("old")
    write_results(path, results)
    data = json.loads(path.read_text())
    assert data["metrics"] == {"ciou": 0.5, "giou": None} and data["counts"] == {"samples": 3}
    assert data["seconds"] == 1.235 and data["limit"] == 3 and data["command"] == "anyref eval res ..."
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
    assert read_results(path)["dataset"] == "refcoco"
    mask = os.umask(0o022)
    try:
        write_results(path, results)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # shareable like any file, not mkstemp's private 0600
    (tmp_path / "bad.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ValueError, match="not an `anyref eval` results file"):
        read_results(tmp_path / "bad.json")


def test_results_name_folders_inside_the_run_folder_relatively(tmp_path, monkeypatch):
    # A results file copied into a repository must not name the machine it ran on; outside the run's folder the
    # absolute path is the only unambiguous name.
    (tmp_path / "repo" / "runs" / "model").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    run = RunOutput({"ciou": 0.5}, {"samples": 1})
    results = make_results("res", run, str(tmp_path / "repo" / "runs" / "model"), "refcoco", "val", 1.0,
                           data="../data")
    assert results["model"] == os.path.join("runs", "model")
    assert results["data"] == str((tmp_path / "data").resolve())
    assert make_results("res", run, "synthref-tiny", "synthref", "test", 1.0)["model"] == "synthref-tiny"


class _Loaded:
    """What a results file reads from the model that ran: its device and dtype."""

    device = torch.device("cpu")
    dtype = torch.bfloat16


def test_results_record_code_libraries_and_model(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 32}')
    run = RunOutput({"ciou": 0.5}, {"samples": 1})
    found = make_results("res", run, str(model_dir), "refcoco", "val", 1.0, loaded_model=_Loaded())["provenance"]
    assert found["model_config_sha256"] == hashlib.sha256(b'{"hidden_size": 32}').hexdigest()
    assert (found["device"], found["dtype"]) == ("cpu", "torch.bfloat16")
    assert found["torch"] == metadata.version("torch") and found["transformers"] == metadata.version("transformers")
    assert found["anyref"] == metadata.version("anyref")
    assert found["git_commit"] is None or len(found["git_commit"]) == 40
    assert (found["git_dirty"] is None) == (found["git_commit"] is None)
    unknown = make_results("res", run, "no-such-model", "refcoco", "val", 1.0)["provenance"]
    assert unknown["model_config_sha256"] is None and unknown["device"] is None and unknown["dtype"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_provenance_git_state_of_a_checkout(tmp_path):
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert provenance._git_state(package) == (None, None)  # not in a checkout (an installed copy)
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pkg/__init__.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    commit, dirty = provenance._git_state(package)
    assert len(commit) == 40 and dirty is False
    (package / "__init__.py").write_text("changed = True\n")
    assert provenance._git_state(package) == (commit, True)


def test_provenance_never_fails_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    found = provenance.run_provenance("no-such-model")
    assert found["git_commit"] is None and found["git_dirty"] is None and found["torch"]


def test_results_files_without_provenance_still_read(tmp_path):
    old = make_results("res", RunOutput({"ciou": 0.5}, {"samples": 2}, {"split_by": "unc"}), "m", "refcoco", "val", 1)
    del old["provenance"]  # as written before it existed
    path = write_results(tmp_path / "old.json", old)
    assert "| 50.0 | 2 |" in render_summary([read_results(path)])
    docs = Path(__file__).resolve().parents[1] / "docs"
    checked_in = [p for p in sorted(docs.glob("*.json")) if {"benchmark", "split"} <= set(json.loads(p.read_text()))]
    assert checked_in and all(read_results(p)["metrics"] for p in checked_in)
    per_sample = [p for p in checked_in if "per_sample" in json.loads(p.read_text())]
    if per_sample:
        assert compare_results(per_sample[:1], resamples=100)["files"]
