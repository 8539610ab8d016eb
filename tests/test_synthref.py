"""SynthRef: determinism, exact visible masks, valid samples per task, unique / absent referents, group rules,
distinguishable sounds, fixed disjoint splits. Checks re-derive the answers from ``meta`` independently of the
generator's own expression code."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from anyref.references import Audio, Box, ExampleImage, MaskRef
from anyref.samples import OBJ, ReferringSample
from anyref.synthref import NO_TARGET_ANSWER, SHAPES, SYNTHREF_TASKS, SynthRef, SynthRefConfig, render_overview
from anyref.synthref.sounds import render_sound
from anyref.synthref.vocabulary import COLOUR_HUES, RELATIONS, UNLISTED_WORDS, words_of

WORLD = SynthRef()
CFG = WORLD.config
MARGIN = CFG.relation_margin * CFG.image_size
N = 40  # samples per task for the property checks


@pytest.fixture(scope="module")
def samples() -> dict[str, list[ReferringSample]]:
    return {task: WORLD.split("val", task, N) for task in SYNTHREF_TASKS}


def _arrays(sample: ReferringSample) -> list[np.ndarray]:
    out = [sample.image, sample.masks]
    if sample.candidates is not None:
        out += [sample.candidates, sample.selected]
    for ref in sample.references:
        if isinstance(ref, Audio):
            out.append(np.asarray(ref.source))
        if isinstance(ref, ExampleImage):
            out += [np.asarray(ref.image)] + ([ref.mask] if ref.mask is not None else [])
        if isinstance(ref, MaskRef):
            out.append(ref.mask)
    return out


def _same(a: ReferringSample, b: ReferringSample) -> bool:
    xs, ys = _arrays(a), _arrays(b)
    texts = [r for r in a.references if isinstance(r, str)] == [r for r in b.references if isinstance(r, str)]
    return texts and a.answer == b.answer and len(xs) == len(ys) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(xs, ys))


def _matches(obj: dict, query: dict) -> bool:
    return all(query.get(k) in (None, obj[k]) for k in ("shape", "colour", "size"))


def _offset(obj: dict, landmark: dict, relation: str) -> float:
    axis, sign = RELATIONS[relation]
    return sign * (obj["centre"][axis] - landmark["centre"][axis])


# ---------------------------------------------------------------- determinism, splits


@pytest.mark.parametrize("task", SYNTHREF_TASKS)
def test_same_seed_same_arrays(task):
    a = SynthRef().sample(task, np.random.default_rng(123))
    b = SynthRef(SynthRefConfig()).sample(task, np.random.default_rng(123))
    assert _same(a, b)
    assert not _same(a, SynthRef().sample(task, np.random.default_rng(124)))


def test_stream_deterministic_and_seeded():
    first = [next(s) for s in [WORLD.stream(5)] for _ in range(8)]
    again = [next(s) for s in [WORLD.stream(5)] for _ in range(8)]
    other = [next(s) for s in [WORLD.stream(6)] for _ in range(8)]
    assert all(_same(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(first, other))
    weighted = WORLD.stream(0, {"text": 1.0, "group": 0.0})
    assert {next(weighted).source for _ in range(10)} == {"text"}


def test_splits_fixed_disjoint_and_prefix(samples):
    again = WORLD.split("val", "text", 5)
    assert all(_same(a, b) for a, b in zip(samples["text"][:5], again))
    test = WORLD.split("test", "text", N)
    train = [next(s) for s in [WORLD.stream(0, {"text": 1.0})] for _ in range(N)]
    val_images = {s.image.tobytes() for s in samples["text"]}
    assert not val_images & {s.image.tobytes() for s in test}
    assert not val_images & {s.image.tobytes() for s in train}
    assert not {s.image.tobytes() for s in test} & {s.image.tobytes() for s in train}
    with pytest.raises(ValueError):
        WORLD.split("train", "text", 1)
    with pytest.raises(ValueError):
        WORLD.split("val", "nonsense", 1)


def test_config_validated():
    for bad in [dict(image_size=16), dict(min_objects=4, max_objects=3), dict(max_objects=20),
                dict(min_visible_fraction=0.0), dict(seed=-1)]:
        with pytest.raises(ValueError):
            SynthRefConfig(**bad)
    with pytest.raises(TypeError):
        SynthRef({"image_size": 64})


# ---------------------------------------------------------------- samples and masks


@pytest.mark.parametrize("task", SYNTHREF_TASKS)
def test_samples_valid(samples, task):
    size = CFG.image_size
    for s in samples[task]:
        assert s.source == task and s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        masks = s.meta["object_masks"]
        assert masks.dtype == bool and masks.shape == (len(s.meta["objects"]), size, size)
        assert masks.sum(axis=0).max() <= 1, "visible masks must be disjoint"
        assert all(m.sum() > 0 for m in masks)
        assert all(o["visible_fraction"] >= CFG.min_visible_fraction for o in s.meta["objects"])
        assert CFG.min_objects <= len(s.meta["objects"]) <= CFG.max_objects
        if s.task != "select":
            assert len(s.meta["mask_object_ids"]) == len(s.masks)
            for mask, ids in zip(s.masks, s.meta["mask_object_ids"]):
                assert ids and np.array_equal(mask, masks[ids].any(axis=0))
        for ref in s.references:
            if isinstance(ref, Audio):
                wave = np.asarray(ref.source)
                assert wave.dtype == np.float32 and wave.shape == (1, int(CFG.audio_seconds * CFG.sample_rate))
                assert ref.sample_rate == CFG.sample_rate and 0.2 < np.abs(wave).max() <= 1.0
            if isinstance(ref, ExampleImage):
                assert ref.image.shape == (size, size, 3) and ref.image.dtype == np.uint8
            if isinstance(ref, MaskRef):
                assert ref.mask.shape == (size, size) and ref.mask.any()


def test_masks_are_the_drawn_pixels():
    """Without pixel noise, each object's mask pixels have the hue of its colour name (a shifted or too large
    mask would take in background)."""
    world = SynthRef(SynthRefConfig(pixel_noise=0.0))
    for s in world.split("val", "box", 15):
        for obj, mask in zip(s.meta["objects"], s.meta["object_masks"]):
            rgb = np.median(s.image[mask].astype(np.float32), axis=0) / 255.0
            hue = colorsys.rgb_to_hsv(*rgb)[0] * 360.0
            diff = abs((hue - COLOUR_HUES[obj["colour"]] + 180.0) % 360.0 - 180.0)
            assert diff < 12.0, (obj, hue)


def test_text_target_unique(samples):
    for s in samples["text"]:
        objs, query, (target,) = s.meta["objects"], s.meta["query"], s.meta["target_ids"]
        assert s.references == [s.meta["expression"]] and s.answer == [s.meta["expression"], " ", OBJ, "."]
        assert query["shape"] in s.meta["expression"]
        hits = [i for i, o in enumerate(objs) if _matches(o, query)]
        if "relation" not in query:
            assert hits == [target] and s.meta["landmark_ids"] == []
            continue
        (lm,) = [i for i, o in enumerate(objs) if _matches(o, query["landmark"])]
        assert s.meta["landmark_ids"] == [lm]
        assert len(hits) >= 2, "a relation is only used where the description alone is ambiguous"
        assert _offset(objs[target], objs[lm], query["relation"]) >= MARGIN
        assert all(_offset(objs[i], objs[lm], query["relation"]) <= 0 for i in hits if i not in (target, lm))
    kinds = {s.meta["kind"] for s in samples["text"]}
    assert "relational" in kinds and len(kinds) >= 4
    shared = [any(o["shape"] == s.meta["objects"][t]["shape"] or o["colour"] == s.meta["objects"][t]["colour"]
                  for i, o in enumerate(s.meta["objects"]) if i != t)
              for s in samples["text"] for t in s.meta["target_ids"]]
    assert np.mean(shared) > 0.5, "distractors should often share the target's shape or colour"


def test_no_target_matches_nothing(samples):
    for s in samples["no_target"]:
        objs, query = s.meta["objects"], s.meta["query"]
        assert s.answer == [NO_TARGET_ANSWER] and s.masks.shape[0] == 0
        hits = [i for i, o in enumerate(objs) if _matches(o, query)]
        if "relation" not in query:
            assert hits == []
            continue
        (lm,) = [i for i, o in enumerate(objs) if _matches(o, query["landmark"])]
        assert all(_offset(objs[i], objs[lm], query["relation"]) <= 0 for i in hits if i != lm)


@pytest.mark.parametrize("task", ["text", "no_target"])
def test_landmark_first_answers_restate_relations_only(task):
    """relational_answer="landmark_first" changes the answer of relational prompts alone - landmark first, the
    object's own description last before its <obj> - and never the prompt, the masks or any other sample."""
    options = dict(relational_prob=1.0, no_target_answer="nowhere")
    asked, restated = (SynthRef(SynthRefConfig(relational_answer=order, **options)).split("val", task, 30)
                       for order in ("as_asked", "landmark_first"))
    relational = 0
    for a, r in zip(asked, restated):
        assert r.references == a.references and np.array_equal(r.masks, a.masks) and r.answer[1:] == [" ", OBJ, "."]
        query = r.meta["query"]
        if "relation" not in query:
            assert r.answer == a.answer
            continue
        relational += 1
        landmark, own = r.answer[0].split(" is ")
        assert landmark.startswith(query["relation"] + " the ") and landmark[len(query["relation"]) + 1:] in a.answer[0]
        assert own == a.answer[0][:len(own)] and own.endswith(query["shape"])
        assert sorted(words_of(r.answer[0])) == sorted(words_of(a.answer[0]) + ["is"])
    assert relational >= 10
    with pytest.raises(ValueError, match="relational_answer"):
        SynthRefConfig(relational_answer="target_first")


