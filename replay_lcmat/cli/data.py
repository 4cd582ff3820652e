"""``replay-lcmat data``: load a dataset (filling the decode cache) and summarise it."""

from __future__ import annotations

import argparse
import time

from replay_lcmat.cli.common import add_data_arguments
from replay_lcmat.data import load_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="load a dataset, cache its decoded images and print a summary"
    )
    add_data_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    train, test = load_dataset(
        args.data, root=args.data_root, download=args.download, cache_dir=args.cache_dir
    )
    seconds = time.perf_counter() - start
    c, h, w = train.shape
    print(
        f"{args.data}: {len(train)} train / {len(test)} test images, {c}x{h}x{w}, {train.images.dtype}"
    )
    print(f"classes ({train.num_classes}): {', '.join(train.classes)}")
    print(f"train images per class: {train.labels.bincount(minlength=train.num_classes).tolist()}")
    print(
        f"mean {tuple(round(m, 4) for m in train.mean)}  std {tuple(round(s, 4) for s in train.std)}"
    )
    print(f"loaded in {seconds:.2f} s")
    return 0
