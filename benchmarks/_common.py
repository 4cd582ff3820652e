"""Plumbing shared by the benchmark scripts: where results go, the ``--device`` option, the
command written into results, the CIFAR-10 archive, and the result writers.

The writers and the command formatting live in :mod:`replay_lcmat.reporting` (the CLI uses
them too; the library never imports the benchmarks) and are re-exported here, so a benchmark
imports its plumbing from this one module.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from replay_lcmat.data import shared_cifar10_archive
from replay_lcmat.data.folder import CIFAR10_ARCHIVE_VARIABLE
from replay_lcmat.devices import default_device
from replay_lcmat.reporting import (
    append_csv,
    command_markdown,
    markdown_table,
    read_csv,
    write_csv,
    write_markdown,
)
from replay_lcmat.reporting import command_line as _command_line

__all__ = [
    "ARCHIVE",
    "REPO",
    "RESULTS",
    "add_device_argument",
    "append_csv",
    "cifar10_archive",
    "command_line",
    "command_markdown",
    "markdown_table",
    "read_csv",
    "resolve_data",
    "write_csv",
    "write_markdown",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"  # committed results (benchmarks/results)
ARCHIVE = "cifar10-archive"  # a preset's data: the archive of $REPLAY_LCMAT_CIFAR10_ARCHIVE


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, default ``cuda`` when available, else ``cpu``."""
    parser.add_argument(
        "--device",
        default=default_device(),
        help=f"torch device, e.g. cpu, cuda, cuda:1 (default here: {default_device()})",
    )


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """``python -m benchmarks.<module> <argv>`` as run from the repository root, arguments
    shell-quoted; ``argv`` None: ``sys.argv[1:]`` (pass the ``argv`` ``main`` was given)."""
    return _command_line(f"python -m benchmarks.{module}", argv)


def cifar10_archive(who: str) -> Path:
    """The CIFAR-10 JPEG archive for ``who`` (e.g. ``"the coreset cpu preset"``), from
    ``$REPLAY_LCMAT_CIFAR10_ARCHIVE`` (see ``replay_lcmat.data.shared_cifar10_archive``).

    Raises:
        FileNotFoundError: the variable is unset (or names no file); the message says how to
            set it.
    """
    archive = shared_cifar10_archive()
    if archive is None:
        raise FileNotFoundError(
            f"{who} needs the CIFAR-10 JPEG archive: set ${CIFAR10_ARCHIVE_VARIABLE} to its path "
            f"(on the project's build machines: export {CIFAR10_ARCHIVE_VARIABLE}="
            "$PWD/../shared/data/cifar10-jpeg.tar.gz from the repository root)."
        )
    return archive


def resolve_data(data: str, who: str) -> str:
    """A preset's ``data``: :data:`ARCHIVE` becomes the archive's path (:func:`cifar10_archive`),
    anything else (a dataset name or a path) is returned as it is."""
    return str(cifar10_archive(who)) if data == ARCHIVE else data