def test_box_describe(samples):
    for s in samples["box"]:
        (box,), (target,) = s.references, s.meta["target_ids"]
        obj = s.meta["objects"][target]
        assert isinstance(box, Box) and s.task == "describe"
        assert s.answer == [f"the {obj['size']} {obj['colour']} {obj['shape']}", " ", OBJ, "."]
        x0, y0, x1, y1 = obj["bbox"]
        ix = max(0.0, min(x1, box.x1) - max(x0, box.x0)) * max(0.0, min(y1, box.y1) - max(y0, box.y0))
        union = (x1 - x0) * (y1 - y0) + (box.x1 - box.x0) * (box.y1 - box.y0) - ix
        assert ix / union > 0.6


@pytest.mark.parametrize("task", ["example", "example_masked", "audio1"])
def test_shape_tasks_take_every_object_of_the_shape(samples, task):
    for s in samples[task]:
        shape = s.meta["shape"]
        objs = s.meta["objects"]
        assert s.answer == [shape, " ", OBJ, "."]
        assert s.meta["mask_object_ids"] == [[i for i, o in enumerate(objs) if o["shape"] == shape]]
        assert len({o["shape"] for o in objs}) >= 2
        if task.startswith("example"):
            (ref,) = s.references
            assert s.meta["example_object"]["shape"] == shape
            assert (ref.mask is not None) == (task == "example_masked")


