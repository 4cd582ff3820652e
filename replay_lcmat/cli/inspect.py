"""``replay-lcmat inspect``: pictures of a memory and of the quantities LCMat matches."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from replay_lcmat.cli.common import (
    add_data_arguments,
    add_selection_model_arguments,
    check_budget_arguments,
    check_output_path,
    selection_model_outputs,
)
from replay_lcmat.cli.inspect_grid import check_kind, load_train, run_grid, unique_names
from replay_lcmat.devices import default_device
from replay_lcmat.diagnostics import (
    bound_markdown,
    compare_subsets,
    curvature_spectrum,
    loss_surface,
    plot_bound_terms,
    plot_curvature_spectrum,
    plot_loss_contours,
    top_k_share,
    write_bound_csv,
)
from replay_lcmat.selection import SELECTORS, load_selection, make_selector
from replay_lcmat.selection.record import check_labels
from replay_lcmat.specs import parse_policy

PICTURES = ("grid", "bounds", "contours", "spectrum")

DESCRIPTION = """\
Pictures of what a memory keeps and of the quantities LCMat matches (replay_lcmat.diagnostics).

  grid      The images each method keeps (paper Fig. 7): one panel per method, one row band per
            class (class names on the left), the first --max-per-class images of each class in
            rank order, denormalised with the dataset's mean/std. Sources: selection JSONs of
            `replay-lcmat select`, synthetic sets of `replay-lcmat condense`, ClassMemory files
            (e.g. saved by an Avalanche plugin).
  bounds    The two terms of the LCMat bound for each method's subset S of the training set T
            (paper Fig. 2), under a selection model θ trained here: the gradient gap
            ||∇L(T) − ∇L(S)||₂ and the curvature gap ½ρ·||λ_T − λ_S||₁ over the top-K-variance
            diagonal-Hessian coordinates (last layer, closed form, float64). A bar plot (--out),
            a markdown table and a CSV beside it (same stem) that also hold the curvature gap
            over all coordinates, ½ρ·max|Δλ| (Eq. 7) and the loss gap |L(T) − L(S)|.
  contours  Loss contours of T (solid) and of each subset S (dashed) around θ (paper Fig. 1b),
            along two filter-normalised random directions (Li et al. 2018; biases and 1-D
            parameters fixed), on a --steps x --steps grid over [-span, span]; the star is θ.
            A subset whose contours follow T's matches T's loss and curvature. Cost:
            steps² forward passes over --samples images (under a minute on one CPU thread for a
            width-16 ConvNet on 1,000 CIFAR images; use a GPU for width 128).
  spectrum  Sorted variances, over the samples of one class, of the last-layer diagonal-Hessian
            coordinates (paper Fig. 6), log scale, with the K cut of LCMat-S marked and the share
            of the variance above it: why a few coordinates suffice.

bounds, contours and spectrum train a selection model on --data for --pretrain-epochs (as
`replay-lcmat select` does; the same settings and seed give the same θ) and take its outputs
with --stats. Subsets come from selection JSONs (--selection) and/or are selected here from the
same outputs (--methods with --fraction or --per-class).

examples:
  replay-lcmat select --data digits --method lcmat-s --per-class 10 --out lcmat.json
  replay-lcmat select --data digits --method uniform --per-class 10 --out uniform.json
  replay-lcmat inspect grid --selection lcmat.json uniform.json --out grid.png
  replay-lcmat inspect bounds --data digits --model mlp --methods uniform craig lcmat-s \\
      --fraction 0.05 --out bounds.png
  replay-lcmat inspect contours --data digits --model mlp --selection lcmat.json uniform.json \\
      --out contours.png
  replay-lcmat inspect spectrum --data digits --model mlp --classes 0 5 --out spectrum.png
