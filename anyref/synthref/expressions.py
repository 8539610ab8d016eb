"""Referring expressions over a scene's objects: which objects a description matches, which descriptions pick out
exactly one object, and descriptions that match none.

A query is plain data (kept in ``ReferringSample.meta["query"]``):
``{"shape": "circle", "colour": "red" | None, "size": "small" | None}``, optionally with
``"relation": "left of"`` and ``"landmark": {<a query without relation>}`` ("the circle left of the blue star").
Spatial relations compare visible-box centres: the object satisfies "left of" the landmark when its centre is at least
``margin`` pixels further left, and clearly fails it when its centre is not left of the landmark's at all; anything
in between is ambiguous and never generated.
"""
from __future__ import annotations

import numpy as np

from anyref.synthref.scenes import SceneObject
from anyref.synthref.vocabulary import COLOURS, RELATIONS, SHAPES, SIZES, describe

__all__ = ["FORMS", "matches", "matching_ids", "relation_state", "resolve", "query_text", "answer_phrase",
           "unique_queries", "relational_queries", "negative_query"]

# which attributes a plain description names; the shape is always named
FORMS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))
_ALL_VALUES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}


def _describe(obj: SceneObject, form: tuple[str, ...]) -> dict:
    return {"shape": obj.shape, "colour": obj.colour if "colour" in form else None,
            "size": obj.size if "size" in form else None}


def matches(obj: SceneObject, desc: dict) -> bool:
    """Whether ``obj`` has every attribute named in ``desc`` (relations ignored)."""
    return all(desc.get(key) in (None, getattr(obj, key)) for key in ("shape", "colour", "size"))


def matching_ids(objects: list[SceneObject], desc: dict) -> list[int]:
    return [i for i, o in enumerate(objects) if matches(o, desc)]


def relation_state(obj: SceneObject, landmark: SceneObject, relation: str, margin: float) -> int:
    """+1: ``obj`` is clearly ``relation`` the landmark; -1: clearly not; 0: too close to call."""
    axis, sign = RELATIONS[relation]
    offset = sign * (obj.centre[axis] - landmark.centre[axis])
    return 1 if offset >= margin else (-1 if offset <= 0 else 0)


def resolve(objects: list[SceneObject], query: dict, margin: float) -> list[int] | None:
    """Ids of the objects ``query`` refers to, or None when it is ambiguous (a landmark that is not unique, or an
    object too close to call)."""
    candidates = matching_ids(objects, query)
    if "relation" not in query:
        return candidates
    landmarks = matching_ids(objects, query["landmark"])
    if len(landmarks) != 1:
        return None
    states = [relation_state(objects[i], objects[landmarks[0]], query["relation"], margin)
              for i in candidates if i != landmarks[0]]
    if 0 in states:
        return None
    return [i for i in candidates if i != landmarks[0]
            and relation_state(objects[i], objects[landmarks[0]], query["relation"], margin) == 1]


def query_text(query: dict) -> str:
    """The expression of a query: "the small red circle", "the square above the blue star"."""
    text = _noun_phrase(query)
    if "relation" in query:
        text += f" {query['relation']} " + _noun_phrase(query["landmark"])
    return text


def _noun_phrase(desc: dict) -> str:
    """A description's own noun phrase ("the small red circle"), relations left out."""
    return describe(desc["shape"], desc.get("colour"), desc.get("size"))


def answer_phrase(query: dict, relational_answer: str = "as_asked") -> str:
    """The phrase an answer names the queried object by: the expression itself, or for a relational query with
    ``relational_answer="landmark_first"`` the landmark first and the object's own description last, next to the
    answer's <obj> ("below the small diamond is the blue diamond"). Words are all in the vocabulary."""
    if relational_answer == "as_asked" or "relation" not in query:
        return query_text(query)
    if relational_answer != "landmark_first":
        raise ValueError(f'relational_answer must be "as_asked" or "landmark_first", got {relational_answer!r}')
    return f"{query['relation']} {_noun_phrase(query['landmark'])} is {_noun_phrase(query)}"


def unique_queries(objects: list[SceneObject], target: int) -> list[dict]:
    """Plain descriptions that match exactly the object ``target``."""
    out = []
    for form in FORMS:
        desc = _describe(objects[target], form)
        if matching_ids(objects, desc) == [target]:
            out.append(desc)
    return out


def relational_queries(objects: list[SceneObject], target: int, margin: float) -> list[dict]:
    """Relational expressions that pick out ``target`` where its own description alone matches several objects."""
    out = []
    landmark_descs = {k: unique_queries(objects, k) for k in range(len(objects)) if k != target}
    for form in FORMS:
        desc = _describe(objects[target], form)
        if len(matching_ids(objects, desc)) < 2:
            continue
        for landmark, lm_descs in landmark_descs.items():
            for lm_desc in lm_descs:
                for relation in RELATIONS:
                    query = dict(desc, relation=relation, landmark=lm_desc)
                    if resolve(objects, query, margin) == [target]:
                        out.append(query)
    return out


def negative_query(rng: np.random.Generator, objects: list[SceneObject], margin: float,
                   relational_prob: float) -> dict | None:
    """A plausible description that matches no object: a present object with one named attribute changed
    ("the blue circle" when the only circle is red), or a relation no matching object satisfies."""
    if rng.random() < relational_prob:
        query = _negative_relational(rng, objects, margin)
        if query is not None:
            return query
    for _ in range(20):
        obj = objects[int(rng.integers(len(objects)))]
        form = FORMS[int(rng.integers(len(FORMS)))]
        desc = _describe(obj, form)
        key = form[int(rng.integers(len(form)))]
        others = [v for v in _ALL_VALUES[key] if v != desc[key]]
        desc[key] = others[int(rng.integers(len(others)))]
        if not matching_ids(objects, desc):
            return desc
    return None


def _negative_relational(rng: np.random.Generator, objects: list[SceneObject], margin: float) -> dict | None:
    if len(objects) < 2:
        return None
    for _ in range(30):
        i, landmark = (int(k) for k in rng.choice(len(objects), size=2, replace=False))
        lm_descs = unique_queries(objects, landmark)
        if not lm_descs:
            continue
        desc = _describe(objects[i], FORMS[int(rng.integers(len(FORMS)))])
        relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
        query = dict(desc, relation=relation, landmark=lm_descs[int(rng.integers(len(lm_descs)))])
        if resolve(objects, query, margin) == []:
            return query
    return None
