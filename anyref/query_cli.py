"""``anyref segment``, ``anyref describe`` and ``anyref select``: the Python API's three questions from a shell, on
one image, with results a user can look at and cite.

    anyref segment scene.png "the small red circle"
    anyref segment scene.png "the object left of" box:10,20,60,80 --out left-of
    anyref describe scene.png box:10,20,60,80
    anyref select scene.png "everything the same colour as" mask:ref.png --candidates masks.npy

References are written as anyref/reference_args.py reads them. ``--out DIR`` (default ``anyref-out`` for segment
and select; describe writes one only when asked) gets ``overlay.png`` (the image, the references, every answered
mask in its own colour), one ``mask_NN.png`` per mask (0 / 255) and ``result.json`` (the answer, its masks' files,
scores, areas and boxes; select's also every candidate's score and the membership and empty-group thresholds it
chose them at); the directory appears whole or not at all.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from anyref.model_args import add_model_arguments, load_model

__all__ = ["register", "read_candidates"]

DEFAULT_MODEL = "synthref-tiny"
DEFAULT_OUT = "anyref-out"


def register(subparsers) -> None:
    """Add ``segment``, ``describe`` and ``select`` to ``anyref``'s sub-parsers."""
    from anyref import reference_args

    refs_help = ('references, read left to right as one prompt: text, box:X0,Y0,X1,Y1, example:IMAGE[@MASK], '
                 'audio:FILE, mask:MASK (a PNG or .npy), text:TEXT')
    common = dict(formatter_class=argparse.RawDescriptionHelpFormatter, epilog=reference_args.__doc__)
    segment = subparsers.add_parser(
        "segment", help="masks for what the references point at in an image",
        description="AnyRef.segment on one image: a mask for each <obj> of the answer, maybe none.", **common)
    describe = subparsers.add_parser(
        "describe", help="a caption of a referred region (box:... or mask:...)",
        description="AnyRef.describe on one image: the caption is printed; with --out, its masks are written too.",
        **common)
    select = subparsers.add_parser(
        "select", help="the group of candidate masks the references refer to (RAS)",
        description="AnyRef.select on one image: the candidates the prompt refers to, chosen in one forward pass "
                    "(maybe none).", **common)
    for parser, out_default in ((segment, DEFAULT_OUT), (describe, None), (select, DEFAULT_OUT)):
        parser.add_argument("image", help="the image (any format PIL reads)")
        parser.add_argument("refs", nargs="+", metavar="REF", help=refs_help)
        add_model_arguments(parser, default_model=DEFAULT_MODEL)
        parser.add_argument("--out", default=out_default,
                            help="folder for overlay.png, mask_NN.png and result.json" +
                                 (f" (default ./{out_default})" if out_default else " (default: print only)"))
    select.add_argument("--candidates", nargs="+", metavar="FILE",
                        help="candidate masks: one .npy of N x H x W, or one mask file (PNG or .npy H x W) each; "
                             "default: SAM's automatic masks")
    segment.set_defaults(func=_run_segment)
    describe.set_defaults(func=_run_describe)
    select.set_defaults(func=_run_select)


def read_candidates(paths: list[str]) -> np.ndarray:
    """N x H x W bool from --candidates: one .npy holding N x H x W, or one H x W mask file per candidate."""
    from anyref.images import binary_mask
    from anyref.reference_args import read_mask_array

    arrays = [read_mask_array(path, "candidate") for path in paths]
    if len(arrays) == 1 and arrays[0].ndim == 3:
        return binary_mask(arrays[0], f"candidate file {paths[0]!r}")
    for path, array in zip(paths, arrays):
        if array.ndim != 2:
            raise ValueError(f"candidate file {path!r} holds an array of shape {array.shape}; give one H x W mask "
                             "per file, or one .npy of N x H x W")
    return np.stack([binary_mask(array, f"candidate file {path!r}") for path, array in zip(paths, arrays)])


def _prepare(args):
    """(model, image pixels H x W x 3, references): the files, the references' syntax, --out and --device are
    checked before the model loads; what needs the image's geometry (a box inside it, a mask of its size) is checked
    by the API, in one place."""
    from anyref.images import load_image
    from anyref.reference_args import parse_references

    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image {args.image!r} not found")
    references = parse_references(args.refs)
    _check_out(args.out)
    pixels = load_image(args.image)
    return load_model(args), pixels, references


