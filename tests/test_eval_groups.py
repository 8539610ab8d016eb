"""Mask groups over COCO-format annotations: gRefCOCO / RefCOCO expressions as groups over the image's instances,
rule-drawn groups (category, same category, absolute and relative position), the groups runner and CLI, and the
training sources that read them - all on the refer fixture written in the official layout."""
import dataclasses
import json

import numpy as np
import pytest

from anyref.batching import collate, prepare
from anyref.references import MaskRef
from eval import cli
from eval.datasets import CocoGroupReader, ExpressionGroupReader, GrefReader, ResReader
from eval.runners import run_groups
from tests.test_eval_grefcoco import write_grefcoco
from train.data import Mixture


@pytest.fixture
def root(tmp_path):
    return write_grefcoco(tmp_path / "refer")


def test_expression_groups_over_all_instances(root):
    reader = ExpressionGroupReader(GrefReader(root, "val"))
    both, cat, _ = list(reader)
    assert both.task == "select" and both.meta["candidate_ann_ids"] == [10, 11]
    assert both.candidates.shape == (2, 48, 64) and both.selected.tolist() == [True, True]
    assert cat.selected.tolist() == [False, False] and cat.references == ["the cat"]
    (crowd_image,) = list(ExpressionGroupReader(GrefReader(root, "testA")))
    assert crowd_image.meta["candidate_ann_ids"] == [13]  # the crowd annotation is no candidate
    single = list(ExpressionGroupReader(ResReader(root, "refcoco", "val")))
    assert [s.selected.tolist() for s in single] == [[True, False], [True, False], [False, True]]


def test_rule_groups_follow_their_rule(root):
    reader = CocoGroupReader(root / "refcoco" / "instances.json", items=40, seed=1)
    seen = set()
    for sample in reader:
        rule = sample.meta["rule"]
        seen.add(rule)
        ids = sample.meta["candidate_ann_ids"]
        categories = [reader.index.annotation(a)["category_id"] for a in ids]
        names = [reader.index.categories[c] for c in categories]
        if rule == "category":
            assert sample.references == [f"all {sample.meta['category']}"]
            assert sample.selected.tolist() == [n == sample.meta["category"] for n in names]
        else:
            if rule != "absolute":
                text, ref = sample.references
                assert isinstance(ref, MaskRef)
                position = ids.index(sample.meta["ref_ann_id"])
                assert not sample.selected[position]  # the reference is never part of its own group
                np.testing.assert_array_equal(ref.mask, sample.candidates[position])
    assert seen == {"category", "same_category", "absolute", "relative"}
    first, again = reader[3], CocoGroupReader(root / "refcoco" / "instances.json", items=40, seed=1)[3]
    assert first.references[0] == again.references[0] and (first.selected == again.selected).all()
    with pytest.raises(ValueError, match="unknown group rules"):
        CocoGroupReader(root / "refcoco" / "instances.json", rules=("colour",))
    with pytest.raises(FileNotFoundError, match="instances"):
        CocoGroupReader(root / "missing.json")


def test_run_groups_and_cli(tiny_model, root, tmp_path):
    out = run_groups(tiny_model, ExpressionGroupReader(GrefReader(root, "val")), progress=False,
                     overlays=tmp_path / "png")
    assert set(out.metrics) == {"giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"} and out.counts["samples"] == 3
    assert out.counts["empty_groups_gt"] == 2 and out.counts["candidates"] == 6
    assert len(list((tmp_path / "png").glob("*.png"))) == 3
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    results = tmp_path / "groups.json"
    assert cli.main(["groups", "--model", str(model_dir), "--data", str(root), "--out", str(results),
                     "--no-progress"]) == 0
    written = json.loads(results.read_text())
    assert written["benchmark"] == "groups" and written["dataset"] == "grefcoco" and written["counts"]["samples"] == 3


