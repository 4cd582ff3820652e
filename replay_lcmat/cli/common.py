"""Arguments and checks shared by subcommands: data arguments, output paths, budgets."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--data-root``, ``--download``, ``--cache-dir`` (see ``load_dataset``)."""
    parser.add_argument(
        "--data",
        required=True,
        help="cifar10 | cifar100 | digits | path to an ImageFolder directory or .tar.gz of one",
    )
    parser.add_argument("--data-root", default=None, help="torchvision root for CIFAR")
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download CIFAR (needs internet)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="cache of decoded images (default ~/.cache/replay-lcmat)"
    )


def check_output_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure ``path`` can be written, before any work: create its missing parent folders,
    and refuse a directory, a path under a file, or a folder that cannot be written to.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: naming ``flag``, the path and what to pass instead.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{flag} {path} is a directory; pass a file path in it, e.g. {path / 'out.pt'}."
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{flag} {path} is under {existing}, which is a file, not a folder; pass a path in "
            "a folder."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a real write: os.access is blind to read-only mounts, and root passes every mode check
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as err:
        raise ValueError(
            f"{flag} {path} cannot be written ({err.strerror or err}); pass a path in a folder "
            "you can write to."
        ) from None
    return path


def check_budget_arguments(per_class: int | None, fraction: float | None) -> None:
    """``--per-class`` (an integer >= 1) or ``--fraction`` (in (0, 1]), checked before any work."""
    if per_class is not None and per_class < 1:
        raise ValueError(f"--per-class must be an integer >= 1; got {per_class}.")
    if fraction is not None and not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"--fraction must be in (0, 1], e.g. 0.01 for 1%; got {fraction}.")
