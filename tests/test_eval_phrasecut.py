"""PhraseCut's released layout (refer_{split}.json + images/{image_id}.jpg): one sample per task, its mask the union
of every instance's polygons, scored by the RES runner and reachable from `anyref eval res --dataset phrasecut`."""

import json

import numpy as np
import pytest
from PIL import Image

from eval import cli as eval_cli
from eval.datasets import PhraseCutReader
from eval.runners import run_res


def write_phrasecut(root, split="miniv"):
    """Two tasks on one 60 x 40 image: "black dog" (two instances, the second of two polygons) and "red car"."""
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(root / "images" / "7.jpg")
    tasks = [
        {"task_id": "7__1_2", "image_id": 7, "ann_ids": [1, 2], "phrase": "black dog",
         "phrase_structure": {"name": "dog", "attributes": ["black"], "type": "attribute"},
         "instance_boxes": [[2, 2, 10, 10], [30, 20, 20, 10]],
         "Polygons": [[[[2, 2], [12, 2], [12, 12], [2, 12]]],
                      [[[30, 20], [40, 20], [40, 30], [30, 30]], [[42, 20], [50, 20], [50, 30], [42, 30]]]]},
        {"task_id": "7__3", "image_id": 7, "ann_ids": [3], "phrase": "red car",
         "phrase_structure": {"name": "car", "attributes": ["red"], "type": "attribute"},
         "instance_boxes": [[20, 0, 10, 5]], "Polygons": [[[[20, 0], [30, 0], [30, 5], [20, 5]]]]},
    ]
    (root / f"refer_{split}.json").write_text(json.dumps(tasks))
    return root


def test_one_sample_per_task_with_every_instance_in_its_mask(tmp_path):
    reader = PhraseCutReader(write_phrasecut(tmp_path / "pc"), "miniv")
    samples = list(reader)
    assert len(reader) == 2 and [s.references for s in samples] == [["black dog"], ["red car"]]
    dog = samples[0]
    assert dog.masks.shape == (1, 40, 60) and dog.task == "segment" and dog.source == "phrasecut"
    assert dog.meta["instances"] == 2 and dog.meta["category"] == "dog" and dog.meta["ref_id"] == "7__1_2"
    # both instances, and both polygons of the second one, are in the mask; the space between them is not
    assert dog.masks[0, 5, 5] and dog.masks[0, 25, 35] and dog.masks[0, 25, 46] and not dog.masks[0, 25, 41]
    assert not dog.masks[0, 2:4, 25].any() and samples[1].masks[0, 2, 25]


def test_errors_name_what_to_fix(tmp_path):
    root = write_phrasecut(tmp_path / "pc")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        PhraseCutReader(root, "dev")
    with pytest.raises(FileNotFoundError, match="download the val split"):
        PhraseCutReader(root, "val")
    (root / "refer_test.json").write_text(json.dumps([{"task_id": "1", "image_id": 7, "phrase": "dog"}]))
    with pytest.raises(ValueError, match="no 'Polygons'"):
        PhraseCutReader(root, "test")
    with pytest.raises(FileNotFoundError, match=r"\{image_id\}.jpg"):
        PhraseCutReader(root, "miniv", images=tmp_path)


def test_run_res_scores_phrasecut(tiny_model, tmp_path):
    out = run_res(tiny_model, PhraseCutReader(write_phrasecut(tmp_path / "pc"), "miniv"), progress=False)
    assert out.counts["samples"] == 2 and out.counts["images"] == 1
    assert set(out.metrics) == {"giou", "ciou"} and all(0.0 <= v <= 1.0 for v in out.metrics.values())


def test_cli_refuses_a_split_by_for_phrasecut_before_loading_a_model(tmp_path, capsys):
    root = write_phrasecut(tmp_path / "pc")
    code = eval_cli.main(["res", "--model", "unused", "--data", str(root), "--dataset", "phrasecut", "--split",
                          "miniv", "--split-by", "unc", "--no-progress"])
    assert code == 2 and "leave out --split-by" in capsys.readouterr().err
