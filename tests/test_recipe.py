"""``anyref recipe``: a model's stages, fits and settings run in order from one JSON file, each step timed, a stopped
recipe continued from its first unfinished step, and a bad recipe refused before anything runs."""
import json
import os
from pathlib import Path

import pytest

from anyref import AnyRef
from anyref.cli import build_parser
from train.config import PRESETS_DIR
from train.recipe import LOG, load_recipe, resolve_steps, run_recipe


def _write(path: Path, steps: list) -> Path:
    path.write_text(json.dumps({"description": "a test", "steps": steps}))
    return path


def test_the_shipped_recipe_is_valid_and_its_commands_parse():
    recipe = load_recipe("synthref-tiny")
    steps = resolve_steps(recipe, "runs/recipe")
    assert [s["name"] for s in steps][:2] == ["stage1", "stage2"] and steps[-1]["model"] == "runs/recipe/shipped"
    assert steps[1]["run"][steps[1]["run"].index("--init-from") + 1] == "runs/recipe/stage1/model"
    parser = build_parser()
    for step, before in zip(steps, [None] + steps):
        assert step["previous"] == (before and before["model"])
        if "run" in step:  # every flag the recipe gives is one its command takes
            args = parser.parse_args(step["run"])
            assert getattr(args, "out") in (step["model"], str(Path(step["model"]).parent))
            if args.command == "train":
                assert (PRESETS_DIR / f"{args.preset}.json").is_file()
    assert steps[-1]["settings"] == {"rank_redraw_window": 2}


def test_bad_recipes_say_what_to_fix(tmp_path):
    train = {"name": "a", "run": ["train", "--preset", "smoke", "--out", "{out}/a"], "model": "{out}/a/model"}
    cases = [
        ([train, {**train}], "unique"),
        ([{"name": "s", "settings": {"mask_refinements": 1}}], "no step before"),
        ([train, {"name": "s", "settings": {"no_such_thing": 1}}], "set_<name> for \\['no_such_thing'\\]"),
        ([{"name": "a", "run": ["train"]}], "model"),
        ([{"name": "a", "run": ["train"], "settings": {"x": 1}, "model": "m"}], "exactly one"),
        ([], "non-empty list"),
    ]
    for steps, message in cases:
        with pytest.raises(ValueError, match=message):
            load_recipe(str(_write(tmp_path / "bad.json", steps)))
    with pytest.raises(FileNotFoundError, match="synthref-tiny"):
        load_recipe("no-such-recipe")


@pytest.mark.slow
def test_a_recipe_runs_in_order_times_each_step_and_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "anyref" / "torch_extensions")))
    config = json.loads((PRESETS_DIR / "smoke.json").read_text())
    config["stages"] = [{**stage, "steps": 2} for stage in config["stages"]]
    (tmp_path / "smoke.json").write_text(json.dumps(config))
    path = _write(tmp_path / "recipe.json", [
        {"name": "train", "run": ["train", "--config", str(tmp_path / "smoke.json"), "--out", "{out}/train",
                                  "--threads", "1", "--no-progress"], "model": "{out}/train/model"},
        {"name": "refined", "settings": {"mask_crf": {"iterations": 3}, "group_threshold": 0.6}},
        {"name": "verifier", "run": ["fit-verifier", "--model", "{previous}", "--steps", "2", "--eval-every", "1",
                                     "--val", "4", "--batch-size", "2", "--threshold", "0.3",
                                     "--out", "{out}/verifier", "--no-progress"], "model": "{out}/verifier"}])
    out = str(tmp_path / "run")
    planned = run_recipe(load_recipe(str(path)), out, "test", dry_run=True)
    assert [s["status"] for s in planned["steps"]] == ["to run"] * 3 and not Path(out).exists()  # nothing written
    (Path(out) / "train").mkdir(parents=True)
    (Path(out) / "train" / "left-by-an-earlier-run.txt").write_text("")  # as a stopped training leaves its folder
    log = run_recipe(load_recipe(str(path)), out, "test")
    assert [s["status"] for s in log["steps"]] == ["ran"] * 3 and log["complete"]
    assert [s.get("continued", False) for s in log["steps"]] == [True, False, False]
    assert all(s["seconds"] > 0 for s in log["steps"])
    assert log["total_seconds"] == pytest.approx(sum(s["seconds"] for s in log["steps"]), abs=0.2)
    assert json.loads((Path(out) / LOG).read_text())["total_seconds"] == log["total_seconds"]
    model = AnyRef.from_pretrained(log["model"])  # each step built on the one before
    assert model.config.mask_crf == {"iterations": 3} and model.config.group_threshold == 0.6
    assert model.config.answer_verifier and model.config.verify_by_pixels == 0.3
    again = run_recipe(load_recipe(str(path)), out, "test")  # every model is written: nothing runs again
    assert [s["status"] for s in again["steps"]] == ["written before"] * 3
    assert [s["seconds"] for s in again["steps"]] == [s["seconds"] for s in log["steps"]]
    assert [s.get("continued", False) for s in again["steps"]] == [True, False, False]  # kept with its seconds
    assert "not run again" in capsys.readouterr().out
    digests = [s["weights_sha256"] for s in log["steps"]]
    assert all(digests) and [s["weights_sha256"] for s in again["steps"]] == digests
    assert digests[0] == digests[1] != digests[2]  # settings change no weight; the verifier's fit does
    # On one machine and one commit a recipe is bit-reproducible: a second run from nothing writes the same weights.
    rerun = run_recipe(load_recipe(str(path)), str(tmp_path / "rerun"), "test")
    assert [s["weights_sha256"] for s in rerun["steps"]] == digests


