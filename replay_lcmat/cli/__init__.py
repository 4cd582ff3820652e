"""The ``replay-lcmat`` command line. Each subcommand lives in its own module of this package,
which exposes ``register(subparsers)`` (adds its parser, sets ``func=run``) and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import atexit
import importlib
import sys
from collections.abc import Sequence

import torch

from replay_lcmat import distributed

# Modules of replay_lcmat.cli, one per subcommand, in the order --help lists them.
SUBCOMMANDS = ("demo", "select", "condense", "data", "inspect")
# Subcommands that run under torchrun (torch.distributed; rank 0 writes the output).
DISTRIBUTED_SUBCOMMANDS = ("select", "condense")


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
    """Run a subcommand; under ``torchrun`` (select, condense) join its process group first."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if distributed.launched() and args.command not in DISTRIBUTED_SUBCOMMANDS:
        print(
            f"replay-lcmat {args.command}: error: it runs in one process; run it without "
            f"torchrun (under torchrun: {', '.join(DISTRIBUTED_SUBCOMMANDS)}).",
            file=sys.stderr,
        )
        return 2
    try:
        if distributed.init_from_env(getattr(args, "device", "cpu")):
            # left at exit, not at return: a second main() in the process reuses the group
            atexit.register(distributed.teardown)
        if distributed.launched() and torch.device(args.device).type == "cuda":
            args.device = f"cuda:{torch.cuda.current_device()}"  # one GPU per rank
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # under torchrun: rank 0 reports another rank's failure (a DistributedError names it)
        if distributed.is_writer() or not isinstance(err, distributed.DistributedError):
            where = f" (rank {distributed.rank()})" if distributed.is_distributed() else ""
            print(f"replay-lcmat {args.command}{where}: error: {err}", file=sys.stderr)
        return 1
