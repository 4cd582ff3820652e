"""Coreset-selection protocol (spec section 5, Table 1): pretrain, extract once, select
class-balanced subsets with each method, train a fresh model on each, report test accuracy.

    python -m benchmarks.coreset --preset cpu                  # ~20-30 min on 2 CPU cores
    python -m benchmarks.coreset --preset paper --device cuda  # ResNet-18, CIFAR-10, 200 epochs
    python -m benchmarks.coreset --preset paper --data cifar100 --device cuda

Writes ``benchmarks/results/coreset_<preset>.md`` (mean +- std over seeds, final-epoch accuracy,
per-method selection time) and ``coreset_<preset>.csv`` (one row per run). The selection model
is trained once (seed 0); each seed then re-draws the random selectors (uniform, kcenter) and
trains a fresh model with that seed. Selections are nested (greedy order is the ranking, see
tests/test_selection.py), so each method selects once at the largest fraction and a smaller
fraction takes the first ``round(f * n_c)`` picks of every class, which equals selecting again.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from replay_lcmat.data import RandomCropFlip, load_dataset
from replay_lcmat.models import make_model
from replay_lcmat.seeding import seeded
from replay_lcmat.selection import (
    SELECTORS,
    class_budgets,
    extract_outputs,
    make_selector,
    pretrain_selection_model,
)
from replay_lcmat.training import evaluate, train

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
METHODS = ["uniform", "herding", "kcenter", "craig", "adacore", "lcmat-s"]

PRESETS = {
    # The paper's settings (spec section 5): for GPU machines.
    "paper": dict(
        data="cifar10",
        model="resnet18",
        model_options={},
        pretrain_epochs=10,
        pretrain_lr=0.1,
        fractions=[0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3],
        epochs={},  # every fraction: train_epochs
        train_epochs=200,
        lr=0.1,
        batch_size=128,
        seeds=[0, 1, 2, 3, 4],
        test_per_class=None,  # the whole test split
    ),
    # Real CIFAR-10 on 2 CPU cores: a width-16 ConvNet-3, short schedules, 200 test images/class.
    "cpu": dict(
        data=str(REPO.parent / "shared/data/cifar10-jpeg.tar.gz"),
        model="convnet",
        model_options={"width": 16},
        pretrain_epochs=2,
        pretrain_lr=0.05,
        fractions=[0.005, 0.01, 0.05],
        epochs={0.005: 40, 0.01: 30, 0.05: 8},
        train_epochs=None,
        lr=0.05,
        batch_size=64,
        seeds=[0, 1, 2],
        test_per_class=200,
    ),
}


def first_per_class(labels: torch.Tensor, per_class: int | None) -> torch.Tensor:
    """Indices of the first ``per_class`` samples of every class (all samples if None)."""
    if per_class is None:
        return torch.arange(len(labels))
    keep = [torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique().tolist()]
    return torch.cat(keep).sort().values


def nested_subset(indices: torch.Tensor, labels: torch.Tensor, budgets: dict[int, int]):
    """First ``budgets[c]`` picks of every class from a class-grouped, ranked ``indices``."""
    chosen = labels[indices]
    return torch.cat([indices[chosen == c][:m] for c, m in budgets.items()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), required=True)
    parser.add_argument("--data", default=None, help="override the preset's dataset")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=list(SELECTORS))
    parser.add_argument("--fractions", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--name", default=None, help="results file stem (default coreset_<preset>)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for key in ("data", "fractions", "seeds"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    started = time.perf_counter()

    train_data, test_data = load_dataset(cfg["data"], progress=progress)
    keep = first_per_class(test_data.labels, cfg["test_per_class"])
    test_x, test_y = test_data.subset(keep).normalized(), test_data.labels[keep]
    train_x, train_y = train_data.normalized(), train_data.labels
    channels, size, _ = train_data.shape
    augment = RandomCropFlip() if size >= 32 else None
    cfg["augment"] = augment is not None

    t0 = time.perf_counter()
    model = pretrain_selection_model(
        train_data,
        model=cfg["model"],
        model_options=cfg["model_options"],
        epochs=cfg["pretrain_epochs"],
        lr=cfg["pretrain_lr"],
        batch_size=cfg["batch_size"],
        device=args.device,
        seed=0,
        progress=progress,
    )
    pretrain_acc = evaluate(model, test_x, test_y, device=args.device)
    outputs = extract_outputs(model, train_data, device=args.device, progress=progress)
    pretrain_seconds = time.perf_counter() - t0
    print(
        f"selection model: {pretrain_seconds:.0f} s, test accuracy {pretrain_acc:.4f}", flush=True
    )

    largest = max(cfg["fractions"])
    rows, select_seconds = [], dict.fromkeys(args.methods, 0.0)
    runs = [(m, s) for m in args.methods for s in cfg["seeds"]]
    bar = tqdm(total=len(runs) * len(cfg["fractions"]), desc="coreset", disable=not progress)
    selections: dict[tuple[str, int | None], torch.Tensor] = {}
    for method, seed in runs:
        selector = make_selector(method, **({"seed": seed} if SELECTORS[method].takes_seed else {}))
        key = (method, seed if selector.uses_seed else None)
        if key not in selections:
            t0 = time.perf_counter()
            selections[key] = selector.select(
                features=outputs.features,
                logits=outputs.logits,
                labels=outputs.labels,
                fraction=largest,
            ).indices
            select_seconds[method] += time.perf_counter() - t0
        for fraction in cfg["fractions"]:
            budgets = class_budgets(outputs.labels, fraction=fraction)
            subset = nested_subset(selections[key], outputs.labels, budgets)
            epochs = cfg["epochs"].get(fraction, cfg["train_epochs"])
            t0 = time.perf_counter()
            with seeded(seed):
                net = make_model(
                    cfg["model"],
                    in_channels=channels,
                    num_classes=train_data.num_classes,
                    image_size=size,
                    **cfg["model_options"],
                )
            train(
                net,
                train_x[subset],
                train_y[subset],
                epochs=epochs,
                lr=cfg["lr"],
                batch_size=cfg["batch_size"],
                augment=augment,
                device=args.device,
                seed=seed,
                progress=False,
            )
            acc = evaluate(net, test_x, test_y, device=args.device)  # final epoch, no selection
            rows.append(
                {
                    "method": method,
                    "fraction": fraction,
                    "seed": seed,
                    "n_selected": len(subset),
                    "epochs": epochs,
                    "test_accuracy": acc,
                    "train_seconds": round(time.perf_counter() - t0, 2),
                }
            )
            bar.update()
            bar.set_postfix(method=method, fraction=fraction, acc=f"{acc:.3f}")
    bar.close()
    write_results(
        args,
        cfg,
        rows,
        select_seconds,
        pretrain_acc,
        pretrain_seconds,
        time.perf_counter() - started,
    )
    return 0


def write_results(args, cfg, rows, select_seconds, pretrain_acc, pretrain_seconds, total) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = args.name or f"coreset_{args.preset}"
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fractions = cfg["fractions"]
    lines = [
        f"# Coreset selection, preset `{args.preset}`",
        "",
        "Command (repository root): `python -m benchmarks.coreset " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Data: {Path(str(cfg['data'])).name}; model {cfg['model']} {cfg['model_options']}; "
        f"selection model trained {cfg['pretrain_epochs']} epochs (seed 0, test accuracy "
        f"{pretrain_acc:.2%}, {pretrain_seconds:.0f} s incl. extraction); subsets trained "
        f"with SGD lr {cfg['lr']} cosine, momentum 0.9, wd 5e-4, batch {cfg['batch_size']}, "
        f"{'crop+flip' if cfg.get('augment', True) else 'no augmentation'}, epochs per fraction {cfg['epochs'] or cfg['train_epochs']}; test images: "
        f"{'all' if cfg['test_per_class'] is None else str(cfg['test_per_class']) + ' per class'}"
        f"; final-epoch accuracy (%), mean ± std over seeds {cfg['seeds']}; device "
        f"{args.device}; total wall time {total / 60:.1f} min.",
        "",
        "| method | " + " | ".join(f"{f:.1%}" for f in fractions) + " | select s |",
        "|---|" + "---|" * (len(fractions) + 1),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for fraction in fractions:
            accs = [
                100 * r["test_accuracy"]
                for r in rows
                if r["method"] == method and r["fraction"] == fraction
            ]
            std = statistics.stdev(accs) if len(accs) > 1 else math.nan
            cells.append(f"{statistics.mean(accs):.2f} ± {std:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {select_seconds[method]:.1f} |")
    lines += [
        "",
        "`select s`: wall time of that method's selections (all classes, all seeds "
        "for seeded methods), on the extracted features.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
