"""Arguments and checks shared by subcommands: data arguments, output paths, budgets."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from replay_lcmat.selection import SelectionModelConfig, extract_outputs
from replay_lcmat.selection.extract import DEFAULT_STATS, STATS
from replay_lcmat.training import pretrain_selection_model


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--data``, ``--data-root``, ``--download``, ``--cache-dir`` (see ``load_dataset``)."""
    parser.add_argument(
        "--data",
        required=required,
        default=None,
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


def add_selection_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The selection model θ's options, shared by ``select`` and ``inspect``: its network,
    pretraining and the statistics its outputs are taken with."""
    group = parser.add_argument_group("selection model θ")
    group.add_argument("--model", default="convnet", help="convnet | resnet18 | mlp")
    group.add_argument("--width", type=int, default=None, help="ConvNet width (default 128)")
    group.add_argument("--pretrain-epochs", type=int, default=10, help="paper: 10")
    group.add_argument(
        "--pretrain-early-stop",
        type=float,
        default=None,
        metavar="SHARE",
        help="hold out SHARE of every class and stop θ's training at its lowest held-out loss "
        "(at most --pretrain-epochs)",
    )
    group.add_argument("--lr", type=float, default=0.1, help="pretraining SGD learning rate")
    group.add_argument("--batch-size", type=int, default=128)
    group.add_argument(
        "--pretrain-augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="crop + flip while θ trains, images of 32 pixels or more (the LCMat reference "
        "code: --no-pretrain-augment)",
    )
    group.add_argument(
        "--stats",
        choices=STATS,
        default=DEFAULT_STATS,
        help="normalisation statistics while θ's features and logits are taken: running (eval "
        "mode) | class-batch (BatchNorm over batches of one class, the LCMat reference code) | "
        f"class-center (default {DEFAULT_STATS}; see extract_outputs)",
    )


def selection_model_config(args: argparse.Namespace) -> SelectionModelConfig:
    """θ's configuration from the flags of :func:`add_selection_model_arguments`."""
    return SelectionModelConfig(
        architecture=args.model,
        model_options={} if args.width is None else {"width": args.width},
        epochs=args.pretrain_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=args.pretrain_augment,
        early_stop=args.pretrain_early_stop,
        stats=args.stats,
    )


def selection_model_outputs(args: argparse.Namespace, train, *, progress: bool):
    """``(model, outputs)``: θ pretrained on ``train`` with the options of
    :func:`add_selection_model_arguments` (and ``--seed``, ``--device``), and its outputs."""
    config = selection_model_config(args)
    model = pretrain_selection_model(
        train, config, device=args.device, seed=args.seed, progress=progress
    )
    outputs = extract_outputs(
        model, train, stats=config.stats, device=args.device, progress=progress
    )
    return model, outputs
