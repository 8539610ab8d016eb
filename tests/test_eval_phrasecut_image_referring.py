"""Image referring from PhraseCut (the paper's "PhraseCut crops of same-category objects"): the crop of one annotated
object points at every annotated object of its category in another image; phrases naming one object count it once."""

import json

import numpy as np
import pytest
from PIL import Image

from anyref.samples import OBJ
from eval.datasets import PhraseCutImageReferringReader
from train.data import Mixture


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_phrasecut(root, split="miniv"):
    """Image 7 (40 x 60): two dogs (ann 1, a square; ann 2, two polygons with a gap at x 40-42), named again by a
    second phrase (ann 1), and a car; image 8 (30 x 50): one dog (ann 9); image 9: a car-less tree with no name."""
    (root / "images").mkdir(parents=True)
    for image_id, (height, width) in {7: (40, 60), 8: (30, 50), 9: (20, 20)}.items():
        pixels = np.random.default_rng(image_id).integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
        (root / "images" / f"{image_id}.png").rename(root / "images" / f"{image_id}.jpg")  # lossless pixels
    tasks = [
        {"task_id": "7__1_2", "image_id": 7, "ann_ids": [1, 2], "phrase": "black dogs",
         "phrase_structure": {"name": "dog"},
         "Polygons": [[square(2, 2, 12, 12)], [square(30, 20, 40, 30), square(42, 20, 50, 30)]]},
        {"task_id": "7__1", "image_id": 7, "ann_ids": [1], "phrase": "dog on the left",
         "phrase_structure": {"name": " Dog "}, "Polygons": [[square(2, 2, 12, 12)]]},
        {"task_id": "7__3", "image_id": 7, "ann_ids": [3], "phrase": "red car", "phrase_structure": {"name": "car"},
         "Polygons": [[square(20, 0, 30, 5)]]},
        {"task_id": "8__9", "image_id": 8, "ann_ids": [9], "phrase": "brown dog", "phrase_structure": {"name": "dog"},
         "Polygons": [[square(10, 5, 30, 25)]]},
        {"task_id": "9__4", "image_id": 9, "ann_ids": [4], "phrase": "tree", "phrase_structure": {},
         "Polygons": [[square(0, 0, 5, 5)]]},
    ]
    (root / f"refer_{split}.json").write_text(json.dumps(tasks))
    return root


def test_a_crop_of_one_object_points_at_its_category_in_another_image(tmp_path):
    root = write_phrasecut(tmp_path / "pc")
    reader = PhraseCutImageReferringReader(root, "miniv", items=12, masked=1.0)
    # the car is in one image only, the tree has no name; the second phrase's dog (ann 1) is not counted again
    assert reader.categories == ["dog"] and reader.by_category["dog"] == {7: [0, 1], 8: [3]}
    crops = {1: (10, 10), 2: (10, 20), 9: (20, 20)}  # example_ann_id -> the crop's height, width
    seen = set()
    for sample in reader:
        meta, (example,) = sample.meta, sample.references
        assert {meta["query_image_id"], meta["example_image_id"]} == {7, 8} and meta["category"] == "dog"
        assert sample.answer == ["dog", " ", OBJ, "."] and sample.source == "phrasecut-image-referring"
        ann = meta["example_ann_id"]
        seen.add(ann)
        assert example.image.shape == (*crops[ann], 3) and example.mask.shape == crops[ann]
        source = np.asarray(Image.open(root / "images" / f"{meta['example_image_id']}.jpg"))
        x0, y0 = {1: (2, 2), 2: (30, 20), 9: (10, 5)}[ann]
        assert np.array_equal(example.image, source[y0:y0 + crops[ann][0], x0:x0 + crops[ann][1]])
        if ann == 2:  # two polygons: the gap between them is in the crop but not in the mask
            assert example.mask[5, 5] and not example.mask[5, 11] and example.mask[5, 15]
        target = sample.masks[0]
        if meta["query_image_id"] == 7:  # both dogs, every polygon, not the car
            assert target[5, 5] and target[25, 35] and target[25, 46] and not target[25, 41] and not target[2, 25]
        else:
            assert target[15, 20] and target.shape == (30, 50)
    assert seen == {1, 2, 9}
    again = PhraseCutImageReferringReader(root, "miniv", items=12, masked=1.0)
    assert all(np.array_equal(a.masks, b.masks) and a.meta == b.meta for a, b in zip(reader, again))
    assert all(s.references[0].mask is None for s in PhraseCutImageReferringReader(root, "miniv", items=4,
                                                                                   masked=0.0))


def test_the_image_referring_source_reads_phrasecut_and_errors_name_what_to_fix(tmp_path):
    root = write_phrasecut(tmp_path / "pc")
    mix = Mixture({"pc": {"source": "image_referring", "dataset": "phrasecut", "data": str(root), "split": "miniv"}},
                  seed=0)
    assert mix.reference_kinds() == {"example"} and mix.sample(2).source == "phrasecut-image-referring"
    with pytest.raises(ValueError, match="unknown dataset 'voc'.*pascal_voc"):
        Mixture({"x": {"source": "image_referring", "dataset": "voc", "data": str(root)}}, seed=0)
    with pytest.raises(ValueError, match="needs \"data\""):
        Mixture({"x": {"source": "image_referring", "dataset": "phrasecut"}}, seed=0)
    tasks = json.loads((root / "refer_miniv.json").read_text())
    (root / "refer_val.json").write_text(json.dumps([t for t in tasks if t["image_id"] != 8]))
    with pytest.raises(ValueError, match="no category .* shown in two images"):
        PhraseCutImageReferringReader(root, "val")
    with pytest.raises(ValueError, match="masked must be a probability"):
        PhraseCutImageReferringReader(root, "miniv", masked=2)
