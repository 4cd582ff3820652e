"""``replay-lcmat condense``: learn a synthetic set (LCMat-C, DC, DSA or DM) from a dataset."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from replay_lcmat import distributed, resources
from replay_lcmat.cli.common import add_data_arguments, check_output_path
from replay_lcmat.condensation import CONDENSERS, load_synthetic, make_condenser
from replay_lcmat.condensation.storage import data_fingerprint
from replay_lcmat.data import load_dataset
from replay_lcmat.devices import default_device
from replay_lcmat.files import exclusive_output
from replay_lcmat.specs import parse_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "condense",
        help="condense a dataset into synthetic images per class (lcmat-c, dc, dsa, dm)",
        description="Learn a synthetic set and save it (images, labels, options, seed) to --out "
        "when the run completes, with checkpoints in OUT.ckpt during the run; continue an "
        "interrupted run with --resume OUT.ckpt. Options, --out and --resume are checked before "
        "the data is loaded; an existing --out that holds another run is kept unless "
        "--overwrite, and a second run on the same --out stops with an error naming the first.",
    )
    add_data_arguments(parser)
    parser.add_argument("--method", required=True, choices=list(CONDENSERS))
    parser.add_argument(
        "--per-class",
        type=int,
        required=True,
        help="synthetic images per class (what the condensation papers call ipc); a class "
        "with fewer images is kept whole, with a warning",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="outer iterations (default: the method's paper value: 1000; DM 20000)",
    )
    parser.add_argument(
        "--out", required=True, help="file for the synthetic set (checkpoints: OUT.ckpt)"
    )
    parser.add_argument("--resume", default=None, help="checkpoint of the same run to continue")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it holds another run (default: refuse)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="labels to condense (default: all)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, repeatable (e.g. --option rho=0.02 --option lr_img=0.01 --option "
        'network_options={"width":32}); unset options take the method\'s published value. The '
        'options of a method: python -c "import replay_lcmat.condensation as c; '
        "help(c.CONDENSERS['lcmat-c'])\"",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )
    parser.set_defaults(func=run)


def checkpoint_path(out: Path) -> Path:
    """Where a run of ``--out OUT`` keeps its checkpoints: ``OUT.ckpt`` beside it."""
    return out.with_name(out.name + ".ckpt")


def expected_cost(condenser, args: argparse.Namespace, num_classes: int) -> str:
    """One line, printed before the long step: how many steps the run takes and how to lower it.

    Gradient matching (DC, DSA, LCMat-C) does ``outer_loop`` matching steps per iteration, each a
    forward/backward pass per class on real and synthetic images, with ``inner_loop`` network
    steps between them; DM does one embedding step per class per iteration.
    """
    iterations = condenser.iterations
    classes = len(args.classes) if args.classes else num_classes
    loops = getattr(condenser, "loops", None)
    if loops is not None:
        outer, inner = loops(args.per_class)
        steps = iterations * outer
        detail = (
            f"{iterations} iterations x {outer} matching steps (each over {classes} classes, "
            f"then {inner} network steps) = {steps:,} matching and {steps * inner:,} network "
            "steps"
        )
    else:
        detail = f"{iterations} iterations x {classes} classes = {iterations * classes:,} steps"
    every = condenser.checkpoint_every
    return (
        f"{args.method}: {detail} on {args.device}, with a progress bar and its time left. "
        "Lower the cost with --iterations N (the published value is the default)"
        + (", or --option outer_loop=... / inner_loop=..." if loops is not None else "")
        + (
            f"; a checkpoint every {every} iterations in {checkpoint_path(Path(args.out))} lets "
            "you stop and --resume it"
            if every
            else ""
        )
        + "."
    )


def run(args: argparse.Namespace) -> int:
    # every check that needs no data comes first: options, --resume, --out
    out = check_output_path(args.out)
    checkpoint = checkpoint_path(out)
    if args.resume is not None:
        # a missing or corrupt file fails now, not after loading
        load_synthetic(args.resume, allow_incomplete=True)
    options = parse_options(args.option)
    if args.iterations is not None:
        options["iterations"] = args.iterations
    condenser = make_condenser(
        args.method,
        device=args.device,
        seed=args.seed,
        classes=args.classes,
        checkpoint=str(checkpoint),
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every,
        progress=args.progress and distributed.is_writer(),  # one bar under torchrun
        **options,
    )
    condenser.check_budget(args.per_class)
    # refuse to overwrite another run, in --out or its checkpoint (options only)
    condenser.check_checkpoint(args.resume, path=out)
    condenser.check_checkpoint(args.resume)
    # --out is locked for the whole run (rank 0 writes it): a second run on it stops here
    with exclusive_output(out) if distributed.is_writer() else contextlib.nullcontext():
        train, _ = load_dataset(
            args.data, root=args.data_root, download=args.download, cache_dir=args.cache_dir
        )
        channels, height, width = train.shape
        resources.require_memory(  # the float copy and one temporary of normalisation
            2 * 4 * len(train) * channels * height * width,
            what=f"condense: the {len(train)} training images as normalised float32 "
            f"[{len(train)}, {channels}, {height}, {width}]",
            device="cpu",
            fix="Condense a smaller dataset (e.g. the classes you need, saved as a folder "
            "dataset), or free memory.",
        )
        images = train.normalized()
        condenser.check_checkpoint(
            args.resume,
            fingerprint=data_fingerprint(images, train.labels),
            per_class=args.per_class,
            path=out,
        )
        if distributed.is_writer():
            print(expected_cost(condenser, args, train.labels.unique().numel()))
        start = time.perf_counter()
        result = condenser.condense(
            images, train.labels, per_class=args.per_class, resume=args.resume
        )
        seconds = time.perf_counter() - start
        # every rank got here: rank 0 writes only a result all ranks finished
        distributed.check_peers("the end of condense, before rank 0 writes --out")
        if not distributed.is_writer():
            return 0
        # the final file appears only now, whole (a killed run leaves OUT.ckpt, marked
        # unfinished, and no OUT)
        result.synthetic.save(out)
        checkpoint.unlink(missing_ok=True)  # the run is complete: OUT holds its resume state
    counts = [c for c in result.labels.bincount().tolist() if c]
    kept = sum(c < args.per_class for c in counts)
    whole = f", {kept} of them smaller and kept whole (real images)" if kept else ""
    print(
        f"{args.method}: {len(result.images)} {'' if kept else 'synthetic '}images "
        f"{tuple(result.images.shape[1:])} "
        f"({len(counts)} classes x {args.per_class}{whole}) saved to {args.out}"
    )
    if result.losses:
        print(f"matching loss: first {result.losses[0]:.4g}, last {result.losses[-1]:.4g}")
    print(f"wall time {seconds:.1f} s on {args.device}")
    return 0
