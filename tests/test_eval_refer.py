"""RefCOCO-family readers on a tiny dataset written in refer's own layout (refs pickle + COCO instances.json with
polygon and RLE masks + JPEG images), and the RES / REG runners and the CLI end to end with the tiny model."""
import hashlib
import json
import os
import pickle
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

import anyref.cli
from eval import cli as eval_cli
from eval import results as eval_results
from eval.datasets import RegReader, ResReader
from eval.datasets._common import decode_segmentation
from eval.datasets.refer import ReferIndex
from eval.runners import run_reg, run_res

SIZES = {1: (48, 64), 2: (40, 56)}  # image id -> (height, width)


def file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, computed here without pycocotools: run lengths over the column-major pixels,
    starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def rle_mask() -> np.ndarray:
    mask = np.zeros(SIZES[1], dtype=bool)
    mask[5:20, 30:60] = True
    mask[25:30, 2:4] = True
    return mask


def crowd_mask() -> np.ndarray:
    mask = np.zeros(SIZES[2], dtype=bool)
    mask[10:35, 3:9] = True
    return mask


def write_refer(root, dataset="refcoco", split_by="unc"):
    """refer layout: root/{dataset}/refs({split_by}).p, root/{dataset}/instances.json, root/images/mscoco/..."""
    folder = root / dataset
    folder.mkdir(parents=True)
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, (h, w) in SIZES.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(images_dir / file_name(image_id))
    compressed = mask_api.encode(np.asfortranarray(rle_mask().astype(np.uint8)))
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 8, 30, 20],
         "segmentation": [[10, 8, 40, 8, 40, 28, 10, 28]]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [2, 5, 58, 25],
         "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}},
        {"id": 12, "image_id": 2, "category_id": 2, "iscrowd": 1, "bbox": [3, 10, 6, 25],
         "segmentation": uncompressed_rle(crowd_mask())},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [30, 2, 20, 30],
         "segmentation": [[30, 2, 50, 2, 50, 12, 30, 12], [30, 20, 40, 20, 40, 32]]},
    ]
    instances = {
        "images": [{"id": i, "file_name": file_name(i), "height": h, "width": w} for i, (h, w) in SIZES.items()],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))

    def sentences(*texts, first_id):
        return [{"sent": t, "raw": t.capitalize(), "tokens": t.split(), "sent_id": first_id + i}
                for i, t in enumerate(texts)]

    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": sentences("man on the left", "person in red", first_id=100)},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 2,
         "sentences": sentences("the dog", first_id=102)},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testA", "category_id": 2,
         "sentences": sentences("dogs at the back", "crowd of dogs", first_id=103)},
        {"ref_id": 3, "ann_id": 13, "image_id": 2, "split": "train", "category_id": 1,
         "sentences": sentences("the man", first_id=105)},
    ]
    with open(folder / f"refs({split_by}).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return root


@pytest.fixture
def refer_root(tmp_path):
    return write_refer(tmp_path / "refer")


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_res_reader_one_sample_per_sentence_with_the_right_masks(refer_root):
    reader = ResReader(refer_root, "refcoco", "val")
    samples = list(reader)
    assert len(reader) == len(samples) == 3
    assert [s.meta["expression"] for s in samples] == ["man on the left", "person in red", "the dog"]
    assert [s.meta["ref_id"] for s in samples] == [0, 0, 1]
    assert [s.meta["sent_id"] for s in samples] == [100, 101, 102]
    first = samples[0]
    assert first.references == ["man on the left"] and first.task == "segment"
    assert first.image.shape == (48, 64, 3) and first.masks.shape == (1, 48, 64)
    assert first.meta["category"] == "person" and first.meta["file_name"] == file_name(1)
    polygon = first.masks[0]
    # the polygon is the box x 10..40, y 8..28: its pixels and nothing outside (up to edge rasterisation)
    assert polygon[10:27, 11:39].all() and not polygon[:7].any() and not polygon[:, 42:].any()
    assert abs(int(polygon.sum()) - 30 * 20) < 60
    np.testing.assert_array_equal(samples[2].masks[0], rle_mask())  # compressed RLE, exactly


def test_res_reader_uncompressed_rle_and_multi_part_polygons(refer_root):
    crowd = next(iter(ResReader(refer_root, "refcoco", "testA")))
    np.testing.assert_array_equal(crowd.masks[0], crowd_mask())
    (man,) = list(ResReader(refer_root, "refcoco", "train"))
    mask = man.masks[0]
    assert mask[4:10, 32:48].all() and mask[24:29, 38].all()  # both polygons
    assert not mask[14:18].any()  # the gap between them


def test_the_index_holds_only_what_samples_need_and_draws_the_same_masks(refer_root):
    """Each process holds a whole split's index: the fields no reader uses are dropped and polygons become arrays
    of the same values, so every mask is the one pycocotools draws from the file itself."""
    path = refer_root / "refcoco" / "instances.json"
    raw = json.loads(path.read_text())
    raw["images"][0].update(coco_url="http://images.cocodataset.org/x.jpg", license=3)
    raw["annotations"].append({"id": 14, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 8, 31, 21],
                               "area": 600.5, "attribute_ids": [1, 7],  # PACO's extras
                               "segmentation": [[10.1, 8.3, 40.7, 8.1, 40.5, 28.9, 10.3, 28.5]]})  # 1/5-px ties
    path.write_text(json.dumps(raw))
    index = ReferIndex(path, [], None, (), None)
    assert index.images[1] == {"id": 1, "file_name": file_name(1), "height": 48, "width": 64}
    assert index.annotations_of_image == {1: [10, 11, 14], 2: [12, 13]}
    for ann in raw["annotations"]:
        held = index.annotation(ann["id"])
        assert set(held) == {"id", "image_id", "category_id", "iscrowd", "bbox", "segmentation"}
        if isinstance(ann["segmentation"], list):
            assert all(isinstance(polygon, np.ndarray) for polygon in held["segmentation"])
        np.testing.assert_array_equal(index.mask(ann["id"]),
                                      decode_segmentation(ann["segmentation"], *SIZES[ann["image_id"]]))


