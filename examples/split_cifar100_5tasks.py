"""Class-incremental CIFAR-100 in 5 experiences of 20 classes with a 10-images-per-class memory:
the continual-learning experiment of the LCMat paper (Fig. 5), through Avalanche.

    python examples/split_cifar100_5tasks.py --policy lcmat-s uniform --download --device cuda
    python examples/split_cifar100_5tasks.py --policy lcmat-c dm --protocol paper --seeds 0 1 2

Protocols:
  paper   after each experience the policy builds the memory of the new classes from that
          experience's data (selection policies rank with a model trained on it for
          --train-epochs), then a fresh ConvNet-3 is trained on the memory only
          (--retrain-epochs, lr 0.01, DSA) and tested on all classes seen so far.
  replay  Avalanche Naive training on each experience plus replayed memory (LCMatReplayPlugin).

Prints the accuracy after each experience (mean ± std over seeds) and writes a CSV, a
markdown table and a plot of accuracy vs. experience for every policy run into --out.
Without --download (or a --data-root holding torchvision's cifar-100-python) it stops with
the offline error; --data also takes "cifar10", "digits" or an ImageFolder path / .tar.gz.
"""

from __future__ import annotations

import argparse
import sys

from replay_lcmat.data import load_dataset
from replay_lcmat.devices import default_device
from replay_lcmat.memory import memory_policies, memory_policy
from replay_lcmat.reporting import command_line, results_markdown, write_results
from replay_lcmat.selection.extract import DEFAULT_STATS, STATS
from replay_lcmat.specs import parse_policy
from replay_lcmat.strategies import PROTOCOLS, run_continual, tensor_benchmark
from replay_lcmat.training import TrainConfig

POLICIES = list(memory_policies())


def policy_spec(spec: str) -> str:
    """``--policy`` value: a policy name or ``name[key=value,...]`` (the README's syntax),
    checked when the arguments are read."""
    try:
        name, _ = parse_policy(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if name not in POLICIES:
        raise argparse.ArgumentTypeError(
            f"unknown policy {name!r} in {spec!r}; choose from {', '.join(POLICIES)}."
        )
    return spec


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policy",
        nargs="+",
        type=policy_spec,
        default=["lcmat-s", "uniform"],
        metavar="NAME[K=V,...]",
        help=f"memory policies, e.g. lcmat-s 'lcmat-s[eps=0.05]'; names: {', '.join(POLICIES)}",
    )
    parser.add_argument("--protocol", default="paper", choices=PROTOCOLS)
    parser.add_argument("--data", default="cifar100")
    parser.add_argument("--data-root", default=None, help="torchvision root for CIFAR")
    parser.add_argument("--download", action="store_true", help="download CIFAR (needs internet)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--model", default="convnet", help="convnet (ConvNet-3) | resnet18 | mlp")
    parser.add_argument("--width", type=int, default=None, help="ConvNet width (default 128)")
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=10,
        help="epochs on each experience (paper: of the selection model)",
    )
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate on experiences")
    parser.add_argument("--retrain-epochs", type=int, default=1000, help="paper protocol")
    parser.add_argument(
        "--iterations", type=int, default=None, help="condensation iterations (paper values)"
    )
    parser.add_argument(
        "--stats",
        choices=STATS,
        default=DEFAULT_STATS,
        help="normalisation statistics when selection policies take the model's features: "
        "running (eval mode) | class-batch (BatchNorm over batches of one class, the LCMat "
        "reference code; matters for --model resnet18 or a BatchNorm ConvNet) | class-center",
    )
    parser.add_argument(
        "--norm",
        default=None,
        choices=("instance", "batch", "none"),
        help="ConvNet normalisation (default instance, as ConvNet-3)",
    )
    parser.add_argument("--out-dir", default="runs/split_cifar100_5tasks")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train, test = load_dataset(args.data, root=args.data_root, download=args.download)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model_options = {"width": args.width} if args.width else {}
    if args.norm:
        model_options["norm"] = args.norm
    if args.model != "convnet":
        model_options = {}
    retrain = TrainConfig(epochs=args.retrain_epochs)
    rows = []
    for seed in args.seeds:
        benchmark = tensor_benchmark(train, test, n_experiences=args.experiences, seed=seed)
        for spec in args.policy:
            policy, options = parse_policy(spec)  # options in the spec win over the flags
            method = memory_policy(policy)
            if args.iterations is not None and method.entry.accepts("iterations"):
                options.setdefault("iterations", args.iterations)
            if args.width and method.entry.accepts("network_options"):
                options.setdefault("network_options", {"width": args.width})
            stats = options.pop("stats", args.stats) if method.needs_model else None
            run = run_continual(
                benchmark,
                policy=policy,
                model=args.model,
                model_options=model_options,
                protocol=args.protocol,
                per_class=args.per_class,
                train_epochs=args.train_epochs,
                lr=args.lr,
                retrain=retrain,
                seed=seed,
                device=args.device,
                progress=args.progress,
                log=print,
                options=options,
                stats=stats,
            )
            rows += [dict(row, policy=spec) for row in run]  # tells apart two specs of one name
    print()
    print(results_markdown(rows))
    command = command_line("python examples/split_cifar100_5tasks.py", argv)
    paths = write_results(
        rows,
        args.out_dir,
        f"split_{args.data.split('/')[-1].split('.')[0]}_{args.protocol}",
        title=f"Class-incremental {args.data}, {args.experiences} experiences, {args.protocol} protocol",
        command=command,
    )
    print(f"wrote {paths['md']}, {paths['csv']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
