"""The ``anyref`` command. Sub-commands come from this package (segment, describe, select, convert) and, through
the ``anyref.commands`` entry-point group, from the ``train`` and ``eval`` packages (train, eval, demo, bench) - so
``anyref`` itself never imports them.

    anyref segment scene.png "the small red circle"      masks, an overlay and result.json in ./anyref-out
    anyref demo                      segment SynthRef test scenes with the shipped model
    anyref train --preset synthref-tiny
    anyref eval synthref --model synthref-tiny --out results.json
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module
from importlib.metadata import entry_points

__all__ = ["main"]

# modules of this package whose register(subparsers) adds sub-commands
BUILTIN_COMMANDS = ("anyref.query_cli", "anyref.convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyref", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in BUILTIN_COMMANDS:
        try:
            import_module(module).register(subparsers)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            # a sub-command not present in this checkout: leave it out rather than break every command
    for entry in sorted(entry_points(group="anyref.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as error:
            if error.name != entry.module:
                raise
            continue  # declared in pyproject but not present in this checkout
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"anyref {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
