"""The ``replay-lcmat`` command line. Each subcommand lives in its own module of this package,
which exposes ``register(subparsers)`` (adds its parser, sets ``func=run``) and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules of replay_lcmat.cli, one per subcommand, in the order --help lists them.
SUBCOMMANDS = ("demo", "select", "condense", "data", "inspect")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay-lcmat",
        description="Loss-Curvature Matching (LCMat) for coresets, condensation and replay memory.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"replay_lcmat.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"replay-lcmat {args.command}: error: {err}", file=sys.stderr)
        return 1