def _check_out(out: str | None) -> None:
    """An --out folder is replaced whole; refuse one that holds anything but an earlier answer of these commands."""
    if out is None:
        return
    path, here = Path(out).resolve(), Path.cwd().resolve()
    if path == here or path in here.parents:
        raise ValueError(f"--out {out!r} is the current folder or one above it; give a new folder for the answer")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"--out {out!r} is a file; give a folder for the answer")
    entries = list(path.iterdir())
    ours = (path / "result.json").is_file() and all(
        entry.is_file() and (entry.name == "result.json" or entry.suffix == ".png") for entry in entries)
    if entries and not ours:
        raise ValueError(f"--out {out!r} exists and is not an earlier anyref answer folder (result.json, overlay and "
                         "mask PNGs only); give a new folder, since it would be replaced")


def _write(out: str, pixels: np.ndarray, references: list, masks: np.ndarray, names: list[str],
           record: dict) -> Path:
    """overlay.png, the masks (0 / 255 PNGs named ``names``) and result.json into ``out``, atomically."""
    from PIL import Image

    from anyref.overlays import render_overlay
    from anyref.references import Box, MaskRef
    from encoders.checkpoints import atomic_write_dir

    boxes = [r for r in references if isinstance(r, Box)]
    reference_masks = [r.mask for r in references if isinstance(r, MaskRef)]
    text = f"{record['references']} -> {record['text']}"
    with atomic_write_dir(out) as tmp:
        render_overlay(pixels, text, masks, None, boxes, reference_masks).save(tmp / "overlay.png")
        for mask, name in zip(masks, names):
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / name)
        (tmp / "result.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def _answer(args, pixels: np.ndarray, references: list, masks: np.ndarray, scores: np.ndarray, names: list[str],
            **fields) -> int:
    """The answer's record (the command, model, image, references, ``fields`` and each mask's file, score, area
    and box), written to --out when there is one, and printed."""
    from anyref.overlays import describe_references
    from anyref.references import Box

    command = " ".join(["anyref", *map(shlex.quote, sys.argv[1:])]) if sys.argv[1:2] == [args.command] else ""
    record = {"command": command, "model": str(args.model), "image": str(args.image),
              "references": describe_references(references), **fields,
              "masks": [{"file": name, "score": round(float(score), 4), "area": int(mask.sum()),
                         "box": list(Box.around(mask).as_tuple()) if mask.any() else None}
                        for mask, score, name in zip(masks, scores, names)]}
    print(record["text"])
    if record.get("note"):
        print(record["note"])
    if args.out is not None:
        out = _write(args.out, pixels, references, masks, names, record)
        print(f"wrote {out / 'overlay.png'}, {len(names)} mask file(s) and {out / 'result.json'}")
    return 0


def _numbered(count: int) -> list[str]:
    return [f"mask_{k:02d}.png" for k in range(count)]


def _run_segment(args) -> int:
    model, pixels, references = _prepare(args)
    result = model.segment(pixels, references, allow_untrained=args.allow_untrained)
    return _answer(args, pixels, references, result.masks, result.scores, _numbered(len(result.masks)),
                   text=result.text, note=result.note)


def _run_describe(args) -> int:
    model, pixels, references = _prepare(args)
    result = model.describe(pixels, references, allow_untrained=args.allow_untrained, with_masks=True)
    return _answer(args, pixels, references, result.masks, result.scores, _numbered(len(result.masks)),
                   text=result.text)


def _run_select(args) -> int:
    from anyref.candidates import NoCandidatesFound

    candidates = None if args.candidates is None else read_candidates(args.candidates)
    model, pixels, references = _prepare(args)
    try:
        group = model.select(pixels, references, candidates=candidates, allow_untrained=args.allow_untrained)
    except NoCandidatesFound:
        raise ValueError("SAM's automatic mask generator found no masks in this image (a small SAM may never; the "
                         "shipped synthref-tiny's was not trained for point prompts): pass --candidates") from None
    text = (f"{len(group.indices)} of {len(group.candidates)} candidates selected: {group.indices.tolist()}"
            if group.found else f"no candidate selected (an empty group) of {len(group.candidates)}")
    if group.text is not None:  # a model that writes the answer its group is decided by
        text = f"{group.text} ({text})"
    return _answer(args, pixels, references, group.masks, group.scores,
                   [f"mask_{int(i):02d}.png" for i in group.indices], text=text, source=group.source,
                   selected=group.indices.tolist(), threshold=model.config.group_threshold,
                   empty_threshold=model.config.group_empty_threshold,
                   candidate_scores=[round(float(s), 4) for s in group.candidate_scores])