def test_audio2_two_shapes(samples):
    for s in samples["audio2"]:
        a, b = s.meta["shapes"]
        assert SHAPES.index(a) < SHAPES.index(b)
        assert s.answer == [a, " ", OBJ, " and ", b, " ", OBJ, "."]
        assert s.masks.shape[0] == 2 and not (s.masks[0] & s.masks[1]).any()


def test_group_selection_follows_rule(samples):
    empty = 0
    for s in samples["group"]:
        objs, meta = s.meta["objects"], s.meta
        assert s.task == "select" and s.answer == [] and s.masks.shape[0] == 0
        ids = meta["candidate_object_ids"]
        assert sorted(i for i in ids if i >= 0) == list(range(len(objs)))
        for cand, i in zip(s.candidates, ids):
            if i >= 0:
                assert np.array_equal(cand, meta["object_masks"][i])
            else:
                assert cand.any() and not (cand & meta["object_masks"].any(axis=0)).any()
        ref = meta["ref_object"]
        if ref is not None:
            assert np.array_equal(s.references[1].mask, meta["object_masks"][ref])
        rule = meta["rule"]
        if rule.startswith("all_"):
            key = rule[4:]
            want = [i for i, o in enumerate(objs) if o[key] == meta[key]]
        elif rule.startswith("same_"):
            key = rule[5:]
            want = [i for i, o in enumerate(objs) if i != ref and o[key] == objs[ref][key]]
        else:
            offsets = [(i, _offset(o, objs[ref], meta["relation"])) for i, o in enumerate(objs) if i != ref]
            assert all(d >= MARGIN or d <= 0 for _, d in offsets)
            want = [i for i, d in offsets if d >= MARGIN]
        assert [ids[k] for k in np.flatnonzero(s.selected)] == sorted(want, key=ids.index)
        empty += not s.selected.any()
    assert 0 < empty < len(samples["group"]) / 2


