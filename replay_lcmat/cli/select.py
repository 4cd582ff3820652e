"""``replay-lcmat select``: pretrain a selection model, select a class-balanced coreset, save it."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from replay_lcmat import distributed
from replay_lcmat.cli.common import (
    add_data_arguments,
    add_selection_model_arguments,
    check_budget_arguments,
    check_output_path,
    selection_model_outputs,
)
from replay_lcmat.data import load_dataset
from replay_lcmat.devices import default_device
from replay_lcmat.files import atomic_write_text, exclusive_output
from replay_lcmat.selection import (
    SELECTORS,
    make_selector,
)
from replay_lcmat.selection.engine import class_progress
from replay_lcmat.specs import parse_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="select a class-balanced coreset (lcmat-s, craig, uniform, ...) and save its indices",
        description="Train a selection model on the training split for --pretrain-epochs, extract "
        "features and logits once, select with --method, and write the indices grouped by class, "
        "the options and the seed to --out (JSON).",
    )
    add_data_arguments(parser)
    parser.add_argument("--method", required=True, choices=list(SELECTORS))
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--fraction", type=float, help="share of every class, e.g. 0.01")
    budget.add_argument("--per-class", type=int, help="samples per class")
    add_selection_model_arguments(parser)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, repeatable (e.g. --option eps=0.05 --option k_dims=100); "
        "values are read as JSON, else as text",
    )
    parser.add_argument("--out", required=True, help="JSON file for the selection")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (default: refuse)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.out)  # before any work: no pretraining for a path we cannot write
    _refuse_existing(args)
    # --out is locked for the whole run (rank 0 writes it): a second run on it stops here
    with exclusive_output(args.out) if distributed.is_writer() else contextlib.nullcontext():
        _refuse_existing(args)  # written by a run that finished while this one started
        return _run(args)


def _refuse_existing(args: argparse.Namespace) -> None:
    if Path(args.out).exists() and not args.overwrite:
        raise ValueError(
            f"--out {args.out} already exists; pass --overwrite to replace it, or another --out "
            "to keep it."
        )


def _run(args: argparse.Namespace) -> int:
    check_budget_arguments(args.per_class, args.fraction)
    options = parse_options(args.option)
    if SELECTORS.entry(args.method).accepts("seed"):
        options.setdefault("seed", args.seed)
    selector = make_selector(args.method, **options)  # fail on bad options before any training
    progress = args.progress and distributed.is_writer()  # one bar under torchrun
    train_data, _ = load_dataset(
        args.data, root=args.data_root, download=args.download, cache_dir=args.cache_dir
    )
    start = time.perf_counter()
    _, outputs = selection_model_outputs(args, train_data, progress=progress)
    pretrain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with class_progress(progress):  # the greedy step: one bar tick per class, with time left
        result = selector.select(
            features=outputs.features,
            logits=outputs.logits,
            labels=outputs.labels,
            per_class=args.per_class,
            fraction=args.fraction,
        )
    select_seconds = time.perf_counter() - start
    labels = outputs.labels[result.indices]
    by_class = []
    for label in labels.unique().tolist():
        mask = labels == label
        entry = {
            "label": label,
            "class": train_data.classes[label],
            "indices": result.indices[mask].tolist(),
        }
        if result.weights is not None:
            entry["weights"] = result.weights[mask].tolist()
        by_class.append(entry)
    record = {
        "data": str(args.data),
        "method": args.method,
        "options": selector.get_params(),
        "fraction": args.fraction,
        "per_class": args.per_class,
        "seed": args.seed,
        "pretrain": {
            "model": args.model,
            "width": args.width,
            "epochs": args.pretrain_epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "augment": args.pretrain_augment,
            "early_stop": args.pretrain_early_stop,
        },
        "stats": args.stats,
        "indices_refer_to": "the training split as returned by replay_lcmat.data.load_dataset",
        "num_selected": len(result.indices),
        "by_class": by_class,
        "seconds": {"pretrain_and_extract": pretrain_seconds, "select": select_seconds},
    }
    # every rank got here: rank 0 writes only a result all ranks finished
    distributed.check_peers("the end of select, before rank 0 writes --out")
    if not distributed.is_writer():
        return 0  # under torchrun every rank holds the result; rank 0 writes it
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(
        f"{args.method}: {len(result.indices)} of {len(train_data)} samples "
        f"({len(by_class)} classes) written to {args.out}; pretrain+extract "
        f"{pretrain_seconds:.1f} s, select {select_seconds:.1f} s on {args.device}"
    )
    return 0
