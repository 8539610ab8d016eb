"""The training mixture over public datasets' own layouts (small fixtures of each), sampled by index: every source
gives samples the collator takes, the draw is a pure function of (seed, index), and bad options say what to fix."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anyref.batching import collate, prepare
from anyref.samples import OBJ
from tests.test_eval_avsbench import write_s4
from tests.test_eval_grefcoco import write_grefcoco
from tests.test_eval_phrasecut import write_phrasecut
from tests.test_train_semseg import write_cocostuff, write_paco
from train.config import TrainConfig, source_kind
from train.data import SOURCES, Mixture
from train.semseg import read_class_names


def write_ade20k(root):
    """root/images/training/*.jpg, root/annotations/training/*.png (class indices), root/objectInfo150.txt as
    ADEChallengeData2016 ships it (tab-separated, comma-separated synonyms)."""
    rng = np.random.default_rng(0)
    (root / "images" / "training").mkdir(parents=True)
    (root / "annotations" / "training").mkdir(parents=True)
    for i in range(3):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(
            root / "images" / "training" / f"ADE_train_{i:08d}.jpg")
        labels = np.zeros((40, 50), np.uint8)
        labels[5:20, 5:30] = 1
        labels[25:35, 10:45] = 3
        Image.fromarray(labels).save(root / "annotations" / "training" / f"ADE_train_{i:08d}.png")
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n"
                                            "2\t0.1072\t6046\t612\tbuilding, edifice\n3\t0.0878\t8265\t796\tsky\n")
    return root


def test_class_names_from_ade20k_csv_and_text(tmp_path):
    write_ade20k(tmp_path / "ade")
    assert read_class_names(tmp_path / "ade" / "objectInfo150.txt") == {1: "wall", 2: "building", 3: "sky"}
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    assert read_class_names(tmp_path / "names.txt") == {1: "cat", 3: "dog"}
    (tmp_path / "plain.csv").write_text("Idx,Name\n1,pool table\n2,sky\n")
    assert read_class_names(tmp_path / "plain.csv") == {1: "pool table", 2: "sky"}
    # semantic-segmentation-pytorch's object150_info.csv: a name cannot be told from its synonyms
    (tmp_path / "object150_info.csv").write_text("Idx,Ratio,Train,Val,Name\n57,0.0042,1,1,pool;table;billiard;table\n")
    with pytest.raises(ValueError, match="objectInfo150.txt"):
        read_class_names(tmp_path / "object150_info.csv")
    (tmp_path / "header.txt").write_text("Idx,Name\nwall\n")
    with pytest.raises(ValueError, match="header"):
        read_class_names(tmp_path / "header.txt")


def test_every_public_source_feeds_the_collator(tiny_model, tmp_path):
    refer = write_grefcoco(tmp_path / "refer")
    avs = tmp_path / "avs"
    write_s4(avs / "s4_data", avs / "s4_meta_data.csv")
    ade = write_ade20k(tmp_path / "ade")
    mixture = {
        "res": {"ratio": 1, "data": str(refer), "split": "val"},
        "reg": {"ratio": 1, "data": str(refer), "dataset": "refcoco", "split": "val"},
        "gres": {"ratio": 1, "data": str(refer), "split": "val"},
        "avs": {"ratio": 1, "data": str(avs), "subset": "s4"},
        "semseg": {"ratio": 1, "data": str(ade)},
    }
    mix = Mixture(mixture, seed=0)
    assert mix.reference_kinds() == {"text", "box", "audio"}
    samples = [mix.sample(i) for i in range(40)]
    assert {s.source for s in samples} >= {"refcoco", "grefcoco", "avsbench-s4", "ade20k"}
    regions = [s for s in samples if s.task == "describe"]
    assert regions and all(OBJ in s.answer and s.masks.shape[0] == 1 for s in regions)
    assert all(s.answer[0] in s.meta["sentences"] for s in regions)  # one of the ref's sentences
    semseg = [s for s in samples if s.source == "ade20k"]
    assert all(s.references[0] in ("the wall", "the sky") and s.masks[0].any() for s in semseg)
    batch = collate([prepare(s, tiny_model.builder) for s in samples[:8]], tiny_model.ids.pad)
    assert batch.input_ids.shape[0] == 8
    again = Mixture(mixture, seed=0)
    for i in (0, 7, 33):
        assert again.sample(i).meta == samples[i].meta  # sample i depends only on (seed, i)


def test_one_source_drawn_from_several_datasets(tiny_model, tmp_path):
    """The paper's semantic-segmentation group (ADE20K, COCO-Stuff, PACO-LVIS) and two RES datasets in one mixture:
    entries of other names say their source with "source"; each dataset is drawn at its own ratio."""
    refer = write_grefcoco(tmp_path / "refer")
    paco, coco, _ = write_paco(tmp_path / "paco-root")
    write_cocostuff(tmp_path / "cocostuff")
    mixture = {
        "semseg": {"ratio": 1, "data": str(write_ade20k(tmp_path / "ade"))},
        "cocostuff": {"source": "semseg", "ratio": 1, "layout": "cocostuff", "data": str(tmp_path / "cocostuff")},
        "paco_lvis": {"source": "semseg", "ratio": 1, "layout": "paco_lvis", "data": str(paco), "images": str(coco)},
        "refcoco": {"source": "res", "ratio": 1, "data": str(refer), "split": "val"},
        "phrasecut": {"source": "res", "ratio": 1, "dataset": "phrasecut", "split": "miniv",
                      "data": str(write_phrasecut(tmp_path / "phrasecut"))},
    }
    mix = Mixture(mixture, seed=3)
    assert mix.reference_kinds() == {"text"}
    samples = [mix.sample(i) for i in range(60)]
    assert {s.source for s in samples} == {"ade20k", "cocostuff", "paco_lvis", "refcoco", "phrasecut"}
    batch = collate([prepare(s, tiny_model.builder) for s in samples[:8]], tiny_model.ids.pad)
    assert batch.input_ids.shape[0] == 8
    assert [Mixture(mixture, seed=3).sample(i).meta for i in (0, 11, 59)] == [samples[i].meta for i in (0, 11, 59)]
    # an entry named after its source draws items as before; another entry of it draws its own
    assert mix.sources["semseg"].seed == 3 and mix.sources["cocostuff"].seed != mix.sources["paco_lvis"].seed != 3
    without = {name: options for name, options in mixture.items() if name != "cocostuff"}
    assert Mixture(without, seed=3).sample(5).source != "cocostuff"
    with pytest.raises(ValueError, match=r"'stuff' \(source 'semantic'\); available"):
        Mixture({"stuff": {"source": "semantic", "ratio": 1}}, seed=0)
    stages = [{"name": "s", "steps": 1, "trainable": "all", "mixture": {"cocostuff": {"source": "res"}}}]
    with pytest.raises(ValueError, match=r"cocostuff's ratio only, not \['source'\]"):
        TrainConfig.from_dict({"model": {"tiny": {}}, "mixture": {"cocostuff": mixture["cocostuff"]}, "stages": stages})


def test_the_paper_mixture_in_the_docs_names_real_sources_and_options(tmp_path, monkeypatch):
    """docs/training.md's whole-paper mixture: every entry a source that exists, each reading its data (here
    missing, so each fails on its first path, not on an option it does not know)."""
    text = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    mixture = json.loads(re.search(r'```json\n"mixture": (\{.*?\n\})\n```', text, re.S).group(1))
    assert {source_kind(name, options) for name, options in mixture.items()} <= set(SOURCES)
    assert len(mixture) == 15
    monkeypatch.chdir(tmp_path)  # the documented relative paths lead nowhere here
    for name, options in mixture.items():
        with pytest.raises(FileNotFoundError, match="data"):
            Mixture({name: options}, seed=0)


def test_a_wrong_dataset_path_stops_the_run_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    import train.loop

    def build_model(config):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(train.loop, "build_model", build_model)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": {"tiny": {}}, "stages": [{"name": "s", "steps": 1, "trainable": "all"}],
                                  "mixture": {"semseg": {"data": str(tmp_path / "ADEChallengeData2016")}}}))
    assert train.loop.main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "ADEChallengeData2016" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_source_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown data sources"):
        Mixture({"coco": {"ratio": 1}}, seed=0)
    with pytest.raises(ValueError, match='needs "data"'):
        Mixture({"res": {"ratio": 1}}, seed=0)
    with pytest.raises(FileNotFoundError):
        Mixture({"semseg": {"ratio": 1, "data": str(tmp_path / "missing")}}, seed=0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['relational_probability'\]"):
        Mixture({"synthref": {"ratio": 1, "relational_probability": 0.6}}, seed=0)
    with pytest.raises(ValueError, match="relational_prob must be in"):
        Mixture({"synthref": {"ratio": 1, "relational_prob": 1.5}}, seed=0)


def test_a_stage_cannot_change_the_synthref_world():
    stages = [{"name": "joint", "steps": 1, "trainable": "all",
               "mixture": {"synthref": {"tasks": {"text": 1}, "relational_prob": 0.9}}}]
    with pytest.raises(ValueError, match=r"ratio and tasks only, not \['relational_prob'\]"):
        TrainConfig.from_dict({"model": {"tiny": {}}, "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})


def test_relational_prob_reaches_the_synthref_stream():
    """The option changes how often text prompts are relational, and only through SynthRefConfig."""
    def relational_share(prob):
        source = Mixture({"synthref": {"ratio": 1, "relational_prob": prob, "tasks": {"text": 1}}}, seed=0)
        kinds = [source.sample(i).meta["kind"] for i in range(60)]
        return kinds.count("relational") / len(kinds)
    assert relational_share(0.0) == 0.0
    assert relational_share(1.0) > relational_share(0.35) > 0.0


def test_relational_answer_reaches_the_synthref_stream():
    def answers(order):
        source = Mixture({"synthref": {"ratio": 1, "relational_prob": 1.0, "relational_answer": order,
                                       "tasks": {"text": 1}}}, seed=0)
        return [source.sample(i).answer[0] for i in range(20)]
    restated = [a for a in answers("landmark_first") if " is the " in a]
    assert len(restated) >= 5 and not any(" is the " in a for a in answers("as_asked"))
    with pytest.raises(ValueError, match="relational_answer must be"):
        Mixture({"synthref": {"ratio": 1, "relational_answer": "first"}}, seed=0)



@pytest.mark.parametrize("mixture, stage_mixture, words", [
    ({"synthref": {"ratio": 0}}, {}, "at least one source with a ratio > 0"),
    ({"synthref": {"ratio": float("nan")}}, {}, "give a number >= 0"),
    ({"synthref": [1]}, {}, "must be an object of options"),
    ({"synthref": {"ratio": 1}}, {"sythref": {"ratio": 0}}, "names source 'sythref'"),
    ({"synthref": {"ratio": 1}, "res": {"ratio": 0, "data": "x"}}, {"res": {"ratio": 1, "split": "val"}},
     r"change res's ratio only, not \['split'\]"),
    ({"synthref": {"ratio": 1}}, {"synthref": {"ratio": 0}}, "stage 'joint''s mixture needs at least one"),
])
def test_mixture_ratios_and_stage_sources_are_checked(mixture, stage_mixture, words):
    stages = [{"name": "joint", "steps": 1, "trainable": "all", "mixture": stage_mixture}]
    with pytest.raises(ValueError, match=words):
        TrainConfig.from_dict({"model": {"tiny": {}}, "mixture": mixture, "stages": stages})


def test_trained_kinds_are_those_of_the_tasks_and_sources_drawn():
    """What export clears from untrained_references: only kinds some drawn task quotes."""
    mix = Mixture({"synthref": {"ratio": 1, "tasks": {"text": 1, "box": 0}}}, seed=0)
    assert mix.reference_kinds() == {"text"}
    assert mix.reference_kinds([{}, {"synthref": {"tasks": {"audio1": 1}}}]) == {"text", "audio"}
    assert mix.reference_kinds([{"synthref": {"tasks": {"mask_caption": 1}}}]) == {"mask"}  # the stage replaces
    assert Mixture({"synthref": {"ratio": 1}}, seed=0).reference_kinds() == {"text", "box", "example", "audio", "mask"}
