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
from replay_lcmat.data import DATASET_NAMES, load_dataset
from replay_lcmat.data.folder import image_folder_files
from replay_lcmat.devices import default_device
from replay_lcmat.files import atomic_write_text, exclusive_output
from replay_lcmat.selection import (
    SELECTORS,
    make_selector,
)
from replay_lcmat.selection.engine import class_progress
from replay_lcmat.selection.record import selection_record
from replay_lcmat.selection.report import selection_report
from replay_lcmat.specs import parse_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="select a class-balanced coreset (lcmat-s, craig, uniform, ...) and save its indices",
        description="Train a selection model on the training split for --pretrain-epochs, extract "
        "features and logits once, select with --method, and write a selection file to --out "
        "(JSON, read with replay_lcmat.load_selection): the indices in pick order, per class "
        "with weights, greedy gains and file names where there are any, the options and the "
        "seed. For lcmat-s it also reports per class the curvature term's share of the "
        "dissimilarity and the overlap with the eps=0 (gradient-only) picks.",
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
    parser.add_argument(
        "--compare-eps0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lcmat-s: also select with eps=0 to report the overlap (costs a second selection)",
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
    gains, report = selection_report(
        selector,
        result,
        features=outputs.features,
        logits=outputs.logits,
        labels=outputs.labels,
        compare_eps0=args.compare_eps0,
    )
    source = Path(str(args.data)).expanduser()
    files = None
    if str(args.data) not in DATASET_NAMES and source.exists():
        files = image_folder_files(source, cache_dir=args.cache_dir, progress=False)
    record = selection_record(
        indices=result.indices,
        labels=outputs.labels[result.indices].cpu(),
        classes=train_data.classes,
        method=args.method,
        options=selector.get_params(),
        seed=args.seed,
        data=str(args.data),
        num_samples=len(train_data),
        weights=result.weights,
        gains=gains,
        files=files,
        report=report,
        fraction=args.fraction,
        per_class=args.per_class,
        pretrain={
            "model": args.model,
            "width": args.width,
            "epochs": args.pretrain_epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "augment": args.pretrain_augment,
            "early_stop": args.pretrain_early_stop,
        },
        stats=args.stats,
        seconds={"pretrain_and_extract": pretrain_seconds, "select": select_seconds},
    )
    # every rank got here: rank 0 writes only a result all ranks finished
    distributed.check_peers("the end of select, before rank 0 writes --out")
    if not distributed.is_writer():
        return 0  # under torchrun every rank holds the result; rank 0 writes it
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(
        f"{args.method}: {len(result.indices)} of {len(train_data)} samples "
        f"({len(record['by_class'])} classes) written to {args.out}; pretrain+extract "
        f"{pretrain_seconds:.1f} s, select {select_seconds:.1f} s on {args.device}"
    )
    if report:
        print(report_lines(report, train_data.classes))
    return 0


def report_lines(report: dict[int, dict[str, float]], classes: tuple[str, ...]) -> str:
    """LCMat-S's per-class report as text: the curvature term's share of d (a lower bound, see
    :func:`replay_lcmat.selection.report.curvature_share`) and the overlap with eps=0."""
    lines = ["class: curvature share of d (lower bound) | overlap with eps=0 picks"]
    for label, entry in report.items():
        share = entry.get("curvature_share")
        overlap = entry.get("eps0_overlap")
        lines.append(
            f"  {label} ({classes[label]}): "
            + ("-" if share is None else f"{100 * share:.1f}%")
            + " | "
            + ("-" if overlap is None else f"{100 * overlap:.0f}%")
        )
    overlaps = [e["eps0_overlap"] for e in report.values() if "eps0_overlap" in e]
    if overlaps and min(overlaps) == 1.0:
        lines.append(
            "every class picked exactly what eps=0 (Craig) picks: the curvature term is too "
            "small for these features; raise eps (e.g. --option eps=0.1), or in a continual run "
            'let the memory policy "lcmat-s[eps=auto]" choose it on held-out data (README, "What '
            'LCMat-S adds").'
        )
    return "\n".join(lines)
