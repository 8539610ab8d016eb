"""One function per SynthRef task: ``build(config, rng) -> ReferringSample``.

Every sample's meta holds ``objects`` (attributes of every drawn object, in drawing order), ``object_masks``
(N x H x W bool visible masks, same order) and ``mask_object_ids`` (for each answer mask, the ids of the objects
it is the union of), so that evaluation can tell a wrong object from a sloppy mask; "text" samples also hold
``landmark_ids`` (the object a relational expression names only as its landmark; empty for the others).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from anyref.references import Audio, Box, ExampleImage, MaskRef
from anyref.samples import ReferringSample, verify_answer
from anyref.synthref.config import SynthRefConfig
from anyref.synthref.expressions import (answer_phrase, matching_ids, negative_query, query_text, relation_state,
                                         relational_queries, unique_queries)
from anyref.synthref.scenes import Scene, compose_scene, sample_specs
from anyref.synthref.sounds import render_sound
from anyref.synthref.vocabulary import (
    COLOURS, GROUP_OBJ_ANSWER, GROUP_PHRASES, NO_TARGET_ANSWER, PLURALS, RELATIONS, SAID_GROUP_PHRASES, SHAPES, SIZES,
    caption, pair_answer, single_answer,
)

__all__ = ["TASK_BUILDERS"]

_TRIES = 200
_ABSENT_PROB = 0.15  # group "all {x}": chance to name an attribute no object has (an empty group)
_PAIRED_REF_PROB = 0.6  # group "same {x} as": chance to point at an object that shares x with another one


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _scene(cfg: SynthRefConfig, rng: np.random.Generator, required: list[dict] | None = None, min_objects: int = 1,
           min_kinds: int = 1, n_objects: tuple[int, int] | None = None) -> Scene:
    """A scene with at least max(min_objects, cfg.min_objects) objects of at least min_kinds shape kinds."""
    lo, hi = n_objects or (max(cfg.min_objects, min_objects), max(cfg.max_objects, min_objects))
    for _ in range(_TRIES):
        n = int(rng.integers(lo, hi + 1))
        specs = sample_specs(rng, n, cfg.share_attribute_prob, required)
        scene = compose_scene(rng, specs, cfg.image_size, cfg.min_visible_fraction, cfg.pixel_noise)
        shapes = scene.shapes_present()
        if (len(scene.objects) >= lo and len(shapes) >= min_kinds
                and all(r["shape"] in shapes for r in required or [] if "shape" in r)):
            return scene
    raise RuntimeError(f"SynthRef could not draw {lo}-{hi} objects at image_size {cfg.image_size}; "
                       "lower max_objects or raise image_size")


def _meta(scene: Scene, mask_object_ids: list[list[int]], **extra) -> dict:
    return {"objects": [o.attributes() for o in scene.objects], "object_masks": scene.masks(),
            "mask_object_ids": mask_object_ids, **extra}


def _margin(cfg: SynthRefConfig) -> float:
    return cfg.relation_margin * cfg.image_size


def _segment(scene: Scene, references: list, phrases: list[str], groups: list[list[int]], source: str,
             task: str = "segment", **meta) -> ReferringSample:
    answer = single_answer(phrases[0]) if len(phrases) == 1 else pair_answer(*phrases)
    masks = np.stack([scene.union(ids) for ids in groups])
    return ReferringSample(image=scene.image, references=references, task=task, answer=answer, masks=masks,
                           source=source, meta=_meta(scene, groups, **meta))


def _text_query(cfg: SynthRefConfig, rng: np.random.Generator) -> tuple[Scene, int, dict]:
    """(scene, target id, query): a unique object named by its attributes, or relationally when its own
    description matches several objects and ``relational_prob`` says so."""
    for _ in range(_TRIES):
        scene = _scene(cfg, rng, min_objects=2)
        objects = scene.objects
        relational = rng.random() < cfg.relational_prob
        for target in (int(t) for t in rng.permutation(len(objects))):
            queries = relational_queries(objects, target, _margin(cfg)) if relational else []
            queries = queries or unique_queries(objects, target)
            if queries:
                break
        if queries:
            return scene, target, _pick(rng, queries)
    raise RuntimeError("SynthRef text: found no uniquely describable object")


def _query_kind(query: dict) -> str:
    return "relational" if "relation" in query else "_".join(k for k in ("size", "colour", "shape") if query[k])


def build_text(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A unique object named by its attributes ("the small red circle") or by a relation to a unique landmark
    ("the square left of the blue star", used when the object's own description matches several objects)."""
    scene, target, query = _text_query(cfg, rng)
    expression = query_text(query)
    landmark_ids = matching_ids(scene.objects, query["landmark"]) if "relation" in query else []
    return _segment(scene, [expression], [answer_phrase(query, cfg.relational_answer)], [[target]], "text",
                    expression=expression, query=query, kind=_query_kind(query), target_ids=[target],
                    landmark_ids=landmark_ids)