def test_text_select_marks_the_one_described_object_or_none(samples):
    asked = []
    for s in samples["text_select"]:
        objs, meta = s.meta["objects"], s.meta
        assert s.task == "select" and s.answer == [] and s.references == [meta["prompt"]]
        ids = meta["candidate_object_ids"]
        assert sorted(i for i in ids if i >= 0) == list(range(len(objs)))
        for cand, i in zip(s.candidates, ids):
            assert np.array_equal(cand, meta["object_masks"][i]) if i >= 0 else cand.any()
        hits = [i for i, o in enumerate(objs) if _matches(o, meta["query"])]
        if "relation" in meta["query"]:
            (lm,) = [i for i, o in enumerate(objs) if _matches(o, meta["query"]["landmark"])]
            hits = [i for i in hits if i != lm and _offset(objs[i], objs[lm], meta["query"]["relation"]) >= MARGIN]
        assert [ids[k] for k in np.flatnonzero(s.selected)] == hits == meta["target_ids"]
        assert len(hits) == (meta["asked"] == "text")
        asked.append(meta["asked"])
    assert 0.2 < asked.count("text") / len(asked) < 0.8  # half each (12 of these 40)


def test_vocabulary_covers_every_text(samples):
    vocab = set(WORLD.vocabulary())
    for task_samples in samples.values():
        for s in task_samples:
            texts = [r for r in s.references if isinstance(r, str)] + [p for p in s.answer if isinstance(p, str)]
            for text in texts:
                assert set(words_of(text)) <= vocab | set(UNLISTED_WORDS), text


# ---------------------------------------------------------------- sounds


def _band_energies(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    power = np.abs(np.fft.rfft(wave[0])) ** 2
    freqs = np.fft.rfftfreq(wave.shape[1], 1.0 / sample_rate)
    edges = np.geomspace(60, 7800, 25)
    bands = np.log(np.array([power[(freqs >= a) & (freqs < b)].sum() for a, b in zip(edges[:-1], edges[1:])]) + 1e-9)
    return bands - bands.mean()


def test_sounds_distinguishable_by_spectrum():
    rng = np.random.default_rng(0)
    feats = {s: np.stack([_band_energies(render_sound(rng, [s], 16000, 2.0), 16000) for _ in range(8)])
             for s in SHAPES}
    centres = {s: f[:5].mean(axis=0) for s, f in feats.items()}
    within = np.mean([np.linalg.norm(f - f.mean(axis=0), axis=1).mean() for f in feats.values()])
    between = min(np.linalg.norm(centres[a] - centres[b]) for a in SHAPES for b in SHAPES if a < b)
    assert between > within
    correct = [min(SHAPES, key=lambda k: np.linalg.norm(v - centres[k])) == s for s in SHAPES for v in feats[s][5:]]
    assert np.mean(correct) >= 0.8
    assert not np.array_equal(render_sound(rng, ["star"]), render_sound(rng, ["star"]))


# ---------------------------------------------------------------- sizes and overview


def test_other_image_sizes():
    for size in (64, 256):
        world = SynthRef(SynthRefConfig(image_size=size, seed=3))
        for task in SYNTHREF_TASKS:
            assert world.sample(task, np.random.default_rng(0)).image.shape == (size, size, 3)


def test_render_overview(tmp_path, samples):
    picked = [samples[t][0] for t in SYNTHREF_TASKS]
    path = render_overview(picked, tmp_path / "overview.png", columns=4)
    with Image.open(path) as image:
        assert image.size[0] >= 4 * CFG.image_size and image.mode == "RGB"


def test_world_for_a_model_draws_at_its_vision_side(tiny_model):
    world = SynthRef.for_model(tiny_model.config, seed=3)
    side = tiny_model.config.llava["vision_config"]["image_size"]
    assert world.config == SynthRefConfig(image_size=side, seed=3)
    assert world.split("val", "text", 1)[0].image.shape[:2] == (side, side)
