"""Training presets: every preset loads, "extends" resolves as documented, a preset resolves to the config its runs
were trained with (a change to a preset others extend would silently change them too), and presets whose runs
branch from another run's checkpoint agree with that run up to the branch point."""
import hashlib
import json
from pathlib import Path

import pytest

from train.config import PRESETS_DIR, load_config, preset_path, read_config_data

FINGERPRINTS = Path(__file__).parent / "preset_fingerprints.json"


def fingerprint(name: str) -> str:
    """sha256 (16 hex digits) of a preset's resolved JSON, its description left out."""
    data = read_config_data(preset_path(name))
    data.pop("description", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def test_every_preset_resolves_to_the_config_its_runs_were_trained_with():
    """tests/preset_fingerprints.json pins each preset's resolved config. A new preset, or a deliberate change to
    one, is added there with fingerprint(name); a change that reaches presets one did not mean to change (by editing
    a preset they extend) fails here, naming them."""
    pinned = json.loads(FINGERPRINTS.read_text())
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    assert sorted(pinned) == names, "add a new preset to tests/preset_fingerprints.json (or remove a deleted one)"
    now = {name: fingerprint(name) for name in names}
    changed = {name: now[name] for name in names if now[name] != pinned[name]}
    assert not changed, f"these presets now resolve to a different config (new fingerprints): {changed}"


def test_extends_overlays_dicts_replaces_lists_and_null_removes(tmp_path):
    base = {"description": "base", "model": {"tiny": {"text_width": 192, "config_overrides": {"a": 1, "b": 2}}},
            "mixture": {"synthref": {"ratio": 1.0, "tasks": {"text": 4, "box": 2}}},
            "stages": [{"name": "one", "steps": 10}, {"name": "two", "steps": 20}], "lr": 1e-3, "seed": 3}
    (tmp_path / "base.json").write_text(json.dumps(base))
    child = {"extends": "base.json", "model": {"tiny": {"config_overrides": {"b": None, "c": 3}}},
             "mixture": {"synthref": {"tasks": {"box": 5}}}, "stages": [{"name": "only", "steps": 5}], "seed": None}
    (tmp_path / "child.json").write_text(json.dumps(child))
    data = read_config_data(tmp_path / "child.json")
    assert data == {"model": {"tiny": {"text_width": 192, "config_overrides": {"a": 1, "c": 3}}},
                    "mixture": {"synthref": {"ratio": 1.0, "tasks": {"text": 4, "box": 5}}},
                    "stages": [{"name": "only", "steps": 5}], "lr": 1e-3}
    assert read_config_data(tmp_path / "base.json") == base  # the base file itself is read as it is
    assert load_config(path=tmp_path / "child.json").seed == 0  # null: the field's default


def test_a_config_of_ones_own_extends_a_preset_by_name(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"extends": "synthref-tiny", "stages": [
        {"name": "joint", "steps": 100, "trainable": "all", "pointer_weight": 0.5}]}))
    mine, shipped = load_config(path=tmp_path / "mine.json"), load_config("synthref-tiny")
    assert mine.total_steps == 100 and shipped.total_steps == 10_500
    assert mine.model == shipped.model and mine.mixture == shipped.mixture and mine.lr == shipped.lr


def test_bad_extends_say_what_to_fix(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(ValueError, match="circle: a -> b -> a"):
        read_config_data(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "no-such-preset"}))
    with pytest.raises(ValueError, match="unknown preset 'no-such-preset' \\(anyref train --list-presets"):
        read_config_data(tmp_path / "c.json")
    with pytest.raises(ValueError, match="did you mean synthref-tiny-deep"):
        preset_path("synthref-tiny-delp")
    (tmp_path / "d.json").write_text(json.dumps({"extends": "missing.json"}))
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_config_data(tmp_path / "d.json")
    (tmp_path / "e.json").write_text(json.dumps({"extends": ["synthref-tiny"]}))
    with pytest.raises(ValueError, match='"extends" names a preset or a .json file'):
        read_config_data(tmp_path / "e.json")
    for stages, message in (("x", '"stages" must be a list of stages'),
                            ([{"name": "a", "step": 3}], r"stage 'a': unknown fields \['step'\]; a stage takes"),
                            ([{"name": "a"}], "stage 'a': needs steps")):
        (tmp_path / "f.json").write_text(json.dumps({"extends": "synthref-tiny", "stages": stages}))
        with pytest.raises(ValueError, match=message):
            load_config(path=tmp_path / "f.json")


def _shared_part(preset: dict, stages: int, free: tuple[str, ...]) -> dict:
    """What a run branched from another's checkpoint after its first ``stages`` stages must share with it:
    everything but the run settings, the later stages and the model settings named in ``free`` (settings that act
    only after the branch point)."""
    run_settings = {"description", "stages", "eval_n", "eval_every", "checkpoint_every", "refocus_lambda"}
    kept = {k: v for k, v in preset.items() if k not in run_settings}
    tiny = dict(kept["model"]["tiny"])
    tiny["config_overrides"] = {k: v for k, v in tiny.get("config_overrides", {}).items() if k not in free}
    return {**kept, "model": {"tiny": tiny}, "stages": preset["stages"][:stages]}


