"""The semantic-segmentation group's other two datasets in their released layouts: COCO-Stuff's label maps (pixel
value = label - 1, 255 unlabelled, names from its labels.txt) and PACO-LVIS's COCO-format objects and parts."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from train.paco_lvis import PacoLvisReader, part_phrase
from train.semseg import SemSegReader, plain_name, read_class_names

COCOSTUFF_LABELS = "0: unlabeled\n1: person\n2: bicycle\n96: building-other\n157: sky-other\n171: wall-brick\n"


def write_cocostuff(root, lisa=False):
    """COCO-Stuff as its README sets it up (root/labels.txt, root/dataset/{images,annotations}/train2017/), or as
    LISA keeps it (root/train2017/*.png, the images elsewhere: returns that folder). Each map holds a person (value
    0), sky-other (156) and unlabelled pixels (255)."""
    labels_dir = root / "train2017" if lisa else root / "dataset" / "annotations" / "train2017"
    images_dir = root.parent / "coco" / "train2017" if lisa else root / "dataset" / "images" / "train2017"
    labels_dir.mkdir(parents=True)
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        stem = f"{i:012d}"
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(images_dir / f"{stem}.jpg")
        labels = np.full((30, 40), 156, np.uint8)
        labels[10:25, 5:15] = 0
        labels[:3] = 255
        Image.fromarray(labels).save(labels_dir / f"{stem}.png")
    (root / "labels.txt").write_text(COCOSTUFF_LABELS)
    return images_dir


def test_cocostuff_label_maps_one_named_category_per_sample(tmp_path):
    write_cocostuff(tmp_path / "cocostuff")
    reader = SemSegReader(tmp_path / "cocostuff", layout="cocostuff")
    assert len(reader) == 2 and reader.dataset == "cocostuff"
    assert reader.names == {0: "person", 1: "bicycle", 95: "building", 156: "sky", 170: "wall brick"}
    samples = [reader.sample(0, np.random.default_rng(seed)) for seed in range(12)]
    assert {s.references[0] for s in samples} == {"the person", "the sky"}  # never the unlabelled 255
    person = next(s for s in samples if s.references == ["the person"])
    assert person.masks[0].sum() == 15 * 10 and person.meta["category_id"] == 1  # labels.txt's id, not the value
    sky = next(s for s in samples if s.references == ["the sky"])
    assert not sky.masks[0, :3].any() and sky.meta["category_id"] == 157


def test_cocostuff_as_lisa_keeps_it_with_an_image_folder(tmp_path):
    images = write_cocostuff(tmp_path / "cocostuff", lisa=True)
    with pytest.raises(FileNotFoundError, match="image folder"):
        SemSegReader(tmp_path / "cocostuff", layout="cocostuff")
    reader = SemSegReader(tmp_path / "cocostuff", layout="cocostuff", images=images)
    assert reader.sample(1, np.random.default_rng(0)).image.shape == (30, 40, 3)
    (tmp_path / "cocostuff" / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labels.txt from its repository"):
        SemSegReader(tmp_path / "cocostuff", layout="cocostuff", images=images)
    with pytest.raises(ValueError, match="unknown semantic-segmentation layout 'coco'"):
        SemSegReader(tmp_path / "cocostuff", layout="coco")


def test_numbered_names_and_plain_names(tmp_path):
    (tmp_path / "labels.txt").write_text(COCOSTUFF_LABELS)
    assert read_class_names(tmp_path / "labels.txt")[157] == "sky-other"
    (tmp_path / "mixed.txt").write_text("1: person\nbicycle\n")
    with pytest.raises(ValueError, match="numbers some lines"):
        read_class_names(tmp_path / "mixed.txt")
    assert [plain_name(n) for n in ("desk-stuff", "wall-brick", "bottle_(drink)", "trash_can")] == \
        ["desk", "wall brick", "bottle", "trash can"]
    assert part_phrase("mug:handle") == "handle of the mug" and part_phrase("car_(automobile)") == "car"


def _rle(mask):
    encoded = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_paco(root):
    """paco/annotations/paco_lvis_v1_train.json over coco/train2017/*.jpg: one image holding a mug, its handle in
    two pieces (two annotations), and a bottle_(drink)."""
    images = root / "coco" / "train2017"
    images.mkdir(parents=True)
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(images / "000000000042.jpg")
    mug, handle_a, handle_b, bottle = (np.zeros((32, 48), bool) for _ in range(4))
    mug[5:20, 5:20] = True
    handle_a[8:12, 20:24] = True
    handle_b[14:18, 20:24] = True
    bottle[2:30, 30:40] = True
    annotations = [{"id": i + 1, "image_id": 42, "category_id": cat, "segmentation": _rle(m), "bbox": [0, 0, 1, 1]}
                   for i, (cat, m) in enumerate([(1, mug), (2, handle_a), (2, handle_b), (3, bottle)])]
    data = {"images": [{"id": 42, "file_name": "train2017/000000000042.jpg", "height": 32, "width": 48}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "mug"}, {"id": 2, "name": "mug:handle"},
                           {"id": 3, "name": "bottle_(drink)"}]}
    (root / "paco" / "annotations").mkdir(parents=True)
    (root / "paco" / "annotations" / "paco_lvis_v1_train.json").write_text(json.dumps(data))
    return root / "paco", root / "coco", handle_a | handle_b


def test_paco_lvis_objects_and_parts_with_every_piece_in_the_mask(tmp_path):
    paco, coco, handle = write_paco(tmp_path)
    reader = PacoLvisReader(paco, coco)  # the folder; its annotations/ holds the split's file
    assert len(reader) == 1 and reader.dataset == "paco_lvis"
    samples = {s.references[0]: s for s in (reader.sample(0, np.random.default_rng(seed)) for seed in range(20))}
    assert set(samples) == {"the mug", "the handle of the mug", "the bottle"}
    part = samples["the handle of the mug"]
    assert np.array_equal(part.masks[0], handle) and part.answer[0] == "handle of the mug"
    with pytest.raises(FileNotFoundError, match="paco_lvis_v1_val.json"):
        PacoLvisReader(paco, coco, "val")
    with pytest.raises(FileNotFoundError, match="train2017/000000000042.jpg"):
        PacoLvisReader(paco / "annotations" / "paco_lvis_v1_train.json", tmp_path)
