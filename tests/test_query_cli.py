"""anyref segment / describe / select: command-line references, the files written, and that they hold exactly what
the Python API answers."""
import json

import numpy as np
import pytest
from PIL import Image

import anyref.cli
from anyref import AnyRef, Audio, Box, ExampleImage, MaskRef
from anyref.overlays import render_overlay
from anyref.reference_args import parse_reference, parse_references, read_mask_file
from anyref.synthref import SynthRef, SynthRefConfig


@pytest.fixture(scope="module")
def shipped():
    return AnyRef.from_pretrained("synthref-tiny")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A SynthRef test scene with a text prompt, and a group scene with its mask reference and candidates, on disk."""
    root = tmp_path_factory.mktemp("scenes")
    world = SynthRef(SynthRefConfig())
    text = world.split("test", "text", 1)[0]
    group = world.split("test", "group", 1)[0]
    Image.fromarray(text.image).save(root / "scene.png")
    Image.fromarray(group.image).save(root / "group.png")
    Image.fromarray(group.references[1].mask.astype(np.uint8) * 255).save(root / "ref.png")
    for k, mask in enumerate(group.candidates):
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"cand{k}.png")
    np.save(root / "cands.npy", group.candidates)
    return root, text, group


def _png_mask(path):
    return np.asarray(Image.open(path)) > 0


def test_references_are_read_as_the_table_says(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ex.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "a.wav").write_bytes(b"")
    assert parse_reference("the red circle") == "the red circle"
    assert parse_reference("text:box:1,2,3,4") == "box:1,2,3,4"
    assert parse_reference("box:1,2,30.5,40") == Box(1, 2, 30.5, 40)
    assert parse_reference("left:of") == "left:of"  # an unknown prefix is text
    example = parse_reference(f"example:{tmp_path / 'ex.png'}@{tmp_path / 'm.png'}")
    assert isinstance(example, ExampleImage) and example.mask.sum() == 9
    assert parse_reference(f"example:{tmp_path / 'ex.png'}").mask is None
    assert isinstance(parse_reference(f"audio:{tmp_path / 'a.wav'}"), Audio)
    ref = parse_reference(f"mask:{tmp_path / 'm.png'}")
    assert isinstance(ref, MaskRef) and ref.mask.dtype == bool and ref.mask.sum() == 9
    refs = parse_references(["the object left of", "box:0,0,4,4"])
    assert refs == ["the object left of", Box(0, 0, 4, 4)]


@pytest.mark.parametrize("argument, error, words", [
    ("box:1,2,3", ValueError, "box:X0,Y0,X1,Y1"),
    ("box:a,b,c,d", ValueError, "box:X0,Y0,X1,Y1"),
    ("box:5,5,1,1", ValueError, "x1 > x0"),
    ("audio:", ValueError, "needs a file"),
    ("audio:missing.wav", FileNotFoundError, "missing.wav"),
    ("example:missing.png", FileNotFoundError, "example file"),
    ("mask:missing.png", FileNotFoundError, "mask file"),
    ("", ValueError, "empty argument"),
])
def test_bad_references_say_what_to_fix(argument, error, words):
    with pytest.raises(error, match=words):
        parse_reference(argument)
    with pytest.raises(ValueError, match="at least one reference"):
        parse_references([])


def test_mask_files_refuse_pickles_and_stacks(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain .npy"):
        read_mask_file(tmp_path / "obj.npy", "mask")
    np.save(tmp_path / "stack.npy", np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="one H x W mask"):
        read_mask_file(tmp_path / "stack.npy", "mask")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        read_mask_file(tmp_path / "bad.png", "mask")


def test_segment_writes_exactly_the_api_answer(shipped, scenes, tmp_path, capsys):
    root, text, _ = scenes
    out = tmp_path / "answer"
    expression = text.references[0]
    assert anyref.cli.main(["segment", str(root / "scene.png"), expression, "--out", str(out)]) == 0
    expected = shipped.segment(str(root / "scene.png"), expression)
    record = json.loads((out / "result.json").read_text())
    assert record["text"] == expected.text and record["references"] == f'"{expression}"'
    assert len(record["masks"]) == len(expected.masks) == 1  # the shipped model answers this scene with a mask
    for entry, mask, score in zip(record["masks"], expected.masks, expected.scores):
        assert np.array_equal(_png_mask(out / entry["file"]), mask)
        assert entry["area"] == int(mask.sum()) and entry["score"] == pytest.approx(float(score), abs=1e-4)
        assert entry["box"] == list(Box.around(mask).as_tuple())
    assert Image.open(out / "overlay.png").size[0] == text.image.shape[1]
    assert expected.text in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder was renamed


def test_segment_reads_references_in_order(shipped, scenes, tmp_path):
    root, _, _ = scenes
    out = tmp_path / "answer"
    assert anyref.cli.main(["segment", str(root / "scene.png"), "the object left of", "box:60,60,120,120",
                            "--mask-refinements", "0", "--out", str(out)]) == 0
    shipped_k0 = AnyRef.from_pretrained("synthref-tiny")
    shipped_k0.set_mask_refinements(0)
    expected = shipped_k0.segment(str(root / "scene.png"), ["the object left of", Box(60, 60, 120, 120)])
    record = json.loads((out / "result.json").read_text())
    assert record["text"] == expected.text and record["references"] == '"the object left of" + box (60, 60, 120, 120)'
    assert [_png_mask(out / e["file"]).sum() for e in record["masks"]] == [int(m.sum()) for m in expected.masks]


def test_describe_prints_the_caption_and_writes_only_when_asked(shipped, scenes, tmp_path, capsys):
    root, _, group = scenes
    box = Box.around(group.candidates[0])
    argument = "box:" + ",".join(f"{v:g}" for v in box.as_tuple())
    assert anyref.cli.main(["describe", str(root / "group.png"), argument]) == 0
    caption = shipped.describe(str(root / "group.png"), box)
    assert capsys.readouterr().out.splitlines()[0] == caption
    assert not list(tmp_path.iterdir())
    assert anyref.cli.main(["describe", str(root / "group.png"), argument, "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "result.json").read_text())["text"] == caption
    # an earlier answer's folder is replaced whole
    assert anyref.cli.main(["segment", str(root / "group.png"), argument, "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "result.json").read_text())["references"].startswith("box (")


@pytest.mark.parametrize("given", ["pngs", "npy"])
def test_select_writes_the_api_group(shipped, scenes, tmp_path, given):
    root, _, group = scenes
    files = ([str(root / f"cand{k}.png") for k in range(len(group.candidates))] if given == "pngs"
             else [str(root / "cands.npy")])
    out = tmp_path / "group"
    assert anyref.cli.main(["select", str(root / "group.png"), "everything below", f"mask:{root / 'ref.png'}",
                            "--candidates", *files, "--group-threshold", "0.75", "--group-empty-threshold", "0.8",
                            "--out", str(out)]) == 0
    expected = shipped.select(str(root / "group.png"), ["everything below", MaskRef(group.references[1].mask)],
                              candidates=group.candidates, threshold=0.75, empty_threshold=0.8)
    record = json.loads((out / "result.json").read_text())
    assert record["selected"] == expected.indices.tolist() and record["source"] == "caller"
    assert record["threshold"] == 0.75 and record["empty_threshold"] == 0.8  # what the group was chosen at
    assert record["candidate_scores"] == pytest.approx(expected.candidate_scores.tolist(), abs=1e-4)
    for entry, index in zip(record["masks"], expected.indices):
        assert entry["file"] == f"mask_{index:02d}.png"
        assert np.array_equal(_png_mask(out / entry["file"]), group.candidates[index])


def test_bad_command_lines_write_nothing(scenes, tmp_path, capsys):
    root, _, _ = scenes
    out = tmp_path / "answer"
    assert anyref.cli.main(["segment", str(tmp_path / "missing.png"), "the circle", "--out", str(out)]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert anyref.cli.main(["segment", str(root / "scene.png"), "box:1,2", "--out", str(out)]) == 2
    assert "box:X0,Y0,X1,Y1" in capsys.readouterr().err
    assert anyref.cli.main(["segment", str(root / "scene.png"), f"mask:{root / 'cands.npy'}",
                            "--out", str(out)]) == 2  # a stack of masks is not one reference mask
    assert not out.exists()
    # no --candidates: SAM's automatic masks, which the shipped tiny SAM never finds (it was not trained on points)
    assert anyref.cli.main(["select", str(root / "scene.png"), "all circles", "--out", str(out)]) == 2
    assert "pass --candidates" in capsys.readouterr().err and not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert anyref.cli.main(["segment", str(root / "scene.png"), "the circle", "--out", str(mine)]) == 2
    assert "not an earlier anyref answer folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    # an answer folder with a foreign file beside its result.json, the current folder, a device that is not one:
    # refused before the model loads
    (mine / "result.json").write_text("{}")
    assert anyref.cli.main(["segment", str(root / "scene.png"), "the circle", "--out", str(mine)]) == 2
    assert "not an earlier anyref answer folder" in capsys.readouterr().err
    assert anyref.cli.main(["segment", str(root / "scene.png"), "the circle", "--out", "."]) == 2
    assert "current folder" in capsys.readouterr().err
    assert anyref.cli.main(["segment", str(root / "scene.png"), "the circle", "--device", "gpu"]) == 2
    assert "give cpu, cuda or cuda:N" in capsys.readouterr().err


def test_reference_prefixes_ignore_case_and_likely_typos_are_refused(tmp_path):
    assert parse_reference("Box:1,2,30,40") == Box(1, 2, 30, 40)
    for typo, meant in (("boxes:1,2,30,40", "box"), ("exmaple:cat.png", "example"), ("MASKS:m.png", "mask")):
        with pytest.raises(ValueError, match=f"mistyped {meant}: reference"):
            parse_reference(typo)
    assert parse_reference("text:boxes:1,2,30,40") == "boxes:1,2,30,40"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "icon@2x.png")
    assert parse_reference(f"example:{tmp_path / 'icon@2x.png'}").mask is None  # a file name with an @
    with pytest.raises(ValueError, match="e.g. mask:mask.png"):
        parse_reference("mask:")


def test_mask_files_must_be_binary(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "grey.png")
    np.save(tmp_path / "soft.npy", np.linspace(0, 1, 64).reshape(8, 8))
    for name in ("grey.png", "soft.npy"):
        with pytest.raises(ValueError, match="not a binary mask"):
            read_mask_file(tmp_path / name, "mask")
    np.save(tmp_path / "ones.npy", np.eye(8))
    assert read_mask_file(tmp_path / "ones.npy", "mask").sum() == 8


def test_overlay_gives_each_mask_its_own_colour():
    image = np.full((6, 6, 3), 100, np.uint8)
    masks = np.zeros((3, 6, 6), bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    picture = np.asarray(render_overlay(image, "", masks))
    band = picture.shape[0] - 6
    colours = {tuple(picture[band + k, k]) for k in range(3)}
    assert len(colours) == 3 and tuple(picture[band + 5, 5]) == (100, 100, 100)
    single = np.asarray(render_overlay(image, "", masks[0]))
    assert np.array_equal(single[band:], np.asarray(render_overlay(image, "", masks[:1]))[band:])


def _broken_pngs(tmp_path) -> list:
    """PNG mask files PIL fails on in different ways: a zeroed data-chunk length (SyntaxError: broken PNG file), and
    a truncated header length (ValueError)."""
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    at = good.index(b"IDAT")
    broken = {"broken.png": good[:at - 4] + b"\0\0\0\0" + good[at:], "header.png": good[:11] + b"\0" + good[12:]}
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in broken]


def test_unreadable_mask_files_are_named(tmp_path, monkeypatch):
    np.savez(tmp_path / "archive.npz", mask=np.eye(4))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")  # np.load reads it as an archive
    with pytest.raises(ValueError, match="archive.npy' is a .npz archive, not a .npy array"):
        read_mask_file(tmp_path / "archive.npy", "mask")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npy' is not a plain .npy array"):
        read_mask_file(tmp_path / "empty.npy", "mask")
    for path in _broken_pngs(tmp_path):
        with pytest.raises(ValueError, match=f"{path.name}' is not an image PIL can read"):
            read_mask_file(path, "mask")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # good.png's 64 pixels are then a decompression bomb
    with pytest.raises(ValueError, match="good.png' is not an image PIL can read"):
        read_mask_file(tmp_path / "good.png", "mask")