# preset -> (the preset whose run it branches from, how many of its stages come before the branch point, settings
# it may change). The first four branch from synthref-tiny-full-grid's run (the model shipped before
# image_token_merge): refocusing acts in the joint stage only (the ablation sets its lambda on the command line); the
# continuations change their settings after step 8,500. The next two continue a finished synthref-tiny-merge run;
# synthref-tiny-long lengthens synthref-tiny's joint stage and synthref-tiny-joint-lr2 / -lr07 raise / lower its
# learning rate (their runs branched from the warm-up's end); synthref-tiny-joint-frozen-encoders freezes the
# encoders in synthref-tiny-joint-lr07's joint stage (its run branched from the recipe run's warm-up end).
BRANCHING_PRESETS = {"synthref-ablation": ("synthref-tiny-full-grid", 1, ("refocus_answer_grad",)),
                     "synthref-tiny-answer-grad": ("synthref-tiny-full-grid", 1, ("refocus_answer_grad",)),
                     "synthref-token-norm": ("synthref-tiny-full-grid", 2, ("mask_token_norm",)),
                     "synthref-group-focus": ("synthref-tiny-full-grid", 2, ("group_weight",)),
                     "synthref-tiny-continue": ("synthref-tiny-merge", 2, ()),
                     "synthref-caption-focus": ("synthref-tiny-merge", 2, ()),
                     "synthref-tiny-long": ("synthref-tiny", 1, ()),
                     "synthref-tiny-joint-lr2": ("synthref-tiny", 1, ()),
                     "synthref-tiny-joint-lr07": ("synthref-tiny", 1, ()),
                     "synthref-tiny-joint-frozen-encoders": ("synthref-tiny-joint-lr07", 1, ())}


def test_every_preset_loads_and_the_branching_presets_match_the_run_they_branch_from():
    """Presets whose runs branch from a checkpoint of another preset's run must agree with it on everything up to
    the branch point (a different model or prompt layout would silently change what the branch continues)."""
    for path in PRESETS_DIR.glob("*.json"):
        load_config(path.stem)
    for name, (base, stages, free) in BRANCHING_PRESETS.items():
        preset = read_config_data(preset_path(name))
        source = read_config_data(preset_path(base))
        assert _shared_part(preset, stages, free) == _shared_part(source, stages, free), name
    tiny = read_config_data(preset_path("synthref-tiny-full-grid"))
    # and the comparison can fail: a different model width is caught
    wider = json.loads(json.dumps(tiny))
    wider["model"]["tiny"]["text_width"] *= 2
    assert _shared_part(wider, 1, ()) != _shared_part(tiny, 1, ())


def test_init_from_override_replaces_a_continued_models_directory():
    config = load_config("synthref-tiny-nowhere", init_from="runs/mine/model")
    assert config.model == {"init_from": "runs/mine/model", "add_nowhere": True}
    assert load_config("synthref-tiny-nowhere").model["init_from"] == "runs/synthref-tiny/model"
    with pytest.raises(ValueError, match="builds a new model"):
        load_config("synthref-tiny", init_from="runs/mine/model")


def test_print_config_shows_the_resolved_config_and_trains_nothing(capsys):
    from train.loop import main
    assert main(["--preset", "synthref-tiny-refine-train", "--print-config", "--seed", "7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(load_config("synthref-tiny-refine-train", seed=7).to_dict()))
    assert printed["model"] == {"init_from": "anyref/pretrained/synthref-tiny"}  # inherited through two presets
    with pytest.raises(SystemExit, match="--out RUN_FOLDER is required"):
        main(["--preset", "smoke"])


def test_list_presets_shows_each_preset_once_under_the_one_it_extends(capsys):
    from train.loop import main
    assert main(["--list-presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert sorted(names) == sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    depth = {line.split()[0]: (len(line) - len(line.lstrip())) // 2 for line in lines}
    assert depth["synthref-tiny"] == 0 and depth["synthref-tiny-deep"] == 1
    deep = names.index("synthref-tiny-deep")
    base = max(i for i in range(deep) if depth[names[i]] == 0)  # the nearest root above it
    assert names[base] == "synthref-tiny" and all(len(line) <= 118 for line in lines)


def test_a_run_is_resumed_only_with_the_config_it_started_with(tmp_path):
    from train.config import config_changes
    from train.loop import main
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-000002")
    started = load_config("smoke")
    (out / "train_config.json").write_text(json.dumps(started.to_dict()))
    assert config_changes(started.to_dict(), load_config("smoke")) == []
    # the saved file is itself a config: the way to resume after the preset changed
    assert load_config(path=out / "train_config.json") == started
    with pytest.raises(SystemExit, match=r"another config \(it differs in seed\).*--config .*train_config.json"):
        main(["--preset", "smoke", "--out", str(out), "--seed", "5"])
    edited = {**started.to_dict(), "lr": 1.0}
    edited["stages"][0]["steps"] += 1
    assert config_changes(edited, started) == ["lr", "stages.0.steps"]
    # a field added to TrainConfig after the run was saved counts at its default
    older = started.to_dict()
    older.pop("eval_tasks")
    assert config_changes(older, started) == []


def test_field_types_are_checked_by_name(tmp_path):
    for changes, message in (({"micro_batch": "2"}, r"micro_batch must be int, not '2' \(str\); write the number"),
                             ({"lr": "1e-4"}, "lr must be float, not '1e-4'"),
                             ({"num_threads": True}, r"num_threads must be int or None, not True \(bool\)"),
                             ({"precision": 16}, r"precision must be str, not 16 \(int\)$"),
                             ({"stages": [{"name": "a", "steps": "100"}]}, "stage 'a': steps must be int")):
        (tmp_path / "f.json").write_text(json.dumps({"extends": "smoke", **changes}))
        with pytest.raises(ValueError, match=message):
            load_config(path=tmp_path / "f.json")
    (tmp_path / "f.json").write_text(json.dumps({"extends": "smoke", "lr": 1, "refocus_lambda": None}))
    assert load_config(path=tmp_path / "f.json").lr == 1  # an int where a float goes, and None where allowed
