"""Continual learning with memory replay (LCMat paper, Fig. 5).

Class-incremental split in 5 experiences; after each, every policy builds the memory of the new
classes from that experience's data only (selection policies rank with a model trained on it),
a fresh network is trained on the memory only and tested on all classes seen so far. Accuracy
after each experience, mean ± std over seeds (class order = np.random.permutation under the
seed, as Zhao & Bilen's script).

Presets:
  paper  CIFAR-100, 5 x 20 classes, 10 images per class, ConvNet-3, retraining 1000 epochs
         (lr 0.01, batch 256, x0.1 at the halfway epoch, DSA), paper condensation settings,
         seeds 0..4 (GPU; days for all nine policies).
  cpu    real CIFAR-10 from the archive of $REPLAY_LCMAT_CIFAR10_ARCHIVE, 5 x 2 classes, 10 and
         20 images per class, eight policies, 3 seeds, sizes reduced to finish in about 30 min
         on 2 CPU cores (see notes).
  cpu-bn the selection-statistics comparison: like cpu, BatchNorm ConvNet, selection model
         without augmentation, herding/craig/adacore/lcmat-s (eps grid) with outputs taken in
         running and in class-batch statistics (about 45 min).
  digits scikit-learn digits, four selection policies, seconds: a probe of the selection model
         (use --selection-epochs to vary how well it fits each experience).
  smoke  digits, a few seconds: checks the script end to end.

Usage::

    python -m benchmarks.continual --preset cpu
    python -m benchmarks.continual --preset paper --device cuda --download

Writes ``benchmarks/results/continual_<preset>[_<tag>].{md,csv,png}`` (rewritten after every seed, so
an interrupted run keeps the seeds it finished).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from replay_lcmat.continual import memory_only_run
from replay_lcmat.data import load_dataset, per_class_indices, per_class_subset
from replay_lcmat.reporting import FIELDS, command_markdown, results_markdown, summarize
from replay_lcmat.selection import SelectionModelConfig
from replay_lcmat.selection.extract import STATS
from replay_lcmat.specs import expand_stats, parse_policy
from replay_lcmat.training import TrainConfig

from ._common import (
    ARCHIVE,
    RESULTS,
    add_device_argument,
    append_csv,
    command_line,
    read_csv,
    resolve_data,
    write_markdown,
)


@dataclass
class Preset:
    data: str  # dataset name, or ARCHIVE for the archive of $REPLAY_LCMAT_CIFAR10_ARCHIVE
    policies: list[str]
    per_class: list[int]
    seeds: list[int]
    model_options: dict[str, Any]
    selection_epochs: int
    selection_lr: float
    retrain: TrainConfig
    iterations: dict[str, int]  # condensation policy -> outer iterations
    policy_options: dict[str, dict[str, Any]]
    train_per_class: int | None = None  # None: all training images
    test_per_class: int | None = None  # None: the whole test set
    evaluations: int = 1
    selection_augment: bool = True  # crop + flip while the selection model trains
    stats: list[str] = field(default_factory=lambda: ["running"])  # one run per mode
    notes: list[str] = field(default_factory=list)
    experiences: list[int] = field(default_factory=lambda: [5])  # task shapes: experiences per run
    val_per_class: int | None = None  # validation images per class, from training images left out


ALL = [
    "uniform",
    "herding",
    "kcenter",
    "craig",
    "adacore",
    "lcmat-s[eps=0.01]",  # the paper's facility location
    "dsa",
    "dm",
    "lcmat-c",
]

# What the CPU presets share: the memory retraining and the condensers' settings (width-16
# networks, real-image init, short matching loops).
CPU_RETRAIN = TrainConfig(epochs=50, lr=0.02, batch_size=32, schedule="step", augment="crop-flip")
CPU_CONDENSATION = {
    "dm": {"init": "real", "batch_real": 64, "network_options": {"width": 16}},
    "lcmat-c": {
        "init": "real",
        "batch_real": 32,
        "outer_loop": 2,
        "inner_loop": 1,
        "batch_train": 128,
        "network_options": {"width": 16},
    },
}

PRESETS = {
    "paper": Preset(
        data="cifar100",
        policies=ALL,
        per_class=[10],
        seeds=[0, 1, 2, 3, 4],
        model_options={},
        selection_epochs=10,
        selection_lr=0.01,
        retrain=TrainConfig(),
        iterations={"dsa": 1000, "lcmat-c": 1000, "dm": 20000},
        policy_options={},
        evaluations=3,
        notes=[
            "Published settings: ConvNet-3 (width 128); memory retrained from scratch for 1000 "
            "epochs (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, x0.1 at the halfway epoch, "
            "DSA) and evaluated 3 times per seed; condensation with each method's paper "
            "defaults; selection model: ConvNet-3 trained 10 epochs on the experience's data.",
        ],
    ),
    "cpu": Preset(
        data=ARCHIVE,
        policies=[
            "uniform",
            "herding",
            "kcenter",
            "craig",
            "adacore",
            "lcmat-s[eps=0.01]",
            "dm",
            "lcmat-c",
        ],
        per_class=[10, 20],
        seeds=[0, 1, 2],
        model_options={"width": 16},
        selection_epochs=10,
        selection_lr=0.05,
        retrain=CPU_RETRAIN,
        iterations={"dm": 60, "lcmat-c": 12},
        policy_options=CPU_CONDENSATION,
        train_per_class=500,
        test_per_class=300,
        notes=[
            "Reduced for 2 shared CPU cores (1 torch thread): ConvNet-3 of width 16 (paper 128); "
            "500 training and 300 test images per class (fixed random subsets); selection model "
            "trained 10 epochs (lr 0.05, cosine, crop + flip) on the experience's data; memory "
            "retrained 50 epochs (paper 1000) with lr 0.02, batch 32, x0.1 at the halfway epoch "
            "and random crop + flip instead of DSA (DSA costs 3.5x more per image on the CPU); "
            "one evaluation per seed (paper 3).",
            "Condensation as in benchmarks/condensation.py's cpu preset: real-image init, DM 60 "
            "iterations (paper 20000), LCMat-C 12 iterations (paper 1000) with (outer, inner) "
            "loops (2, 1) and 32 real images per class per matching step; condensation networks "
            "of width 16.",
            "Far from the paper's budget: these numbers check the protocol end to end and give "
            "a first, noisy comparison; they do not reproduce Fig. 5.",
        ],
    ),
    "cpu-bn": Preset(
        data=ARCHIVE,
        policies=["uniform", "herding", "craig", "adacore"]
        + [f"lcmat-s[eps={e}]" for e in (0.01, 0.05, 0.1, 0.5)],
        per_class=[10, 20],
        seeds=[0, 1, 2],
        model_options={"width": 16, "norm": "batch"},
        selection_epochs=10,
        selection_lr=0.05,
        selection_augment=False,
        stats=["running", "class-batch"],
        retrain=CPU_RETRAIN,
        iterations={},
        policy_options={},
        train_per_class=500,
        test_per_class=300,
        notes=[
            "The selection-statistics comparison (issue: reference-faithful selection "
            "statistics): ConvNet-3 of width 16 **with BatchNorm** for the selection model and "
            "the retrained models; selection model trained 10 epochs (lr 0.05, cosine) on the "
            "experience's data **without** augmentation, as the LCMat reference code; every "
            "model-based policy run with outputs taken in eval mode (`stats=running`) and in "
            "train mode over class-homogeneous batches of 128 (`stats=class-batch`).",
            "Reduced for 2 CPU cores (1 torch thread): 500 training and 300 test images per "
            "class (fixed random subsets); memory retrained 50 epochs (paper 1000) with lr "
            "0.02, batch 32, x0.1 at the halfway epoch, random crop + flip instead of DSA; one "
            "evaluation per seed (paper 3).",
        ],
    ),
    "evidence": Preset(
        data=ARCHIVE,
        policies=["uniform", "herding", "craig", "lcmat-s[eps=0.1]"],
        per_class=[10, 20],
        seeds=[0, 1, 2, 3, 4],
        model_options={"width": 16, "norm": "batch"},
        selection_epochs=10,
        selection_lr=0.05,
        selection_augment=False,
        stats=["class-batch"],
        retrain=CPU_RETRAIN,
        iterations={"dm": 20, "lcmat-c": 20},  # equal outer iterations
        policy_options=CPU_CONDENSATION,
        train_per_class=500,
        test_per_class=300,
        val_per_class=200,
        experiences=[5, 2],
        notes=[
            "Does an LCMat memory beat herding? The cpu-bn regime (BatchNorm ConvNet-3 of width "
            "16, selection model trained 10 epochs without augmentation, outputs in class-batch "
            "statistics as the LCMat reference code) in two task shapes: 5 experiences of 2 "
            "classes and 2 experiences of 5 classes (closer to the paper's 20-class "
            "experiences), memory 10 and 20 per class, 5 seeds.",
            "Reduced for 2 CPU cores (1 torch thread): 500 training and 300 test images per "
            "class (fixed random subsets); memory retrained 50 epochs (paper 1000) with lr "
            "0.02, batch 32, x0.1 at the halfway epoch, random crop + flip instead of DSA; one "
            "evaluation per seed (paper 3).",
        ],
    ),
    "digits": Preset(
        data="digits",
        policies=["uniform", "herding", "craig", "lcmat-s[eps=0.01]"],
        per_class=[10],
        seeds=[0, 1, 2],
        model_options={"hidden": (128,)},
        selection_epochs=5,
        selection_lr=0.05,
        retrain=TrainConfig(epochs=100, lr=0.05, batch_size=32, augment="none"),
        iterations={},
        policy_options={},
        notes=[
            "scikit-learn digits (8x8), MLP with one hidden layer of 128; selection model "
            "trained --selection-epochs epochs (lr 0.05) on each experience; memory retrained "
            "100 epochs (lr 0.05, batch 32, x0.1 at the halfway epoch, no augmentation). A "
            "fast probe of how the selection model's fit changes gradient-based selection.",
        ],
    ),
    "smoke": Preset(
        data="digits",
        policies=["uniform", "lcmat-s[eps=0.01]", "dm"],
        per_class=[2],
        seeds=[0],
        model_options={"hidden": (32,)},
        selection_epochs=2,
        selection_lr=0.05,
        retrain=TrainConfig(epochs=5, lr=0.05, batch_size=32, augment="none"),
        iterations={"dm": 2},
        policy_options={"dm": {"batch_real": 16, "network_options": {"width": 4, "depth": 1}}},
        notes=["A seconds-long end-to-end check of this script on digits; not a result."],
    ),
}


def load(preset: Preset, args: argparse.Namespace):
    """``(train, test, val)``: val (or None) holds ``val_per_class`` training images per class
    left out of ``train``, to choose settings without the test set."""
    if preset.data == ARCHIVE:
        archive = resolve_data(preset.data, f"the continual preset {args.preset}")
        full, test = load_dataset(archive, progress=False)
    else:
        full, test = load_dataset(preset.data, root=args.data_root, download=args.download)
    kept = per_class_indices(full, preset.train_per_class, seed=0)
    train = full.subset(kept)
    test = per_class_subset(test, preset.test_per_class, seed=0)
    val = None
    if preset.val_per_class:
        rest = torch.ones(len(full.labels), dtype=torch.bool)
        rest[kept] = False
        if int(torch.bincount(full.labels[rest]).min()) < preset.val_per_class:
            raise ValueError(
                f"fewer than {preset.val_per_class} training images per class are left for "
                "validation; lower val_per_class or train_per_class."
            )
        left = full.subset(torch.nonzero(rest).flatten())
        val = per_class_subset(left, preset.val_per_class, seed=1)
    return train, test, val


# ---------------------------------------------------------------------------------------------
# The results CSV is the run's state: one cell = (experiences, per_class, policy, seed), its rows
# appended once all its experiences are done; a rerun skips the cells already there.

CELL_FIELDS = ("experiences", *FIELDS, "val_accuracy")


def read_rows(path: Path) -> list[dict]:
    """The rows of a results CSV (``[]`` when there is none); a file from before task shapes
    were recorded (no ``experiences`` column) holds 5-experience runs."""
    rows = read_csv(path)
    for r in rows:
        r.setdefault("experiences", 5)
        for key in ("experiences", "seed", "per_class", "experience", "classes_seen"):
            r[key] = int(r[key])
        r["memory_size"] = int(r["memory_size"])
        r["accuracy"] = float(r["accuracy"])
        if r.get("val_accuracy") in (None, ""):
            r.pop("val_accuracy", None)
        else:
            r["val_accuracy"] = float(r["val_accuracy"])
    return rows


def finished_cells(rows: list[dict]) -> set[tuple[int, int, str, int]]:
    """Cells ``(experiences, per_class, policy, seed)`` with a row for every experience."""
    count = Counter((r["experiences"], r["per_class"], r["policy"], r["seed"]) for r in rows)
    return {cell for cell, n in count.items() if n >= cell[0]}


def _named(rows: list[dict], name: str) -> str | None:
    """The first policy spec of ``rows`` whose method is ``name`` (e.g. ``herding[stats=...]``)."""
    return next((r["policy"] for r in rows if parse_policy(r["policy"])[0] == name), None)


def last_experience_table(rows: list[dict]) -> str:
    """Accuracy after the last experience per policy and budget (mean ± std over seeds), with
    the per-seed paired difference against herding and against uniform where both ran."""
    lines = []
    herding, uniform = _named(rows, "herding"), _named(rows, "uniform")
    last = max(r["experience"] for r in rows)
    final = [r for r in rows if r["experience"] == last]
    for budget in sorted({r["per_class"] for r in final}):
        part = [r for r in final if r["per_class"] == budget]
        lines += [
            f"Memory {budget} per class, after the last experience ({part[0]['classes_seen']} "
            "classes): test accuracy (%) mean ± std over seeds; paired differences in points, "
            "same seed; validation: mean accuracy on held-out training images (to choose "
            "settings without the test set), where measured",
            "",
            "| policy | seeds | accuracy | − herding | − uniform | validation |",
            "|---|---|---|---|---|---|",
        ]
        for policy in dict.fromkeys(r["policy"] for r in part):
            acc = {r["seed"]: r["accuracy"] for r in part if r["policy"] == policy}
            mean, std = _mean_std(list(acc.values()))
            cells = [policy, str(len(acc)), f"{100 * mean:.2f} ± {100 * std:.2f}"]
            val = [r["val_accuracy"] for r in part if r["policy"] == policy and "val_accuracy" in r]
            for base in (herding, uniform):
                ref = {r["seed"]: r["accuracy"] for r in part if r["policy"] == base}
                diffs = [acc[s] - ref[s] for s in acc if s in ref]
                if base is None or base == policy or not diffs:
                    cells.append("")
                else:
                    m, s = _mean_std(diffs)
                    cells.append(f"{100 * m:+.2f} ± {100 * s:.2f}")
            cells.append(f"{100 * statistics.mean(val):.2f}" if val else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_shapes(rows: list[dict], path: Path, title: str) -> None:
    """One panel per (task shape, budget): accuracy vs classes seen, mean ± std over seeds."""
    from matplotlib.figure import Figure

    shapes = sorted({r["experiences"] for r in rows}, reverse=True)
    budgets = sorted({r["per_class"] for r in rows})
    fig = Figure(figsize=(5.5 * len(budgets), 4.2 * len(shapes)))
    for i, shape in enumerate(shapes):
        for j, budget in enumerate(budgets):
            ax = fig.add_subplot(len(shapes), len(budgets), i * len(budgets) + j + 1)
            part = [r for r in rows if r["experiences"] == shape and r["per_class"] == budget]
            seen = {r["experience"]: r["classes_seen"] for r in part}
            for (policy, _), stats in summarize(part).items():
                x = [seen[e] for e in sorted(seen)][: len(stats)]
                ax.errorbar(
                    x,
                    [100 * m for m, _, _ in stats],
                    yerr=[100 * s for _, s, _ in stats],
                    marker="o",
                    capsize=3,
                    label=policy,
                )
            ax.set_title(f"{shape} experiences, memory {budget} per class", fontsize=10)
            ax.set_xlabel("classes seen")
            ax.set_ylabel("test accuracy on seen classes (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(rows: list[dict], out_dir: Path, stem: str, title: str, notes: list[str]) -> Path:
    """``<stem>.md`` (per-experience tables and the last-experience comparison per task shape)
    and ``<stem>.png`` from every row of the CSV."""
    text = [f"# {title}", ""] + [n + "\n" for n in notes]
    for shape in sorted({r["experiences"] for r in rows}, reverse=True):
        part = [r for r in rows if r["experiences"] == shape]
        per_exp = part[0]["classes_seen"] // part[0]["experience"]
        text += [
            f"## {shape} experiences of {per_exp} classes",
            "",
            last_experience_table(part),
            results_markdown(part),
        ]
    md = write_markdown(out_dir / f"{stem}.md", text)
    plot_shapes(rows, out_dir / f"{stem}.png", title)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    add_device_argument(parser)
    parser.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    parser.add_argument("--data-root", default=None, help="torchvision root for CIFAR")
    parser.add_argument("--policies", nargs="+", default=None, help="subset of the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument(
        "--per-class", type=int, nargs="+", default=None, help="override the memory budgets"
    )
    parser.add_argument(
        "--experiences",
        type=int,
        nargs="+",
        default=None,
        help="task shapes: the dataset's classes split into this many experiences (e.g. 5 2)",
    )
    parser.add_argument(
        "--selection-epochs", type=int, default=None, help="override the preset's selection epochs"
    )
    parser.add_argument(
        "--selection-early-stop",
        type=float,
        default=None,
        metavar="SHARE",
        help="hold out SHARE of each experience and stop the selection model at its lowest "
        "held-out loss (at most --selection-epochs)",
    )
    parser.add_argument(
        "--stats",
        nargs="+",
        choices=STATS,
        default=None,
        help="selection statistics modes, one run of every model-based policy per mode",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--note", default="", help="what else ran on the machine (written into the results)"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    policies = expand_stats(args.policies or preset.policies, args.stats or preset.stats)
    seeds = args.seeds or preset.seeds
    budgets = args.per_class or preset.per_class
    shapes = args.experiences or preset.experiences
    selection_epochs = (
        preset.selection_epochs if args.selection_epochs is None else args.selection_epochs
    )
    stem = f"continual_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    csv_path = args.out_dir / f"{stem}.csv"
    command = command_line("continual", argv)
    start = time.perf_counter()
    rows = read_rows(csv_path)
    done = finished_cells(rows)
    todo = [
        (
            shape,
            seed,
            [p for p in policies if any((shape, b, p, seed) not in done for b in budgets)],
        )
        for seed in seeds
        for shape in shapes
    ]
    todo = [(shape, seed, pending) for shape, seed, pending in todo if pending]
    print(
        f"continual/{args.preset}: policies {policies}, memory {budgets}/class, seeds {seeds}, "
        f"task shapes {shapes} experiences, selection model {selection_epochs} epochs; "
        f"{len(done)} cell(s) already in {csv_path}, {len(todo)} (shape, seed) run(s) to go",
        flush=True,
    )
    if todo:
        train, test, val = load(preset, args)
        model = "mlp" if preset.data == "digits" else "convnet"

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {line}", flush=True)

    title = f"Continual learning with memory replay, preset {args.preset} ({preset.data})"

    def notes() -> list[str]:
        return preset.notes + [
            f"Selection model: {selection_epochs} epochs per experience"
            + (
                f" (early stopping on the loss of a held-out {args.selection_early_stop} of the "
                "experience)"
                if args.selection_early_stop
                else ""
            )
            + ", "
            f"{'with' if preset.selection_augment else 'without'} crop + flip. Each cell (task "
            "shape, budget, policy, seed) is appended to the CSV when it finishes and skipped "
            f"on a rerun. Last session: {(time.perf_counter() - start) / 60:.1f} min on "
            f"{args.device} ({args.threads} torch thread(s)).",
            f"Machine: {args.note or 'not stated (--note)'}.",
            command_markdown(command, "repository root"),
        ]

    for shape, seed, pending in todo:
        if train.num_classes % shape:
            raise ValueError(
                f"{train.num_classes} classes do not split into {shape} equal experiences; "
                "pick a divisor with --experiences."
            )
        log(f"{shape} experiences, seed {seed}: {pending}")
        new = memory_only_run(
            train,
            test,
            policies=pending,
            per_class=budgets,
            model=model,
            model_options=preset.model_options,
            n_experiences=shape,
            seed=seed,
            selection_model=SelectionModelConfig(
                architecture=model,
                model_options=dict(preset.model_options or {}),
                epochs=selection_epochs,
                lr=preset.selection_lr,
                augment=preset.selection_augment,
                early_stop=args.selection_early_stop,
            ),
            retrain=preset.retrain,
            evaluations=preset.evaluations,
            iterations=preset.iterations,
            policy_options=preset.policy_options,
            device=args.device,
            progress=args.progress,
            log=log,
            val_data=val,
        )
        new = [
            {"experiences": shape, **r}
            for r in new
            if (shape, r["per_class"], r["policy"], r["seed"]) not in done
        ]
        append_csv(csv_path, new, CELL_FIELDS)
        rows += new
        done = finished_cells(rows)
        write_report(rows, args.out_dir, stem, title, notes())
    rows = read_rows(csv_path)  # with the cells other runs appended to the same file
    if rows:
        write_report(rows, args.out_dir, stem, title, notes())
        print()
        for shape in sorted({r["experiences"] for r in rows}, reverse=True):
            print(f"{shape} experiences:")
            print(last_experience_table([r for r in rows if r["experiences"] == shape]))
        print(f"results in {csv_path} (and .md, .png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