"""


# ------------------------------------------------------------------------------ arguments
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_selection_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seeds θ, selections, directions")
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )


def _add_subset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("subsets S of the training split")
    group.add_argument(
        "--selection", nargs="+", default=[], metavar="JSON", help="files of `replay-lcmat select`"
    )
    group.add_argument(
        "--methods",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="select here, e.g. uniform craig 'lcmat-s[eps=0.05]' (needs a budget)",
    )
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--fraction", type=float, help="budget of --methods: share of each class")
    budget.add_argument("--per-class", type=int, help="budget of --methods: samples per class")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="pictures: memory grids, LCMat bound terms, loss contours, curvature spectrum",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="picture", metavar="PICTURE")

    grid = modes.add_parser(
        "grid",
        help="per-class image grids of several memories side by side (Fig. 7)",
        description="Per-class image grids of selections, synthetic sets and memories, one panel "
        "per method, written as a PNG. Selection JSONs bring their own data; synthetic sets and "
        "memories need --data for the mean/std and class names.",
    )
    grid.add_argument("--selection", nargs="+", default=[], metavar="JSON")
    grid.add_argument("--condensed", nargs="+", default=[], metavar="FILE", help="condense --out")
    grid.add_argument("--memory", nargs="+", default=[], metavar="FILE", help="ClassMemory.save")
    grid.add_argument("--names", nargs="+", default=None, help="panel titles, in source order")
    add_data_arguments(grid, required=False)  # the dataset of the images, when not in a JSON
    grid.add_argument("--max-per-class", type=int, default=10, help="images shown per class")
    grid.add_argument("--columns", type=int, default=None, help="images per row of a class")
    grid.add_argument("--classes", type=int, nargs="+", default=None, help="labels to show")
    grid.add_argument("--out", required=True, help="PNG file")

    bounds = modes.add_parser(
        "bounds",
        help="gradient and curvature gap of each subset (Fig. 2), bar plot + table",
        description="LCMat bound terms of every subset under θ: a bar plot (--out) and a "
        "markdown table and CSV beside it (same stem).",
    )
    _add_model_arguments(bounds)
    _add_subset_arguments(bounds)
    bounds.add_argument("--rho", type=float, default=0.5, help="ρ of the bound")
    bounds.add_argument("--k-dims", type=int, default=100, help="K top-variance coordinates")
    bounds.add_argument(
        "--by-class", action="store_true", help="also T_c vs S_c per class (table and CSV)"
    )
    bounds.add_argument(
        "--weighted",
        action="store_true",
        help="weighted means over S with the selections' weights where they have any (Craig's "
        "γ, AdaCore, GradMatch, weighted LCMat-S); default: unweighted, as S is trained on",
    )
    bounds.add_argument(
        "--curvature",
        choices=("topk", "all", "max"),
        default="topk",
        help="curvature term of the plot",
    )
    bounds.add_argument("--out", required=True, help="PNG file (.md and .csv beside it)")

    contours = modes.add_parser(
        "contours",
        help="loss contours of T and each subset around θ (Fig. 1b)",
        description="Loss of T and of each subset on a grid of two filter-normalised random "
        "directions around θ, as contour lines (one panel per subset).",
    )
    _add_model_arguments(contours)
    _add_subset_arguments(contours)
    contours.add_argument("--steps", type=int, default=9, help="grid points per axis (odd)")
    contours.add_argument("--span", type=float, default=1.0, help="largest step per direction")
    contours.add_argument(
        "--samples", type=int, default=1000, help="evaluation samples per set (random subset)"
    )
    contours.add_argument("--out", required=True, help="PNG file")

    spectrum = modes.add_parser(
        "spectrum",
        help="sorted diagonal-Hessian variances of a class with the K cut (Fig. 6)",
        description="Sorted per-coordinate variances of the last-layer diagonal Hessian over the "
        "samples of each class in --classes, log scale, K marked.",
    )
    _add_model_arguments(spectrum)
    spectrum.add_argument("--classes", type=int, nargs="+", default=[0], help="class labels")
    spectrum.add_argument("--k-dims", type=int, default=100, help="K of LCMat-S")
    spectrum.add_argument("--out", required=True, help="PNG file")

    parser.set_defaults(func=run)


# ----------------------------------------------------------------------------- the modes
def run(args: argparse.Namespace) -> int:
    if args.picture is None:
        raise ValueError(
            f"choose a picture: {', '.join(PICTURES)} (see `replay-lcmat inspect --help`)."
        )
    check_output_path(args.out)
    modes = {
        "grid": run_grid,
        "bounds": run_bounds,
        "contours": run_contours,
        "spectrum": run_spectrum,
    }
    return modes[args.picture](args)


def _selection_model(args: argparse.Namespace, train=None):
    """``(train, model, outputs)``: θ trained on the training split (loaded from --data unless
    given) and its outputs."""
    train = load_train(args) if train is None else train
    model, outputs = selection_model_outputs(args, train, progress=args.progress)
    return train, model, outputs


def _check_subset_arguments(args: argparse.Namespace, required: bool) -> list:
    """Parse ``--methods`` before any training; returns ``[(spec, selector)]``."""
    if required and not (args.selection or args.methods):
        raise ValueError("no subsets; pass --selection JSON files and/or --methods with a budget.")
    if args.methods and args.fraction is None and args.per_class is None:
        raise ValueError("--methods needs a budget: add --fraction (e.g. 0.01) or --per-class.")
    check_budget_arguments(args.per_class, args.fraction)
    selectors = []
    for spec in args.methods:
        name, options = parse_policy(spec)
        if SELECTORS.entry(name).accepts("seed"):
            options.setdefault("seed", args.seed)
        selectors.append((spec, make_selector(name, **options)))
    for path in args.selection:
        check_kind(path, "selection")
    return selectors


def _subsets(
    args: argparse.Namespace, selectors: list, outputs
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """``({name: indices into the training split}, {name: their weights or None})`` from
    --selection files and --methods."""
    names, paths, indices, weights = [], [], [], []
    for path in args.selection:
        selection = load_selection(path)
        check_labels(selection, outputs.labels, "the training split of --data")
        names.append(selection.method)
        paths.append(path)
        indices.append(selection.indices)
        weights.append(None if selection.weights is None else selection.weights.float())
    for spec, selector in selectors:
        result = selector.select(
            features=outputs.features,
            logits=outputs.logits,
            labels=outputs.labels,
            fraction=args.fraction,
            per_class=args.per_class,
        )
        names.append(spec)
        paths.append(spec)
        indices.append(result.indices)
        weights.append(result.weights)
    names = unique_names(names, paths)
    return dict(zip(names, indices, strict=True)), dict(zip(names, weights, strict=True))


def run_bounds(args: argparse.Namespace) -> int:
    selectors = _check_subset_arguments(args, required=True)
    if args.k_dims < 1:
        raise ValueError(f"--k-dims must be >= 1; got {args.k_dims}.")
    _, _, outputs = _selection_model(args)
    subsets, weights = _subsets(args, selectors, outputs)
    if args.weighted:
        weights = {name: w for name, w in weights.items() if w is not None}
        unweighted = [name for name in subsets if name not in weights]
        if unweighted:
            print(f"--weighted: no weights for {', '.join(unweighted)}; unweighted means for them")
    rows = compare_subsets(
        outputs.features,
        outputs.logits,
        outputs.labels,
        subsets,
        rho=args.rho,
        k_dims=args.k_dims,
        per_class=args.by_class,
        weights=weights if args.weighted else None,
    )
    out = Path(args.out)
    table = bound_markdown(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    write_bound_csv(rows, out.with_suffix(".csv"))
    plot_bound_terms(rows, out, curvature=f"curvature_gap_{args.curvature}")
    print(table)
    print(f"written {out}, {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


def run_contours(args: argparse.Namespace) -> int:
    selectors = _check_subset_arguments(args, required=False)
    if args.steps < 3 or args.steps % 2 == 0:
        raise ValueError(f"--steps must be odd and >= 3 (θ at the centre); got {args.steps}.")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1; got {args.samples}.")
    train, model, outputs = _selection_model(args)
    subsets, _ = _subsets(args, selectors, outputs)
    x, y = train.normalized(), train.labels
    sets = {"T": (x, y), **{name: (x[idx], y[idx]) for name, idx in subsets.items()}}
    surface = loss_surface(
        model,
        sets,
        steps=args.steps,
        span=args.span,
        seed=args.seed,
        max_samples=args.samples,
        device=args.device,
    )
    out = plot_loss_contours(surface, args.out)
    centre = ", ".join(f"L({n}) = {surface.center(n):.4f}" for n in surface.losses)
    print(f"at θ: {centre}; contours written to {out}")
    return 0


def run_spectrum(args: argparse.Namespace) -> int:
    if args.k_dims < 1:
        raise ValueError(f"--k-dims must be >= 1; got {args.k_dims}.")
    train = load_train(args)
    missing = [c for c in args.classes if not 0 <= c < train.num_classes]
    if missing:
        raise ValueError(
            f"--classes {missing} are not labels of {args.data} (0..{train.num_classes - 1})."
        )
    _, _, outputs = _selection_model(args, train)
    spectra = {}
    for c in args.classes:
        values = curvature_spectrum(outputs.features, outputs.logits, outputs.labels, c)
        spectra[f"class {c} ({train.classes[c]})"] = values
    out = plot_curvature_spectrum(spectra, args.out, k_dims=args.k_dims)
    for name, values in spectra.items():
        print(
            f"{name}: {len(values)} coordinates, top {args.k_dims} hold "
            f"{100 * top_k_share(values, args.k_dims):.1f}% of the variance"
        )
    print(f"spectrum written to {out}")
    return 0
