"""gRefCOCO reader on a tiny dataset in its released layout (grefs(unc).json + instances.json + COCO images), with
multi-target, no-target and crowd refs, and the GRES runner end to end with the tiny model."""
import json
import shutil

import numpy as np
import pytest

from eval.datasets import GrefReader
from eval.runners import run_gres
from tests.test_eval_refer import rle_mask, write_refer


def write_grefcoco(root):
    """root/grefcoco/grefs(unc).json and instances.json (the refer fixture's annotations), COCO images."""
    write_refer(root)  # images and instances.json (annotation 11 is an RLE, 12 a crowd RLE, 10 / 13 polygons)
    folder = root / "grefcoco"
    folder.mkdir()
    shutil.copy(root / "refcoco" / "instances.json", folder / "instances.json")

    def sentences(*texts, first_id):
        return [{"sent": t, "raw": t, "tokens": t.split(), "sent_id": first_id + i} for i, t in enumerate(texts)]

    refs = [
        {"ref_id": 0, "image_id": 1, "split": "val", "ann_id": [10, 11], "category_id": [1, 2], "no_target": False,
         "sentences": sentences("the man and the dog", first_id=0)},
        {"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [-1], "category_id": [None], "no_target": True,
         "sentences": sentences("the cat", "a purple horse", first_id=1)},
        {"ref_id": 2, "image_id": 2, "split": "testA", "ann_id": [12, 13], "category_id": [2, 1],
         "no_target": False, "sentences": sentences("everything on the right", first_id=3)},
    ]
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    return root


@pytest.fixture
def gref_root(tmp_path):
    return write_grefcoco(tmp_path / "refer")


def test_gref_reader_multi_and_no_target(gref_root):
    reader = GrefReader(gref_root, "val")
    samples = list(reader)
    assert len(reader) == len(samples) == 3
    both, cat, horse = samples
    assert both.meta["ann_ids"] == [10, 11] and not both.meta["no_target"]
    assert both.masks.shape == (1, 48, 64)
    # the union of the two targets: the RLE one exactly, plus the polygon box x 10..40, y 8..28
    assert both.masks[0][rle_mask()].all() and both.masks[0][12:26, 12:38].all()
    assert (both.masks[0] & ~rle_mask()).sum() > 400
    for sample, text in ((cat, "the cat"), (horse, "a purple horse")):
        assert sample.meta["no_target"] and sample.meta["ann_ids"] == [] and sample.masks.shape == (0, 48, 64)
        assert sample.references == [text] and sample.meta["ref_id"] == 1


def test_gref_reader_leaves_crowd_annotations_out(gref_root):
    (sample,) = list(GrefReader(gref_root, "testA"))
    mask = sample.masks[0]
    assert mask[4:10, 32:48].all()  # annotation 13 (a polygon)
    assert not mask[10:35, 3:9].any()  # annotation 12 is a crowd region: not part of the ground truth, as in ReLA


def test_gref_reader_errors(gref_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'test'.*testA, val"):
        GrefReader(gref_root, "test")
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\).json"):
        GrefReader(tmp_path, "val")


def test_run_gres_end_to_end(tiny_model, gref_root, tmp_path):
    out = run_gres(tiny_model, GrefReader(gref_root, "val"), overlays=tmp_path / "png", progress=False)
    assert set(out.metrics) == {"giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"}
    counts = out.counts
    assert counts["samples"] == 3 and counts["no_target_gt"] == 2
    assert counts["tp"] + counts["fn"] == 2 and counts["tn"] + counts["fp"] == 1
    # the untrained tiny model answers without <obj>: every answer is a "no target" flag
    if counts["no_target_predicted"] == 3:
        assert out.metrics == pytest.approx({"giou": 2 / 3, "ciou": 0.0, "n_acc": 1.0, "t_acc": 0.0, "pr@0.7": 0.0,
                                         "pr@0.8": 0.0, "pr@0.9": 0.0})
    assert len(list((tmp_path / "png").glob("*.png"))) == 3
    assert np.isfinite(list(out.metrics.values())).all()
