"""save_pretrained / from_pretrained round trips, LoRA adapters, strict and weights-only loading."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from anyref import AnyRef
from anyref.builders import build_tiny
from anyref.checkpoint import PRETRAINED_DIR
from anyref.lora import enable_lora, merge_lora
from encoders.checkpoints import CheckpointError, load_pth
from tests.conftest import scene


def test_round_trip_gives_identical_masks(overfit_model, tmp_path):
    model, image, _ = overfit_model
    before = model.segment(image, "the two squares")
    model.save_pretrained(tmp_path / "model")
    loaded = AnyRef.from_pretrained(tmp_path / "model")
    after = loaded.segment(image, "the two squares")
    assert after.text == before.text
    assert np.array_equal(after.masks, before.masks) and len(after.masks) == 2
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)


def test_lora_adapter_round_trip_and_merge(tmp_path):
    model = build_tiny(seed=4)
    enable_lora(model, r=4, alpha=8, dropout=0.0)
    for name, param in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    lm_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lm_names and all("language_model" in n for n in lm_names)  # CLIP's q_proj/v_proj untouched
    image = scene(1)
    before = model.segment(image, "the red circle")
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    loaded = AnyRef.from_pretrained(tmp_path / "lora")
    after = loaded.segment(image, "the red circle")
    assert after.text == before.text and np.array_equal(after.masks, before.masks)
    merge_lora(loaded)
    merged = loaded.segment(image, "the red circle")
    assert merged.text == before.text


def test_saving_the_shipped_model_keeps_its_tokenizer_files(tmp_path):
    # transformers writes how a tokenizer was loaded ("is_local", "local_files_only") into tokenizer_config.json;
    # a saved model carries what the tokenizer is, so saving the shipped model again gives its files byte for byte
    shipped = AnyRef.from_pretrained("synthref-tiny")
    saved = shipped.save_pretrained(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (saved / name).read_bytes() == (PRETRAINED_DIR / "synthref-tiny" / name).read_bytes(), name


def test_wrong_keys_are_named(tmp_path):
    model = build_tiny(seed=0)
    model.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights["surprise.weight"] = torch.zeros(2)
    weights.pop("obj_projection.0.bias")
    weights["obj_projection.2.weight"] = torch.zeros(3, 3)
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        AnyRef.from_pretrained(tmp_path / "m")
    message = str(error.value)
    assert "surprise.weight" in message and "obj_projection.0.bias" in message
    assert "obj_projection.2.weight" in message and "shape" in message


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build_tiny(seed=0)
    model.save_pretrained(tmp_path / "m")
    first = sorted(p.name for p in (tmp_path / "m").iterdir())
    # shareable like any folder and file under the umask, not mkdtemp's private 0700
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()} == {0o666 & ~mask}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("anyref.checkpoint.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == first
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left behind


def test_pth_files_load_weights_only(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"a": torch.ones(2)}}, good)
    assert torch.equal(load_pth(good)["a"], torch.ones(2))
    evil = tmp_path / "evil.pth"
    torch.save({"a": torch.ones(1), "payload": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_pth(evil)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError):
        load_pth(truncated)
    with pytest.raises(FileNotFoundError):
        load_pth(tmp_path / "absent.pth")


class _Payload:
    """An arbitrary pickled object: loading it would run code, so weights_only must refuse it."""


def test_unknown_model_name_lists_shipped_models():
    with pytest.raises(FileNotFoundError, match="shipped models"):
        AnyRef.from_pretrained("no-such-model")


def test_save_refuses_to_replace_a_folder_of_other_files(tiny_model, tmp_path):
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me")
    with pytest.raises(ValueError, match="not an earlier AnyRef model directory"):
        tiny_model.save_pretrained(notes.parent)
    assert notes.read_text() == "keep me"
    with pytest.raises(ValueError, match="not a folder"):
        tiny_model.save_pretrained(notes)
    assert notes.read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    tiny_model.save_pretrained(tmp_path / "empty")
    tiny_model.save_pretrained(tmp_path / "empty")  # an earlier AnyRef directory is replaced
    assert AnyRef.from_pretrained(tmp_path / "empty").ids == tiny_model.ids


def test_extra_files_are_written_and_replaced_with_the_weights(tiny_model, tmp_path):
    out = tmp_path / "fitted"
    tiny_model.save_pretrained(out, extra_files={"report.json": '{"epoch": 1}\n'})
    assert (out / "report.json").read_text() == '{"epoch": 1}\n'
    assert AnyRef.from_pretrained(out).ids == tiny_model.ids
    tiny_model.save_pretrained(out)  # a later save without the report replaces the folder, report included
    assert not (out / "report.json").exists()
    for bad in ("config.json", "sub/report.json", "../report.json"):
        with pytest.raises(ValueError, match="plain file name"):
            tiny_model.save_pretrained(tmp_path / "other", extra_files={bad: "{}"})
    assert not (tmp_path / "other").exists()


@pytest.fixture(scope="module")
def saved_directory(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def _llava_field_of_wrong_type(directory):
    import json

    config = json.loads((directory / "config.json").read_text())
    config["llava"]["text_config"]["hidden_size"] = "big"
    (directory / "config.json").write_text(json.dumps(config))


def _without_sam(directory):
    import json

    config = json.loads((directory / "config.json").read_text())
    del config["sam"]
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "config.json").write_text("[]"), r"config.json holds a JSON list, not an object"),
    (_without_sam, r"config.json lacks the fields \['sam'\]"),
    (_llava_field_of_wrong_type, r'config.json: its "llava" entry does not make a LLaVA config'),
    (lambda d: (d / "config.json").write_text('{"llava": '), r"could not read .*config.json as JSON"),
    (lambda d: (d / "tokenizer.json").write_text('{"added_tokens": ['), r"could not read .*tokenizer.json as JSON"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'),
     r'model.safetensors.index.json is not a weights index: it lacks a "weight_map"'),
])
def test_damaged_directories_name_the_file_and_the_fault(saved_directory, tmp_path, damage, words):
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(saved_directory, directory)
    damage(directory)
    with pytest.raises(CheckpointError, match=words):
        AnyRef.from_pretrained(directory)
