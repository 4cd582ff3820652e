"""Coreset-selection protocol (LCMat paper, Table 1): pretrain, extract once, select
class-balanced subsets with each method, train a fresh model on each, report test accuracy.

    python -m benchmarks.coreset --preset cpu-bn               # ~45 min on 2 CPU cores
    python -m benchmarks.coreset --preset paper --device cuda  # ResNet-18, CIFAR-10, 200 epochs
    python -m benchmarks.coreset --preset paper-1pct --device cuda \
        --data local_data/cifar10-jpeg.tar.gz   # uniform, Craig, LCMat-S at 1%: one GPU, minutes

The cpu presets read CIFAR-10 from the archive named by ``$REPLAY_LCMAT_CIFAR10_ARCHIVE`` (see
README, "Data"); ``--data`` overrides any preset's dataset.

Methods are policy specs (``lcmat-s[eps=0.05]``, see replay_lcmat.specs); every method that ranks
with the selection model runs once per ``--stats`` mode (``running``: eval mode; ``class-batch``:
BatchNorm over batches of one class, as the LCMat reference code; see
replay_lcmat.selection.extract_outputs).

Writes ``benchmarks/results/coreset_<preset>.md`` (mean +- std over seeds, final-epoch accuracy,
per-method selection time), ``.csv`` (one row per run) and ``.png`` (accuracy vs. fraction with
error bars, one panel per stats mode). The selection model is trained once (seed 0); each seed
then re-draws the random selectors (uniform, kcenter) and trains a fresh model with that seed. Selections are nested (greedy order is the ranking, see
tests/test_selection.py), so each method selects once at the largest fraction and a smaller
fraction takes the first ``round(f * n_c)`` picks of every class, which equals selecting again.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from replay_lcmat.data import RandomCropFlip, load_dataset
from replay_lcmat.memory.store import class_mean_one
from replay_lcmat.models import make_model
from replay_lcmat.seeding import seeded
from replay_lcmat.selection import (
    SELECTORS,
    ModelOutputs,
    SelectionModelConfig,
    class_budgets,
    extract_outputs,
    make_selector,
)
from replay_lcmat.selection.extract import STATS, check_stats
from replay_lcmat.specs import expand_stats, format_policy, parse_policy
from replay_lcmat.training import evaluate, pretrain_selection_model, train

from ._common import (
    ARCHIVE,
    RESULTS,
    add_device_argument,
    command_line,
    command_markdown,
    resolve_data,
    write_csv,
    write_markdown,
)

METHODS = ["uniform", "herding", "kcenter", "craig", "adacore", "lcmat-s"]
EPS_GRID = [0.01, 0.05, 0.1, 0.5]  # the paper's grid for LCMat-S
EVIDENCE_METHODS = ["uniform", "herding", "craig", "adacore"] + [
    f"lcmat-s[eps={e}]" for e in EPS_GRID
]

# What the CPU presets share: real CIFAR-10 from the archive of $REPLAY_LCMAT_CIFAR10_ARCHIVE, a
# narrow ConvNet-3, short schedules per fraction, 200 test images per class, 3 seeds.
CPU_COMMON = dict(
    data=ARCHIVE,
    model="convnet",
    pretrain_lr=0.05,
    fractions=[0.005, 0.01, 0.05],
    epochs={0.005: 40, 0.01: 30, 0.05: 8},
    train_epochs=None,
    lr=0.05,
    batch_size=64,
    seeds=[0, 1, 2],
    test_per_class=200,
)

PRESETS = {
    # The paper's settings (Table 1): for GPU machines.
    "paper": dict(
        data="cifar10",
        model="resnet18",
        model_options={},
        pretrain_epochs=10,
        pretrain_lr=0.1,
        pretrain_augment=False,  # the reference code pretrains without crop/flip
        stats=["class-batch"],  # ... and takes outputs in train mode over class batches
        fractions=[0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3],
        epochs={},  # every fraction: train_epochs
        train_epochs=200,
        lr=0.1,
        batch_size=128,
        seeds=[0, 1, 2, 3, 4],
        test_per_class=None,  # the whole test split
        methods=METHODS,
    ),
    # The paper preset cut to what one H200 does in a few minutes: uniform, Craig and LCMat-S at
    # 1%, 3 seeds (the full data, ResNet-18, 10 pretraining epochs, 200 training epochs).
    "paper-1pct": dict(
        data="cifar10",
        model="resnet18",
        model_options={},
        pretrain_epochs=10,
        pretrain_lr=0.1,
        pretrain_augment=False,
        stats=["class-batch"],
        fractions=[0.01],
        epochs={},
        train_epochs=200,
        lr=0.1,
        batch_size=128,
        seeds=[0, 1, 2],
        test_per_class=None,
        methods=["uniform", "craig", "lcmat-s"],
    ),
    # Real CIFAR-10 on 2 CPU cores: a width-16 ConvNet-3, short schedules, 200 test images/class.
    "cpu": dict(
        CPU_COMMON,
        model_options={"width": 16},
        pretrain_epochs=2,
        pretrain_augment=True,
        stats=["running"],
        methods=METHODS,
    ),
    # The evidence run of the selection-statistics question on 2 CPU cores: a BatchNorm
    # ConvNet-3 of width 16, selection model pretrained without augmentation as the reference
    # code does, both statistics modes, the paper's eps grid.
    "cpu-bn": dict(
        CPU_COMMON,
        model_options={"width": 16, "norm": "batch"},
        pretrain_epochs=3,
        pretrain_augment=False,
        stats=["running", "class-batch"],
        methods=EVIDENCE_METHODS,
    ),
    # Does an LCMat-S subset beat herding's? The cpu-bn setting in class-batch statistics, Craig
    # and LCMat-S trained unweighted and weighted (cluster sizes, as the reference code trains
    # Craig), and LCMat-S's mean-matching objectives (bound, joint).
    "cpu-evidence": dict(
        CPU_COMMON,
        model_options={"width": 16, "norm": "batch"},
        pretrain_epochs=3,
        pretrain_augment=False,
        stats=["class-batch"],
        methods=[
            "uniform",
            "herding",
            "craig",
            "craig[weight_power=1]",
            "lcmat-s[eps=0.1]",
            "lcmat-s[eps=0.1,weight_power=1]",
            "lcmat-s[eps=0.1,weight_power=0.5]",
            "lcmat-s[objective=bound,eps=0.05]",
            "lcmat-s[objective=bound,eps=0.25]",
            "lcmat-s[objective=joint]",
        ],
    ),
    # The same question for a model without BatchNorm (instance norm, as ConvNet-3): does the
    # feature-level analogue, class-centred logits, help?
    "cpu-in": dict(
        CPU_COMMON,
        model_options={"width": 16, "norm": "instance"},
        pretrain_epochs=3,
        pretrain_augment=False,
        stats=["running", "class-center"],
        methods=["uniform", "craig", "lcmat-s[eps=0.01]", "lcmat-s[eps=0.05]"],
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


def method_runs(
    methods: list[str], stats_modes: list[str]
) -> list[tuple[str, str, dict, str, float]]:
    """``(label, name, options, stats, weight_power)`` for every method spec and statistics mode
    it depends on.

    A spec's own ``stats=`` option pins it to that mode; methods that use no model run once
    with stats ``"-"``. ``weight_power=a`` (methods with weights: Craig, AdaCore, LCMat-S
    facility) trains the subset with loss weights ``gamma_j ** a`` scaled to mean 1 per class,
    as the reference code trains Craig's subsets weighted; it sets ``weighted=True``.
    """
    for spec in methods:
        name, _ = parse_policy(spec)
        if name not in SELECTORS:
            raise ValueError(f"unknown method {name!r} in {spec!r}; choose from {list(SELECTORS)}.")
    runs = []
    for spec in expand_stats(methods, stats_modes):
        name, options = parse_policy(spec)
        stats = options.pop("stats", None)
        label = format_policy(name, options)
        power = float(options.pop("weight_power", 0))
        if power < 0:
            raise ValueError(f"{spec!r}: weight_power must be >= 0 (0: unweighted training).")
        if power:
            options.setdefault("weighted", True)
        runs.append((label, name, options, check_stats(stats) if stats else "-", power))
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), required=True)
    parser.add_argument(
        "--data",
        default=None,
        help="override the preset's dataset: cifar10 | cifar100 | an ImageFolder path / .tar.gz",
    )
    parser.add_argument("--data-root", default=None, help="torchvision root for CIFAR")
    parser.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="method specs, e.g. uniform craig 'lcmat-s[eps=0.05]' (default: the preset's)",
    )
    parser.add_argument("--stats", nargs="+", choices=STATS, default=None)
    parser.add_argument("--fractions", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--name", default=None, help="results file stem (default coreset_<preset>)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    args.command = command_line("coreset", argv)
    cfg = dict(PRESETS[args.preset])
    for key in ("data", "fractions", "seeds", "stats", "methods"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["data"] = resolve_data(cfg["data"], f"the coreset preset {args.preset}")
    runs = method_runs(cfg["methods"], cfg["stats"])  # fail on a bad spec before any training
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = args.progress
    started = time.perf_counter()

    train_data, test_data = load_dataset(
        cfg["data"], root=args.data_root, download=args.download, progress=progress
    )
    keep = first_per_class(test_data.labels, cfg["test_per_class"])
    test_x, test_y = test_data.subset(keep).normalized(), test_data.labels[keep]
    train_x, train_y = train_data.normalized(), train_data.labels
    channels, size, _ = train_data.shape
    augment = RandomCropFlip() if size >= 32 else None
    cfg["augment"] = augment is not None

    t0 = time.perf_counter()
    config = SelectionModelConfig(
        architecture=cfg["model"],
        model_options=cfg["model_options"],
        epochs=cfg["pretrain_epochs"],
        lr=cfg["pretrain_lr"],
        batch_size=cfg["batch_size"],
        augment=cfg["pretrain_augment"],
    )
    model = pretrain_selection_model(
        train_data, config, device=args.device, seed=0, progress=progress
    )
    pretrain_acc = evaluate(model, test_x, test_y, device=args.device)
    outputs = {}
    for stats in sorted({r[3] for r in runs} - {"-"}):
        outputs[stats] = extract_outputs(
            model, train_data, stats=stats, device=args.device, progress=progress
        )
    if not outputs:  # only model-free methods: labels are all they need
        outputs["-"] = ModelOutputs(torch.empty(0), torch.empty(0), train_data.labels)
    labels = next(iter(outputs.values())).labels
    fit = {
        stats: float((out.logits.argmax(1) == out.labels).float().mean())
        for stats, out in outputs.items()
        if stats != "-"
    }
    pretrain_seconds = time.perf_counter() - t0
    print(
        f"selection model: {pretrain_seconds:.0f} s, test accuracy {pretrain_acc:.4f}; training "
        f"accuracy of its outputs per stats mode {fit}",
        flush=True,
    )

    largest = max(cfg["fractions"])
    rows, select_seconds = [], {}
    jobs = [(run, s) for run in runs for s in cfg["seeds"]]
    bar = tqdm(total=len(jobs) * len(cfg["fractions"]), desc="coreset", disable=not progress)
    selections: dict[tuple, torch.Tensor] = {}
    weighted: dict[tuple, torch.Tensor] = {}  # (label, stats, seed, fraction) -> weights
    for (label, name, options, stats, power), seed in jobs:
        seeded_options = {"seed": seed} if SELECTORS.entry(name).accepts("seed") else {}
        selector = make_selector(name, **options, **seeded_options)
        key = (label, stats, seed if seeded_options else None)
        out = outputs.get(stats)

        def select(fraction: float, selector=selector, out=out):
            return selector.select(
                features=None if out is None else out.features,
                logits=None if out is None else out.logits,
                labels=labels,
                fraction=fraction,
            )

        if key not in selections:
            t0 = time.perf_counter()
            selections[key] = select(largest).indices
            select_seconds[label, stats] = select_seconds.get((label, stats), 0.0) + (
                time.perf_counter() - t0
            )
        for fraction in cfg["fractions"]:
            budgets = class_budgets(labels, fraction=fraction)
            subset = nested_subset(selections[key], labels, budgets)
            weights = None
            if power:
                # the picks are nested, their cluster sizes are not: select again at this
                # budget for the weights (the same picks, checked)
                if (*key, fraction) not in weighted:
                    result = select(fraction)
                    if not torch.equal(result.indices, subset):
                        raise RuntimeError(f"{label}: picks at {fraction} are not nested")
                    weighted[(*key, fraction)] = result.weights
                weights = class_mean_one(weighted[(*key, fraction)], labels[subset], power)
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
                weights=weights,
            )
            acc = evaluate(net, test_x, test_y, device=args.device)  # final epoch, no selection
            rows.append(
                {
                    "method": label,
                    "stats": stats,
                    "fraction": fraction,
                    "seed": seed,
                    "n_selected": len(subset),
                    "epochs": epochs,
                    "test_accuracy": acc,
                    "train_seconds": round(time.perf_counter() - t0, 2),
                }
            )
            bar.update()
            bar.set_postfix(method=label, stats=stats, fraction=fraction, acc=f"{acc:.3f}")
        # rewritten after every run, so an interrupted benchmark keeps what it finished
        write_results(
            args,
            cfg,
            rows,
            select_seconds,
            pretrain_acc,
            fit,
            pretrain_seconds,
            time.perf_counter() - started,
            quiet=True,
        )
    bar.close()
    write_bounds(args, cfg, outputs, selections, labels, weighted)
    write_results(
        args,
        cfg,
        rows,
        select_seconds,
        pretrain_acc,
        fit,
        pretrain_seconds,
        time.perf_counter() - started,
    )
    return 0


def write_bounds(
    args, cfg, outputs, selections, labels, weighted, rho: float = 0.5, k_dims: int = 100
):
    """The LCMat bound terms (paper Fig. 2) of every method's subset at one fraction (1% when
    run, else the smallest), under each statistics mode's outputs of the selection model:
    ``<stem>_bounds_<stats>.{md,csv,png}``. Seeded methods use their first seed's subset;
    methods trained weighted are measured with their weights (the cluster sizes)."""
    from replay_lcmat.diagnostics import (
        bound_markdown,
        compare_subsets,
        plot_bound_terms,
        write_bound_csv,
    )

    stem = args.name or f"coreset_{args.preset}"
    fraction = 0.01 if 0.01 in cfg["fractions"] else min(cfg["fractions"])
    budgets = class_budgets(labels, fraction=fraction)
    for stats, out in outputs.items():
        if stats == "-":
            continue
        subsets = {
            label: nested_subset(idx, labels, budgets)
            for (label, s, seed), idx in selections.items()
            if s in (stats, "-") and seed in (None, cfg["seeds"][0])
        }
        weights = {
            label: w
            for (label, s, seed, f), w in weighted.items()
            if label in subsets and s == stats and f == fraction
        }
        rows = compare_subsets(
            out.features,
            out.logits,
            out.labels,
            subsets,
            rho=rho,
            k_dims=k_dims,
            weights=weights,
        )
        base = args.out_dir / f"{stem}_bounds_{stats}"
        text = [
            f"# LCMat bound terms, coreset preset `{args.preset}`, stats `{stats}`",
            "",
            command_markdown(args.command, "repository root"),
            "",
            f"Subsets at {fraction:.1%} per class (seed {cfg['seeds'][0]} for seeded methods) "
            f"of the training set T, measured under the selection model's `{stats}` outputs, "
            f"last layer, closed form in float64, rho {rho}, K {k_dims}; unweighted means over "
            "S. Smaller is closer to T.",
            "",
            bound_markdown(rows),
        ]
        write_markdown(base.with_suffix(".md"), text)
        write_bound_csv(rows, base.with_suffix(".csv"))
        plot_bound_terms(
            rows,
            base.with_suffix(".png"),
            title=f"bound terms at {fraction:.1%}, stats {stats}",
        )


def summarize(rows: list[dict], fractions: list[float]) -> dict[tuple[str, str], list]:
    """``{(method, stats): [(mean %, std %, n) per fraction]}`` in the order rows first appear."""
    out: dict[tuple[str, str], list] = {}
    for key in dict.fromkeys((r["method"], r["stats"]) for r in rows):
        cells = []
        for fraction in fractions:
            accs = [
                100 * r["test_accuracy"]
                for r in rows
                if (r["method"], r["stats"]) == key and r["fraction"] == fraction
            ]
            if not accs:
                cells.append((math.nan, math.nan, 0))
                continue
            std = statistics.stdev(accs) if len(accs) > 1 else math.nan
            cells.append((statistics.mean(accs), std, len(accs)))
        out[key] = cells
    return out


def plot(summary: dict, fractions: list[float], path: Path, title: str) -> None:
    """Accuracy vs. fraction with error bars, one panel per stats mode; model-free methods
    (stats ``-``) are drawn dashed in every panel."""
    from matplotlib.figure import Figure

    modes = sorted({s for _, s in summary if s != "-"}) or ["-"]
    fig = Figure(figsize=(6 * len(modes), 4.5))
    first = None
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1, sharey=first)
        first = first or ax
        for (method, stats), cells in summary.items():
            if stats not in (mode, "-"):
                continue
            ax.errorbar(
                [100 * f for f in fractions],
                [m for m, _, _ in cells],
                yerr=[0 if math.isnan(sd) else sd for _, sd, _ in cells],
                marker="o",
                capsize=3,
                linestyle="--" if stats == "-" else "-",
                label=method,
            )
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}%" for f in fractions])
        ax.set_xlabel("fraction of the training set (class-balanced)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"selection statistics: {mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_results(
    args, cfg, rows, select_seconds, pretrain_acc, fit, pretrain_seconds, total, quiet=False
) -> None:
    out_dir = args.out_dir
    stem = args.name or f"coreset_{args.preset}"
    write_csv(out_dir / f"{stem}.csv", rows)
    fractions = cfg["fractions"]
    summary = summarize(rows, fractions)
    fit_text = ", ".join(f"{k} {v:.1%}" for k, v in fit.items())
    lines = [
        f"# Coreset selection, preset `{args.preset}`",
        "",
        command_markdown(args.command, "repository root"),
        "",
        f"Data: {Path(str(cfg['data'])).name}; model {cfg['model']} {cfg['model_options']}; "
        f"selection model trained {cfg['pretrain_epochs']} epochs "
        f"({'with' if cfg['pretrain_augment'] else 'without'} crop+flip, seed 0, test accuracy "
        f"{pretrain_acc:.2%}, {pretrain_seconds:.0f} s incl. extraction; training accuracy of "
        f"the extracted outputs: {fit_text or 'n/a'}); subsets trained "
        f"with SGD lr {cfg['lr']} cosine, momentum 0.9, wd 5e-4, batch {cfg['batch_size']}, "
        f"{'crop+flip' if cfg.get('augment', True) else 'no augmentation'}, epochs per fraction "
        f"{cfg['epochs'] or cfg['train_epochs']}; test images: "
        f"{'all' if cfg['test_per_class'] is None else str(cfg['test_per_class']) + ' per class'}"
        f"; final-epoch accuracy (%), mean ± std over seeds {cfg['seeds']}; device "
        f"{args.device}; total wall time {total / 60:.1f} min.",
        "",
        "| method | stats | " + " | ".join(f"{f:.1%}" for f in fractions) + " | select s |",
        "|---|---|" + "---|" * (len(fractions) + 1),
    ]
    for (method, stats), cells in summary.items():
        text = [f"{m:.2f} ± {sd:.2f}" if n else "" for m, sd, n in cells]
        seconds = select_seconds.get((method, stats), 0.0)
        lines.append(f"| {method} | {stats} | " + " | ".join(text) + f" | {seconds:.1f} |")
    lines += [
        "",
        "`stats`: how the selection model's features and logits were taken (`running`: eval "
        "mode; `class-batch`: BatchNorm over batches of 128 samples of one class, as the LCMat "
        "reference code; `class-center`: eval mode, each class's mean feature moved to the mean "
        "of all samples before the head; `-`: the method uses no model). `select s`: wall time "
        "of that method's "
        "selections (all classes, all seeds for seeded methods), on the extracted features.",
    ]
    write_markdown(out_dir / f"{stem}.md", lines)
    plot(summary, fractions, out_dir / f"{stem}.png", f"Coreset selection, preset {args.preset}")
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