def _jittered_box(cfg: SynthRefConfig, rng: np.random.Generator, obj) -> Box:
    """The object's visible box, each side moved by up to ``box_jitter`` of the box's width / height."""
    x0, y0, x1, y1 = obj.bbox
    jx, jy = cfg.box_jitter * (x1 - x0), cfg.box_jitter * (y1 - y0)
    x0, x1 = x0 + rng.uniform(-jx, jx), x1 + rng.uniform(-jx, jx)
    y0, y1 = y0 + rng.uniform(-jy, jy), y1 + rng.uniform(-jy, jy)
    return Box(float(x0), float(y0), float(x1), float(y1)).clipped(cfg.image_size, cfg.image_size)


def build_box(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A jittered box around one object; the answer is its exact caption "the {size} {colour} {shape}"."""
    scene = _scene(cfg, rng, min_objects=2)
    target = int(rng.integers(len(scene.objects)))
    obj = scene.objects[target]
    box = _jittered_box(cfg, rng, obj)
    text = caption(obj.shape, obj.colour, obj.size)
    return _segment(scene, [box], [text], [[target]], "box", task="describe", caption=text, target_ids=[target])


def _shape_targets(scene: Scene, shape: str) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if o.shape == shape]


def _example(cfg: SynthRefConfig, rng: np.random.Generator, masked: bool) -> ReferringSample:
    scene = _scene(cfg, rng, min_objects=2, min_kinds=2)
    shape = _pick(rng, sorted(scene.shapes_present(), key=SHAPES.index))
    if masked:
        example = _scene(cfg, rng, required=[{"shape": shape}], min_kinds=2, n_objects=(2, min(4, cfg.max_objects)))
        chosen = _pick(rng, _shape_targets(example, shape))
        reference = ExampleImage(example.image, mask=example.objects[chosen].mask.copy())
    else:
        example = _scene(cfg, rng, required=[{"shape": shape}], n_objects=(1, 1))
        chosen = 0
        reference = ExampleImage(example.image)
    targets = _shape_targets(scene, shape)
    return _segment(scene, [reference], [shape], [targets], "example_masked" if masked else "example", shape=shape,
                    example_object=example.objects[chosen].attributes(), target_ids=targets)


def build_example(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """An example image with one object of a shape; the targets are all objects of that shape, as one mask."""
    return _example(cfg, rng, masked=False)


def build_example_masked(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """As "example", but the example image shows 2-4 objects and its mask picks the one of the wanted shape."""
    return _example(cfg, rng, masked=True)


def build_audio1(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """The sound of one shape kind present in the scene; the targets are all objects of that shape, as one mask."""
    scene = _scene(cfg, rng, min_objects=2, min_kinds=2)
    shape = _pick(rng, sorted(scene.shapes_present(), key=SHAPES.index))
    audio = Audio(render_sound(rng, [shape], cfg.sample_rate, cfg.audio_seconds), sample_rate=cfg.sample_rate)
    targets = _shape_targets(scene, shape)
    return _segment(scene, [audio], [shape], [targets], "audio1", shape=shape, target_ids=targets)


def build_audio2(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A mixture of two shape kinds' sounds; two masks, the shapes named in vocabulary order (SHAPES)."""
    scene = _scene(cfg, rng, min_objects=2, min_kinds=2)
    present = sorted(scene.shapes_present(), key=SHAPES.index)
    pair = sorted((present[int(i)] for i in rng.choice(len(present), size=2, replace=False)), key=SHAPES.index)
    audio = Audio(render_sound(rng, list(pair), cfg.sample_rate, cfg.audio_seconds), sample_rate=cfg.sample_rate)
    groups = [_shape_targets(scene, s) for s in pair]
    return _segment(scene, [audio], list(pair), groups, "audio2", shapes=list(pair),
                    target_ids=sorted(groups[0] + groups[1]))


def _absent_query(cfg: SynthRefConfig, rng: np.random.Generator) -> tuple[Scene, dict]:
    """(scene, query): a plausible description that matches no object of the scene."""
    for _ in range(_TRIES):
        scene = _scene(cfg, rng, min_objects=2)
        query = negative_query(rng, scene.objects, _margin(cfg), cfg.relational_prob)
        if query is not None:
            return scene, query
    raise RuntimeError("SynthRef no_target: found no absent description")


def build_no_target(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A plausible expression that matches no object; the answer is NO_TARGET_ANSWER with no mask, or with
    ``no_target_answer="nowhere"`` the expression and one ``<obj>`` whose target mask is empty."""
    scene, query = _absent_query(cfg, rng)
    expression = query_text(query)
    h, w = scene.image.shape[:2]
    nowhere = cfg.no_target_answer == "nowhere"
    return ReferringSample(
        image=scene.image, references=[expression], task="segment",
        answer=single_answer(answer_phrase(query, cfg.relational_answer)) if nowhere else [NO_TARGET_ANSWER],
        masks=np.zeros((int(nowhere), h, w), dtype=bool), source="no_target",
        meta=_meta(scene, [[]] if nowhere else [], expression=expression, query=query, target_ids=[]))


def _closest(rng: np.random.Generator, scene: Scene, query: dict, exclude: int | None = None) -> int:
    """An object (not ``exclude``) that has the most of the query's named attributes (its own, not its
    landmark's): the one a model is likeliest to mistake for the described object. Ties drawn at random."""
    shared = {i: sum(query[k] is not None and getattr(o, k) == query[k] for k in ("shape", "colour", "size"))
              for i, o in enumerate(scene.objects) if i != exclude}
    best = max(shared.values())
    return _pick(rng, [i for i, n in shared.items() if n == best])


def build_verify(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A box and an expression: "Is <box> the small red circle in this image?", answered "yes." when the boxed
    object is the one described, else "no." (with ``verify_answer="caption"`` after the object's caption: "the
    large red circle: no."). Half box the described object of a text prompt; a
    quarter the object closest to a text prompt's description among its other objects, a quarter the object
    closest to a no-target prompt's description: "no" is learnt on the objects a model would wrongly answer with."""
    draw = rng.random()
    if draw < 0.75:
        scene, target, query = _text_query(cfg, rng)
        chosen = target if draw < 0.5 else _closest(rng, scene, query, exclude=target)
    else:
        scene, query = _absent_query(cfg, rng)
        target, chosen = None, _closest(rng, scene, query)
    expression = query_text(query)
    obj = scene.objects[chosen]
    box = _jittered_box(cfg, rng, obj)
    matches = chosen == target
    text = caption(obj.shape, obj.colour, obj.size) if cfg.verify_answer == "caption" else None
    return ReferringSample(image=scene.image, references=[box, expression], task="verify",
                           answer=[verify_answer(matches, text)], source="verify",
                           meta=_meta(scene, [], expression=expression, query=query, kind=_query_kind(query),
                                      matches=matches, target_ids=[chosen]))


def _group_rule(cfg: SynthRefConfig, rng: np.random.Generator, scene: Scene):
    """(prompt references, selected object ids, rule meta) for one random group rule, or None if it is ambiguous."""
    objects = scene.objects
    rule = _pick(rng, list(GROUP_PHRASES))
    if rule in ("all_shape", "all_colour", "all_size"):
        key = rule[4:]
        values = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}[key]
        present = sorted({getattr(o, key) for o in objects}, key=values.index)
        absent = [v for v in values if v not in present]
        value = _pick(rng, absent) if absent and rng.random() < _ABSENT_PROB else _pick(rng, present)
        fill = {"plural": PLURALS[value]} if key == "shape" else {key: value}
        ids = [i for i, o in enumerate(objects) if getattr(o, key) == value]
        return [GROUP_PHRASES[rule].format(**fill)], ids, {"rule": rule, key: value, "ref_object": None}
    ref = int(rng.integers(len(objects)))
    others = [i for i in range(len(objects)) if i != ref]
    if rule in ("same_colour", "same_shape"):
        key = rule[5:]
        paired = [i for i, o in enumerate(objects) if sum(getattr(p, key) == getattr(o, key) for p in objects) > 1]
        if paired and rng.random() < _PAIRED_REF_PROB:  # otherwise most of these groups would be empty
            ref = _pick(rng, paired)
            others = [i for i in range(len(objects)) if i != ref]
        ids = [i for i in others if getattr(objects[i], key) == getattr(objects[ref], key)]
        phrase, extra = GROUP_PHRASES[rule], {}
    else:
        options = {True: [], False: []}  # unambiguous (ref, relation, group), by whether the group is empty
        for r in range(len(objects)):
            for relation in RELATIONS:
                states = [relation_state(objects[i], objects[r], relation, _margin(cfg)) for i in range(len(objects))
                          if i != r]
                if 0 not in states:
                    ids = [i for i in range(len(objects)) if i != r and states[i - (i > r)] == 1]
                    options[not ids].append((r, relation, ids))
        empty = not options[False] or (options[True] and rng.random() < _ABSENT_PROB)
        if not options[empty]:
            return None
        ref, relation, ids = _pick(rng, options[empty])
        phrase, extra = GROUP_PHRASES[rule].format(relation=relation), {"relation": relation}
    return [phrase, MaskRef(objects[ref].mask.copy())], ids, {"rule": rule, "ref_object": ref, **extra}


def _background_patches(cfg: SynthRefConfig, rng: np.random.Generator, scene: Scene) -> list[np.ndarray]:
    """0..max_distractor_candidates candidate masks that are not objects: ellipses of background."""
    size, occupied = cfg.image_size, scene.union(list(range(len(scene.objects))))
    yy, xx = np.mgrid[0:size, 0:size]
    patches = []
    for _ in range(int(rng.integers(0, cfg.max_distractor_candidates + 1))):
        for _ in range(10):
            cx, cy = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(0.06, 0.2, 2) * size
            patch = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) & ~occupied
            if patch.sum() >= 0.006 * size * size:
                patches.append(patch)
                break
    return patches


def _shuffled_candidates(cfg: SynthRefConfig, rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, list[int]]:
    """(candidates N x H x W bool, their object ids, -1 for a background patch): the scene's object masks plus
    background patches, in random order - what an instance segmenter would propose."""
    masks = list(scene.masks()) + _background_patches(cfg, rng, scene)
    owners = list(range(len(scene.objects))) + [-1] * (len(masks) - len(scene.objects))
    order = [int(k) for k in rng.permutation(len(masks))]
    return np.stack([masks[k] for k in order]), [owners[k] for k in order]


def said_group_phrase(scene: Scene, phrase: str, rule_meta: dict) -> str:
    """The words a ``group_answer="said"`` answer restates a group rule with: a rule that points at a mask by an
    attribute becomes the attribute rule it stands for, less the referenced object ("everything the same shape as"
    a circle's mask -> "all other circles"); every other rule (by attribute, or by place relative to a mask) is
    said as it was asked."""
    if rule_meta["rule"] not in SAID_GROUP_PHRASES:
        return phrase
    ref = scene.objects[rule_meta["ref_object"]]
    return SAID_GROUP_PHRASES[rule_meta["rule"]].format(colour=ref.colour, plural=PLURALS[ref.shape])


def build_group(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A mask-group prompt ("all circles", "everything the same colour as" <mask>, "everything left of" <mask>...):
    candidates are the object masks plus background patches in random order; ``selected`` marks the group (which
    may be empty). The referenced object itself is never part of its own group. The answer is empty (no text).
    With ``group_answer="obj"`` the same draw is posed as a "segment" sample instead: the answer is "<obj>." and
    its mask the union of the group (empty for an empty group); meta keeps the candidates' object ids. With
    ``group_answer="said"`` that answer starts with the rule restated (``said_group_phrase``): "all other red
    objects <obj>."."""
    for _ in range(_TRIES):
        scene = _scene(cfg, rng, min_objects=2)
        picked = _group_rule(cfg, rng, scene)
        if picked is None:
            continue
        references, ids, rule_meta = picked
        candidates, candidate_ids = _shuffled_candidates(cfg, rng, scene)
        selected = np.array([c in ids for c in candidate_ids], dtype=bool)
        if cfg.group_answer in ("obj", "said"):
            answer = (single_answer(said_group_phrase(scene, references[0], rule_meta)) if cfg.group_answer == "said"
                      else list(GROUP_OBJ_ANSWER))
            return ReferringSample(
                image=scene.image, references=references, task="segment", answer=answer,
                masks=scene.union(ids)[None], source="group",
                meta=_meta(scene, [sorted(ids)], prompt=" ".join(r for r in references if isinstance(r, str)),
                           candidate_object_ids=candidate_ids, target_ids=sorted(ids), **rule_meta))
        return ReferringSample(
            image=scene.image, references=references, task="select", answer=[],
            candidates=candidates, selected=selected, source="group",
            meta=_meta(scene, [], prompt=" ".join(r for r in references if isinstance(r, str)),
                       candidate_object_ids=candidate_ids, target_ids=sorted(ids), **rule_meta))
    raise RuntimeError("SynthRef group: found no unambiguous group rule")


def build_text_select(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """A text or no-target expression (half each) posed as a mask-group prompt: the candidates are the object
    masks plus background patches, and ``selected`` marks the one object the expression describes, or none. It
    teaches a group head whether a mask is what a text describes: the check ``AnyRefConfig.check_by_group_head``
    asks of each mask answered to a text prompt."""
    if rng.random() < 0.5:
        scene, target, query = _text_query(cfg, rng)
        ids, source = [target], "text"
    else:
        (scene, query), ids, source = _absent_query(cfg, rng), [], "no_target"
    expression = query_text(query)
    candidates, candidate_ids = _shuffled_candidates(cfg, rng, scene)
    return ReferringSample(
        image=scene.image, references=[expression], task="select", answer=[], candidates=candidates,
        selected=np.array([c in ids for c in candidate_ids], dtype=bool), source="text_select",
        meta=_meta(scene, [], prompt=expression, query=query, kind=_query_kind(query), asked=source,
                   candidate_object_ids=candidate_ids, target_ids=ids))


def build_mask_caption(cfg: SynthRefConfig, rng: np.random.Generator) -> ReferringSample:
    """One object's visible mask as a MaskRef; the answer is its exact caption "the {size} {colour} {shape}." with
    no mask (the mask tokens' alignment task of RAS's first stage, "describe" with a mask reference)."""
    scene = _scene(cfg, rng, min_objects=2)
    target = int(rng.integers(len(scene.objects)))
    obj = scene.objects[target]
    text = caption(obj.shape, obj.colour, obj.size)
    return ReferringSample(image=scene.image, references=[MaskRef(obj.mask.copy())], task="describe",
                           answer=[text + "."], source="mask_caption",
                           meta=_meta(scene, [], caption=text, target_ids=[target]))


TASK_BUILDERS: dict[str, Callable[[SynthRefConfig, np.random.Generator], ReferringSample]] = {
    "text": build_text, "box": build_box, "example": build_example, "example_masked": build_example_masked,
    "audio1": build_audio1, "audio2": build_audio2, "no_target": build_no_target, "group": build_group,
    "mask_caption": build_mask_caption, "verify": build_verify, "text_select": build_text_select,
}
