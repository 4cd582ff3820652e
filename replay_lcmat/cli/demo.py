"""``replay-lcmat demo``: a one-minute class-incremental run, an LCMat-S replay memory against
herding (the strongest baseline a user would otherwise pick) and uniform.

Offline, on real data found locally: the CIFAR-10 archive named by
``$REPLAY_LCMAT_CIFAR10_ARCHIVE`` when set, else scikit-learn's digits. Five experiences; after
each, a fresh model is trained on the memory only and tested on all classes seen so far (the
LCMat paper's protocol, scaled down).
On CIFAR the networks are ConvNet-3s of width 16 with BatchNorm; the selection model is trained
without augmentation and its outputs are taken with the default selection statistics
(``DEFAULT_STATS``), the settings the committed benchmarks support (README, "What the
measurements show"). Prints the per-experience table and a plain verdict computed from this
run's own numbers (the LCMat policy minus herding and minus uniform, paired by seed, naming the
data and sizes used), and writes a CSV, a markdown table and a plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from replay_lcmat.continual import memory_only_run
from replay_lcmat.data import load_dataset, per_class_subset, shared_cifar10_archive
from replay_lcmat.devices import default_device
from replay_lcmat.diagnostics import MemorySet, plot_memory_grid
from replay_lcmat.memory import MEMORY_DEFAULTS
from replay_lcmat.reporting import (
    command_line,
    comparison_text,
    paired_difference,
    results_markdown,
    write_results,
)
from replay_lcmat.selection import SelectionModelConfig
from replay_lcmat.selection.extract import DEFAULT_STATS, STATS
from replay_lcmat.specs import parse_policy
from replay_lcmat.training import TrainConfig


# ------------------------------------------------------------------------------ the demo
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="one-minute class-incremental run: LCMat-S vs herding vs uniform replay memory",
        description="Five experiences of a class-incremental split of local real data (the "
        "CIFAR-10 archive named by $REPLAY_LCMAT_CIFAR10_ARCHIVE when set, else scikit-learn "
        "digits). After each experience a memory of --per-class exemplars per new class "
        "is built by each policy, a fresh model is trained on the memory only and tested on "
        "every class seen so far.",
    )
    parser.add_argument(
        "--data",
        default="auto",
        help="auto ($REPLAY_LCMAT_CIFAR10_ARCHIVE when set, else digits) | digits | path to an "
        "ImageFolder / .tar.gz",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(DEMO_POLICIES),
        help="memory policies or specs; the first LCMat one is compared with herding and "
        "uniform in the verdict",
    )
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument(
        "--train-per-class", type=int, default=200, help="training images kept per class"
    )
    parser.add_argument("--test-per-class", type=int, default=100, help="test images per class")
    parser.add_argument("--epochs", type=int, default=None, help="memory retraining epochs")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="one run per seed (class order too)"
    )
    parser.add_argument(
        "--selection-epochs", type=int, default=5, help="epochs of the selection model"
    )
    parser.add_argument(
        "--selection-early-stop",
        type=float,
        default=None,
        metavar="SHARE",
        help="hold out SHARE of each experience; stop the selection model at its lowest "
        "held-out loss",
    )
    parser.add_argument(
        "--stats",
        choices=STATS,
        default=DEFAULT_STATS,
        help="selection statistics of the selection model's outputs (see extract_outputs)",
    )
    parser.add_argument(
        "--norm",
        choices=("batch", "instance", "none"),
        default="batch",
        help="ConvNet normalisation on CIFAR-like data",
    )
    parser.add_argument("--out-dir", default="runs/demo", help="output folder (CSV, table, plot)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: these small models gain little from more, and "
        "lose a lot when the cores are shared)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=False, help="progress bars"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.data
    if source == "auto":
        archive = shared_cifar10_archive()
        source = str(archive) if archive is not None else "digits"
    train, test = load_dataset(source, progress=args.progress)
    name = "digits" if source == "digits" else Path(source).name.split(".")[0]
    if train.num_classes % 5:
        raise ValueError(f"{name} has {train.num_classes} classes; the demo needs a multiple of 5.")
    train = per_class_subset(train, args.train_per_class, seed=0)
    test = per_class_subset(test, args.test_per_class, seed=0)
    channels, size, _ = train.shape
    if size >= 32:  # CIFAR-like: a narrow ConvNet-3
        model, options, epochs, lr, batch = (
            "convnet",
            {"width": 16, "norm": args.norm},
            50,
            0.05,
            64,
        )
    else:  # tiny images: an MLP
        model, options, epochs, lr, batch = "mlp", {"hidden": (128,)}, 100, 0.05, 32
    epochs = args.epochs if args.epochs is not None else epochs
    augment = "crop-flip" if size >= 32 else "none"
    print(
        f"demo: {name}, {train.num_classes} classes in 5 experiences, {len(train)} training / "
        f"{len(test)} test images, memory {args.per_class} per class, policies "
        f"{', '.join(args.policies)}, model {model} {options}, {epochs} retraining epochs, "
        f"selection statistics {args.stats}, seeds {args.seeds}"
    )
    selection_model = SelectionModelConfig(
        architecture=model,
        model_options=options,
        epochs=args.selection_epochs,
        lr=lr,
        augment=False,
        early_stop=args.selection_early_stop,
        stats=args.stats,
    )
    rows = []
    memories: dict = {}
    for seed in args.seeds:
        memories.clear()
        rows += memory_only_run(
            train,
            test,
            policies=args.policies,
            per_class=args.per_class,
            model=model,
            model_options=options,
            n_experiences=5,
            seed=seed,
            selection_model=selection_model,
            retrain=TrainConfig(
                epochs=epochs, lr=lr, batch_size=batch, schedule="step", augment=augment
            ),
            device=args.device,
            progress=args.progress,
            log=print,
            memories_out=memories,
        )
    print()
    print(results_markdown(rows))
    counts = torch.bincount(train.labels).tolist()
    sizes = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"
    setting = (
        f"Setting: {name}, {train.num_classes} classes in 5 experiences, {sizes} training images "
        f"per class, memory {args.per_class} per class, {len(args.seeds)} seed(s) "
        f"{list(args.seeds)}, {epochs} retraining epochs."
    )
    if "lcmat-s" in args.policies:
        options = ", ".join(f"{k}={v}" for k, v in MEMORY_DEFAULTS["lcmat-s"].items())
        setting += f" lcmat-s is the memory default of LCMat-S ({options})."
    verdict = verdict_text(rows, args.policies, setting)
    print(verdict)
    command = command_line("replay-lcmat demo", _settings_argv(args))
    paths = write_results(
        rows,
        args.out_dir,
        "demo",
        title=f"replay-lcmat demo ({name})",
        command=command,
        notes=verdict,
    )
    grid = Path(args.out_dir) / "demo_memory.png"
    plot_memory_grid(
        [
            MemorySet.from_class_memory(
                memories[p, args.per_class],
                name=p,
                mean=train.mean,
                std=train.std,
                classes=train.classes,
            )
            for p in args.policies
        ],
        grid,
        title=f"memory after 5 experiences (seed {args.seeds[-1]}), one row per class",
    )
    print(
        f"wrote {paths['md']}, {paths['csv']}, {paths['png']} and {grid} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


DEMO_POLICIES = ("lcmat-s", "herding", "uniform")


def verdict_text(rows: list[dict], policies: list[str], setting: str) -> str:
    """The demo's verdict from its own rows: the first LCMat policy minus herding and minus
    uniform after each experience (paired by seed), and one plain sentence."""
    lcmat = next((p for p in policies if parse_policy(p)[0].startswith("lcmat")), None)
    lines = [setting]
    for base in ("herding", "uniform"):
        if lcmat is None or base not in policies:
            continue
        lines.append(comparison_text(rows, lcmat, base))
    if lcmat is not None and "herding" in policies and "uniform" in policies:
        last = {
            base: [m for m, _, _ in stats][-1]
            for base in ("herding", "uniform")
            for stats in paired_difference(rows, lcmat, base).values()
        }
        beats = [b for b in ("herding", "uniform") if last[b] > 0]
        if len(beats) == 2:
            plain = f"{lcmat} beats both herding and uniform after the last experience."
        elif beats:
            plain = f"{lcmat} beats {beats[0]} but NOT {({'herding', 'uniform'} - set(beats)).pop()} after the last experience."
        else:
            plain = f"{lcmat} beats neither herding nor uniform after the last experience."
        lines.append(
            f"Verdict: {plain} (after the last experience: {100 * last['herding']:+.1f} points "
            f"vs herding, {100 * last['uniform']:+.1f} vs uniform; mean over seeds)."
        )
    return "\n".join(lines)


def _settings_argv(args: argparse.Namespace) -> list[str]:
    """Every setting of this run as command-line arguments (defaults included), so the command
    written into the results reruns it even if a default changes."""
    argv = []
    for key, value in vars(args).items():
        if key in ("func", "command", "progress") or value is None:
            continue
        argv.append(f"--{key.replace('_', '-')}")
        argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return argv
