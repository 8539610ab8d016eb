"""Image referring from PASCAL VOC 2012's released segmentation masks: an example object of a class from one image
points at every pixel of that class in another; only classes shown in two images are drawn."""

import numpy as np
import pytest
from PIL import Image

from eval.datasets import VocImageReferringReader
from train.data import Mixture

DOG, CAT, PERSON = 12, 8, 15


def write_voc(root):
    """VOCdevkit/VOC2012 with train.txt of three images: "a" two dogs and a person (a boundary band over the
    first dog's top row), "b" one dog, "c" a cat."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    layouts = {"a": [(DOG, (2, 10, 2, 10)), (DOG, (12, 20, 2, 10)), (PERSON, (2, 10, 20, 30))],
               "b": [(DOG, (5, 15, 5, 25))], "c": [(CAT, (0, 8, 0, 8))]}
    for name, objects in layouts.items():
        classes, instances = np.zeros((24, 32), np.uint8), np.zeros((24, 32), np.uint8)
        for number, (category, (y0, y1, x0, x1)) in enumerate(objects, 1):
            classes[y0:y1, x0:x1], instances[y0:y1, x0:x1] = category, number
        if name == "a":
            classes[2, 2:10] = instances[2, 2:10] = 255  # VOC's boundary band, over the first dog's top row
        Image.fromarray(np.full((24, 32, 3), 50, np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(classes, mode="L").save(voc / "SegmentationClass" / f"{name}.png")
        Image.fromarray(instances, mode="L").save(voc / "SegmentationObject" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nc\n")
    return root / "VOCdevkit"


def test_an_example_object_points_at_its_class_in_another_image(tmp_path):
    reader = VocImageReferringReader(write_voc(tmp_path), items=8, masked=1.0)
    assert reader.categories == [DOG] and reader.by_category[DOG] == {"a": [1, 2], "b": [1]}
    for sample in reader:
        meta = sample.meta
        assert meta["category"] == "dog" and {meta["query_image_id"], meta["example_image_id"]} == {"a", "b"}
        (example,) = sample.references
        assert example.mask is not None
        assert example.mask.sum() in ((200,) if meta["example_image_id"] == "b" else (56, 64))  # one object
        assert sample.answer[:1] == ["dog"] and sample.masks[0].sum() == (120 if meta["query_image_id"] == "a" else 200)
        assert not sample.masks[0, 2].any()  # the boundary band is not the dog
    assert all(s.references[0].mask is None for s in VocImageReferringReader(write_voc(tmp_path / "2"), items=3,
                                                                             masked=0.0))


def test_the_image_referring_source_reads_voc_and_errors_name_what_to_fix(tmp_path):
    voc = write_voc(tmp_path)
    mix = Mixture({"voc": {"source": "image_referring", "dataset": "pascal_voc", "data": str(voc)}}, seed=0)
    assert mix.reference_kinds() == {"example"} and mix.sample(3).source == "voc-image-referring"
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VocImageReferringReader(voc, "val")
    with pytest.raises(FileNotFoundError, match="VOC 2012 image folder"):
        VocImageReferringReader(tmp_path / "nowhere")
