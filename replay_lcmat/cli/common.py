"""Arguments shared by subcommands that load data."""

from __future__ import annotations

import argparse


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