def test_res_reader_accepts_the_dataset_folder_and_an_images_folder(refer_root):
    reader = ResReader(refer_root / "refcoco", "refcoco", "val",
                       images=refer_root / "images" / "mscoco" / "images" / "train2014")
    assert len(list(reader)) == 3


def test_res_reader_errors_name_what_to_fix(refer_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'testC'.*testA, train, val"):
        ResReader(refer_root, "refcoco", "testC")
    with pytest.raises(FileNotFoundError, match="data directory"):
        ResReader(tmp_path / "nowhere", "refcoco", "val")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\).p"):
        ResReader(refer_root, "refcocog", "val")
    with pytest.raises(ValueError, match="splitBy"):
        ResReader(refer_root, "refcoco", "val", split_by="umd")
    with pytest.raises(ValueError, match="unknown refer dataset"):
        ResReader(refer_root, "refcoco++", "val")
    with pytest.raises(FileNotFoundError, match="--images"):
        ResReader(refer_root, "refcoco", "val", images=tmp_path)
    (refer_root / "images" / "mscoco" / "images" / "train2014" / file_name(1)).unlink()
    with pytest.raises(FileNotFoundError, match="--images"):
        ResReader(refer_root, "refcoco", "val")


def test_unreadable_release_files_are_named(refer_root):
    refs = refer_root / "refcoco" / "refs(unc).p"
    whole = refs.read_bytes()
    for broken in (b"", whole[: len(whole) // 2]):  # EOFError "Ran out of input", UnpicklingError "truncated"
        refs.write_bytes(broken)
        with pytest.raises(ValueError, match=r"refs\(unc\)\.p.*download it again"):
            ResReader(refer_root, "refcoco", "val")
    refs.write_bytes(whole)
    instances = refer_root / "refcoco" / "instances.json"
    instances.write_bytes('{"images": [], "info": "caf\u00e9"}'.encode("latin-1"))  # not UTF-8
    with pytest.raises(ValueError, match=r"instances\.json is not UTF-8"):
        ResReader(refer_root, "refcoco", "val")


def test_python2_refs_pickles_with_non_ascii_text_are_read(tmp_path):
    """refer's refs files were pickled by Python 2, whose byte strings Python 3 refuses to decode as ASCII; they are
    read with latin-1. The bytes are what Python 2's pickle.dump(refs, f, 2) writes for [{"sent": "caf\xe9",
    "ref_id": 7}] (SHORT_BINSTRING opcodes)."""
    from eval.datasets._common import load_pickle

    python2 = b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x04caf\xe9q\x03U\x06ref_idq\x04K\x07ua."
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(python2)  # what a plain load does
    (tmp_path / "refs(unc).p").write_bytes(python2)
    assert load_pickle(tmp_path / "refs(unc).p") == [{"sent": "caf\u00e9", "ref_id": 7}]


def test_images_are_read_as_stored_not_turned_by_their_exif_orientation(refer_root):
    """COCO annotations index the stored pixels; an EXIF orientation (3: viewers show it turned 180 degrees) must
    not move the image under them."""
    mask = ResReader(refer_root, "refcoco", "val")[0].masks[0]  # annotation 10's polygon, in stored pixels
    stored = Image.fromarray(np.repeat(mask[:, :, None], 3, axis=2).astype(np.uint8) * 255)
    exif = stored.getexif()
    exif[0x0112] = 3
    stored.save(refer_root / "images" / "mscoco" / "images" / "train2014" / file_name(1), exif=exif, quality=95)
    sample = ResReader(refer_root, "refcoco", "val")[0]
    assert sample.image.shape == (*SIZES[1], 3)
    assert sample.image[mask].mean() > 200 and sample.image[~mask].mean() < 50


def test_reg_reader_one_sample_per_ref_with_its_box_and_sentences(refer_root):
    samples = list(RegReader(refer_root, "refcoco", "val"))
    assert len(samples) == 2
    first = samples[0]
    assert first.task == "describe" and first.meta["sentences"] == ["man on the left", "person in red"]
    assert first.references[0].as_tuple() == (10.0, 8.0, 40.0, 28.0)
    assert first.answer == ["man on the left"] and first.masks.shape == (0, 48, 64)


def test_run_res_end_to_end_with_overlays(tiny_model, refer_root, tmp_path):
    out = run_res(tiny_model, ResReader(refer_root, "refcoco", "val"), limit=2, overlays=tmp_path / "png",
                  progress=False)
    assert out.counts["samples"] == 2 and out.counts["images"] == 1
    assert set(out.metrics) == {"giou", "ciou"} and all(0.0 <= v <= 1.0 for v in out.metrics.values())
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["00000_ref0_sent100.png", "00001_ref0_sent101.png"]
    with Image.open(tmp_path / "png" / pngs[0]) as picture:
        assert picture.width == 64 and picture.height > 48  # the image below a text band


@pytest.mark.slow  # pycocoevalcap's METEOR jar takes ~10 s to start
def test_run_reg_end_to_end(tiny_model, refer_root):
    out = run_reg(tiny_model, RegReader(refer_root, "refcoco", "val"), progress=False)
    assert out.counts == {"refs": 2, "empty_captions": out.counts["empty_captions"], "skipped_without_sentences": 0}
    assert set(out.metrics) == {"cider", "meteor"} and out.metrics["meteor"] >= 0


def test_cli_res_through_anyref_main(model_dir, refer_root, tmp_path, monkeypatch, capsys):
    # Only the `eval` entry point is under test here; other packages' sub-commands may be absent.
    monkeypatch.setattr(anyref.cli, "BUILTIN_COMMANDS", ())
    monkeypatch.setattr(anyref.cli, "entry_points",
                        lambda group: [e for e in entry_points(group=group) if e.name == "eval"])
    out = tmp_path / "results" / "refcoco_val.json"
    code = anyref.cli.main(["eval", "res", "--model", str(model_dir), "--data", str(refer_root),
                            "--split", "val", "--limit", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "res" and results["dataset"] == "refcoco" and results["split"] == "val"
    assert set(results["metrics"]) == {"giou", "ciou"} and results["counts"]["samples"] == 2
    assert results["model"] == str(model_dir.resolve()) and results["limit"] == 2 and results["seconds"] > 0
    assert results["command"].startswith("anyref eval res --model") and "--limit 2" in results["command"]
    provenance = results["provenance"]  # the model that ran, traceable
    assert provenance["device"] == "cpu" and provenance["dtype"] == "torch.float32"
    assert provenance["model_config_sha256"] == hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed into place
    assert '"ciou"' in capsys.readouterr().out
    # bad input: a clear message and exit status 2, no traceback
    code = anyref.cli.main(["eval", "res", "--model", str(model_dir), "--data", str(refer_root), "--split", "dev"])
    assert code == 2 and "unknown split 'dev'" in capsys.readouterr().err


def test_recorded_command_reproduces_the_inference_settings():
    """A results file's command parses back to the same run, the on/off and 'off' settings included."""
    import argparse
    import shlex

    from eval.cli import _command_line, register

    parser = argparse.ArgumentParser(prog="anyref")
    register(parser.add_subparsers(dest="command", required=True))
    given = ["eval", "synthref", "--model", "m", "--n", "7", "--example-self-mask", "off",
             "--describe-box-margin", "off", "--describe-box-prior", "on", "--mask-refinements", "0",
             "--group-threshold", "0.7", "--group-empty-threshold", "off", "--mask-crf", "iterations=3,radius=2"]
    args = parser.parse_args(given)
    command = shlex.split(_command_line(args))
    assert command[:3] == ["anyref", "eval", "synthref"]
    again = parser.parse_args(command[1:])
    settings = ("set_example_self_mask", "set_describe_box_margin", "set_describe_box_prior", "set_mask_refinements",
                "set_group_threshold", "set_group_empty_threshold", "set_mask_crf")
    assert {s: getattr(again, s) for s in settings} == {s: getattr(args, s) for s in settings}
    assert again.n == 7 and not hasattr(parser.parse_args(["eval", "synthref", "--model", "m"]), settings[0])


def _refuse_to_load(args):
    raise AssertionError("the model was loaded before --out was checked")


@pytest.mark.parametrize("case", ["a folder", "a file in the way", "an unwritable folder"])
def test_cli_checks_out_before_loading_the_model(case, refer_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(eval_cli, "load_model", _refuse_to_load)
    if case == "a folder":
        out, expected = tmp_path / "results", "is a directory"
        out.mkdir()
    elif case == "a file in the way":
        (tmp_path / "notes.txt").write_text("not a folder")
        out, expected = tmp_path / "notes.txt" / "refcoco_val.json", "is a file"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        real_access = os.access  # root may write anywhere, so the refusal is simulated
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: path != locked and real_access(path, mode, **kw))
        out, expected = locked / "refcoco_val.json", "not writable"
    code = eval_cli.main(["res", "--model", "unused", "--data", str(refer_root), "--out", str(out), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert "--out" in error and expected in error


def test_cli_prints_the_metrics_before_writing_them(model_dir, refer_root, tmp_path, monkeypatch, capsys):
    def full_disk(path, results):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(eval_results, "write_results", full_disk)
    with pytest.raises(OSError, match="No space"):
        eval_cli.main(["res", "--model", str(model_dir), "--data", str(refer_root), "--limit", "1",
                       "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert set(json.loads(capsys.readouterr().out)["metrics"]) == {"giou", "ciou"}  # a long run's figures survive
