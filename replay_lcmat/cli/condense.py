"""``replay-lcmat condense``: learn a synthetic set (LCMat-C, DC, DSA or DM) from a dataset."""

from __future__ import annotations

import argparse
import time

import torch

from replay_lcmat.cli.common import add_data_arguments, check_output_path
from replay_lcmat.condensation import available_condensers, load_synthetic, make_condenser
from replay_lcmat.data import load_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "condense",
        help="condense a dataset into ipc synthetic images per class (lcmat-c, dc, dsa, dm)",
        description="Learn a synthetic set and save it (images, labels, options, seed) to --out, "
        "with checkpoints during the run; continue an interrupted run with --resume. Options, "
        "--out and --resume are checked before the data is loaded; an existing --out that holds "
        "another run is kept unless --overwrite.",
    )
    add_data_arguments(parser)
    parser.add_argument("--method", required=True, choices=available_condensers())
    parser.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    parser.add_argument(
        "--iterations", type=int, required=True, help="outer iterations (papers: 1000; DM 20000)"
    )
    parser.add_argument("--out", required=True, help="file for the synthetic set / checkpoints")
    parser.add_argument("--resume", default=None, help="checkpoint of the same run to continue")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it holds another run (default: refuse)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="labels to condense (default: all)"
    )
    parser.add_argument(
        "--allow-small-classes",
        action="store_true",
        help="condense a class with fewer images than --ipc (noise init) instead of refusing",
    )
    method = parser.add_argument_group("method options (default: the method's published value)")
    method.add_argument("--rho", type=float, default=None, help="lcmat-c curvature weight")
    method.add_argument("--init", choices=("noise", "real"), default=None)
    method.add_argument("--lr-img", type=float, default=None)
    method.add_argument("--lr-net", type=float, default=None, help="dc/dsa/lcmat-c")
    method.add_argument("--outer-loop", type=int, default=None, help="dc/dsa/lcmat-c")
    method.add_argument("--inner-loop", type=int, default=None, help="dc/dsa/lcmat-c")
    method.add_argument("--batch-real", type=int, default=None, help="real images per class")
    method.add_argument("--network", default="convnet", help="model name (default ConvNet-3)")
    method.add_argument("--width", type=int, default=None, help="ConvNet width (default 128)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _method_options(args: argparse.Namespace) -> dict:
    options = {
        "rho": args.rho,
        "init": args.init,
        "lr_img": args.lr_img,
        "lr_net": args.lr_net,
        "outer_loop": args.outer_loop,
        "inner_loop": args.inner_loop,
        "batch_real": args.batch_real,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.method == "dm":
        for name in ("rho", "lr_net", "outer_loop", "inner_loop"):
            if name in options:
                raise ValueError(f"--{name.replace('_', '-')} does not apply to dm; drop it.")
    elif args.method != "lcmat-c" and "rho" in options:
        raise ValueError(f"--rho applies to lcmat-c only; {args.method} has no curvature term.")
    return options


def run(args: argparse.Namespace) -> int:
    # every check that needs no data comes first: options, --resume, --out
    check_output_path(args.out)
    if args.resume is not None:
        load_synthetic(args.resume)  # a missing or corrupt file fails now, not after loading
    condenser = make_condenser(
        args.method,
        ipc=args.ipc,
        iterations=args.iterations,
        device=args.device,
        seed=args.seed,
        network=args.network,
        network_options={} if args.width is None else {"width": args.width},
        classes=args.classes,
        allow_small_classes=args.allow_small_classes,
        checkpoint=args.out,
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        **_method_options(args),
    )
    condenser.check_checkpoint(args.resume)  # refuse to overwrite another run (options only)
    train, _ = load_dataset(
        args.data, root=args.data_root, download=args.download, cache_dir=args.cache_dir
    )
    start = time.perf_counter()
    images, labels = condenser.condense(train.normalized(), train.labels, resume=args.resume)
    seconds = time.perf_counter() - start
    counts = labels.bincount().tolist()
    print(
        f"{args.method}: {len(images)} synthetic images {tuple(images.shape[1:])} "
        f"({len([c for c in counts if c])} classes x {args.ipc}) saved to {args.out}"
    )
    if condenser.losses_:
        print(f"matching loss: first {condenser.losses_[0]:.4g}, last {condenser.losses_[-1]:.4g}")
    print(f"wall time {seconds:.1f} s on {args.device}")
    return 0