def test_a_failing_step_is_named_and_writes_nothing(tmp_path):
    path = _write(tmp_path / "recipe.json", [
        {"name": "named", "run": ["fit-verifier", "--model", "synthref-tiny", "--steps", "0", "--out",
                                  "{out}/never"], "model": "{out}/never"}])
    with pytest.raises(RuntimeError, match="'named' failed"):
        run_recipe(load_recipe(str(path)), str(tmp_path / "run"), "test")
    assert not (tmp_path / "run" / "never").exists()
    log = json.loads((tmp_path / "run" / LOG).read_text()) if (tmp_path / "run" / LOG).exists() else None
    assert log is None or not log["complete"]


def test_a_written_model_the_recipe_would_not_write_now_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    AnyRef.from_pretrained("synthref-tiny").save_pretrained(str(out / "a" / "model"))  # as if step "a" had run
    first = {"name": "a", "run": ["train", "--preset", "smoke", "--out", "{out}/a"], "model": "{out}/a/model"}

    def recipe(refinements: int, preset: str = "smoke") -> dict:
        return load_recipe(str(_write(tmp_path / "recipe.json", [
            {**first, "run": ["train", "--preset", preset, "--out", "{out}/a"]},
            {"name": "s1", "settings": {"mask_refinements": refinements}},
            {"name": "s2", "settings": {"group_threshold": 0.6}}])))

    log = run_recipe(recipe(1), str(out), "test")  # "a" has no log record (copied in): taken as it is
    assert [s["status"] for s in log["steps"]] == ["written before", "ran", "ran"]
    with pytest.raises(ValueError, match=r"'s1'.*mask_refinements\": 1.*mask_refinements\": 2.*remove .*s1"):
        run_recipe(recipe(2), str(out), "test", dry_run=True)  # the recipe was edited since s1 was written
    (out / "s1" / "config.json").unlink()  # s1 must run again, and s2 was built on its old model
    with pytest.raises(ValueError, match=r"'s2'.* step 's1' before it is not"):
        run_recipe(recipe(1), str(out), "test")
    assert not (out / "s1" / "config.json").exists()  # refused before anything ran
    log = json.loads((out / LOG).read_text())
    log["steps"][0]["command"] = ["anyref", "train", "--preset", "smoke", "--out", str(out / "a")]
    (out / LOG).write_text(json.dumps(log))  # a logged command that differs from the recipe's now
    with pytest.raises(ValueError, match=r"'a'.*--preset smoke .*--preset other"):
        run_recipe(recipe(1, preset="other"), str(out), "test", dry_run=True)