def test_group_sources_feed_the_collator(tiny_model, root):
    instances = str(root / "refcoco" / "instances.json")
    mixture = Mixture({"groups": {"ratio": 1.0, "instances": instances},
                       "expression_groups": {"ratio": 1.0, "data": str(root), "split": "val"},
                       "image_referring": {"ratio": 0.5, "instances": instances}}, seed=0)
    samples = [mixture.sample(i) for i in range(8)]
    assert {s.task for s in samples} == {"select", "segment"}
    assert mixture.reference_kinds() == {"text", "mask", "example"}
    batch = collate([prepare(s, tiny_model.builder) for s in samples], tiny_model.ids.pad)
    assert int(batch.candidate_slots.sum()) == sum(len(s.candidates) for s in samples if s.task == "select")
    output = tiny_model(batch)
    assert float(output.terms["group"]) > 0 and output.n_masks == sum(s.task == "segment" for s in samples)


def test_image_referring_points_from_one_image_at_another(root):
    from eval.datasets import ImageReferringReader

    reader = ImageReferringReader(root / "refcoco" / "instances.json", items=6, masked=1.0)
    assert reader.categories == [1]  # person is in both images; the dog's second annotation is a crowd
    for sample in reader:
        meta = sample.meta
        assert meta["category"] == "person" and meta["query_image_id"] != meta["example_image_id"]
        (example,) = sample.references
        assert example.mask is not None and example.mask.shape == example.image.shape[:2]
        assert sample.answer[0] == "person" and sample.masks.shape == (1, *sample.image.shape[:2])
        assert sample.masks[0].any()
    whole = ImageReferringReader(root / "refcoco" / "instances.json", items=3, masked=0.0)
    assert all(s.references[0].mask is None for s in whole)
    with pytest.raises(ValueError, match="probability"):
        ImageReferringReader(root / "refcoco" / "instances.json", masked=2.0)


def test_groups_take_no_target_from_the_annotation(tiny_model, root):
    """A targeted expression whose target is no candidate (a crowd annotation) selects nothing, yet is scored as
    targeted, as ReLA scores it; a reader without the flag (rule-drawn groups) is empty when nothing is chosen."""
    _, cat, _ = list(ExpressionGroupReader(GrefReader(root, "val")))
    assert cat.meta["no_target"] and not cat.selected.any()
    crowd_only = dataclasses.replace(cat, meta={**cat.meta, "no_target": False})
    unflagged = dataclasses.replace(cat, meta={})

    class Listed(list):
        dataset, split = "mine", "val"

    out = run_groups(tiny_model, Listed([cat, crowd_only, unflagged]), progress=False)
    assert out.counts["samples"] == 3 and out.counts["empty_groups_gt"] == 2


def test_benchmark_images_are_kept_out_of_training_sources(root):
    """RefCOCO-family and gRefCOCO val/test images are COCO train2014 images: exclude_images_of drops them."""
    from eval.datasets.benchmark_images import evaluated_image_ids

    assert evaluated_image_ids(root, "refcoco") == {1, 2}  # val refs on image 1; testA on 2 (train ones too)
    assert evaluated_image_ids(root, "grefcoco") == {1, 2}
    instances = root / "refcoco" / "instances.json"
    kept = CocoGroupReader(instances, items=10, seed=0, exclude_image_ids={1})
    assert kept.image_ids == [2] and {s.meta["image_id"] for s in kept} == {2}
    with pytest.raises(ValueError, match="no non-crowd instance"):  # every image is a benchmark's: nothing left
        Mixture({"groups": {"ratio": 1, "instances": str(instances),
                            "exclude_images_of": [{"data": str(root), "dataset": "refcoco"}]}}, seed=0)
    with pytest.raises(ValueError, match="exclude_images_of takes entries like"):
        Mixture({"groups": {"ratio": 1, "instances": str(instances), "exclude_images_of": ["refcoco"]}}, seed=0)
