"""``anyref convert``: released checkpoints of related models -> AnyRef directories.

    anyref convert lisa LISA-7B-v1 --clip clip-vit-large-patch14 --out anyref-lisa-7b
    python -m anyref.convert lisa LISA-7B-v1 --clip clip-vit-large-patch14 --out anyref-lisa-7b

    from anyref.convert import convert_lisa
    convert_lisa("LISA-7B-v1", "clip-vit-large-patch14", "anyref-lisa-7b")

This module imports nothing heavy: the ``anyref`` command builds its parser from it on every start.
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

__all__ = ["register", "main", "convert_lisa"]

_EXPORTS = {"convert_lisa": "anyref.convert.lisa"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anyref.convert' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def register(subparsers) -> None:
    """Add ``convert`` (with one sub-command per source model) to the ``anyref`` command."""
    parser = subparsers.add_parser("convert", help="convert a released checkpoint of another model to AnyRef",
                                   description="Convert a released checkpoint of another model into an AnyRef "
                                               "directory that AnyRef.from_pretrained loads.")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    lisa = sources.add_parser(
        "lisa", help="a LISA checkpoint (e.g. xinlai/LISA-7B-v1) plus CLIP ViT-L/14",
        description="Convert a released LISA checkpoint (config.json, tokenizer, pytorch_model-*.bin shards) and "
                    "an HF CLIP ViT-L/14 directory (LISA's release has no CLIP weights) into an AnyRef directory. "
                    "Text references work at once; the other reference kinds are marked untrained until "
                    "fine-tuned (anyref train with init_from).")
    lisa.add_argument("src", help="the LISA checkpoint directory")
    lisa.add_argument("--clip", required=True, metavar="CLIP_DIR",
                      help="HF CLIP directory, e.g. a download of openai/clip-vit-large-patch14")
    lisa.add_argument("--out", required=True, metavar="DIR", help="the AnyRef directory to write")
    lisa.add_argument("--sam-type", default="vit_h", help="SAM size inside the checkpoint (default vit_h)")
    lisa.add_argument("--refocus-lambda", type=float, default=0.0,
                      help="AnyRef's refocusing weight (default 0: LISA never refocused)")
    lisa.add_argument("--imagebind", metavar="PTH",
                      help="imagebind_huge.pth: add the audio encoder so audio references can be fine-tuned")
    lisa.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    lisa.set_defaults(func=_run_lisa)


def _run_lisa(args) -> int:
    from anyref.convert.lisa import convert_lisa

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = convert_lisa(args.src, args.clip, args.out, sam_type=args.sam_type, refocus_lambda=args.refocus_lambda,
                       imagebind=args.imagebind, overwrite=args.overwrite, log=log)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``anyref convert`` on its own: ``main(["lisa", SRC, "--clip", CLIP_DIR, "--out", DIR])``."""
    parser = argparse.ArgumentParser(prog="anyref")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"anyref convert: error: {error}", file=sys.stderr)
        return 2
