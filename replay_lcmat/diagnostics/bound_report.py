"""Bound terms of several methods' subsets: table rows, markdown, CSV and the bar plot of the
paper's Fig. 2 (gradient gap and curvature gap per method)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from replay_lcmat.diagnostics.bounds import TERMS, bound_terms

FIELDS = (
    "method",
    "class",
    "n_full",
    "n_subset",
    "weighted",
    "rho",
    "k_dims",
    *TERMS,
    "bound_topk",
)


def _row(
    method: str, label: str | int, terms: Mapping, rho: float, k_dims: int, weighted: bool
) -> dict:
    row = {"method": method, "class": label, "weighted": weighted, "rho": rho, "k_dims": k_dims}
    row.update({k: terms[k] for k in ("n_full", "n_subset", *TERMS)})
    row["bound_topk"] = terms["gradient_gap"] + terms["curvature_gap_topk"]
    return row


def compare_subsets(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    subsets: Mapping[str, Tensor | Sequence[int]],
    *,
    rho: float = 0.5,
    k_dims: int = 100,
    per_class: bool = False,
    weights: Mapping[str, Tensor | Sequence[float] | None] | None = None,
) -> list[dict]:
    """:func:`bound_terms` of every subset, as table rows.

    Args:
        features, logits, labels: the outputs of θ on T (``[n, d]``, ``[n, c]``, ``[n]``).
        subsets: ``{method: indices into the rows}``, in the order of the table.
        rho, k_dims, per_class: as in :func:`bound_terms`.
        weights: ``{method: weights aligned with its indices, or None}`` for weighted S means
            (methods missing from it are unweighted).

    Returns:
        One dict per method with the keys of :data:`FIELDS` (``class = "all"``;
        ``bound_topk = gradient_gap + curvature_gap_topk``); with ``per_class`` also one row per
        method and class (``class`` = the label), after that method's overall row.
    """
    if not subsets:
        raise ValueError("no subsets to compare; pass {method: indices}.")
    weights = weights or {}
    unknown = set(weights) - set(subsets)
    if unknown:
        raise ValueError(f"weights for {sorted(unknown)} but no such subsets; use the same keys.")
    rows = []
    for method, subset in subsets.items():
        w = weights.get(method)
        terms = bound_terms(
            features,
            logits,
            labels,
            subset,
            rho=rho,
            k_dims=k_dims,
            per_class=per_class,
            weights=w,
        )
        rows.append(_row(method, "all", terms, rho, k_dims, w is not None))
        for label, class_terms in terms.get("per_class", {}).items():
            rows.append(_row(method, label, class_terms, rho, k_dims, w is not None))
    return rows


def _overall(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r["class"] == "all"]


def bound_markdown(rows: Sequence[dict]) -> str:
    """A markdown table of the overall rows (one line per method); when per-class rows are
    present, a second table with their mean over classes."""
    overall = _overall(rows)
    if not overall:
        raise ValueError("no overall rows (class 'all'); build the rows with compare_subsets.")
    head = overall[0]
    lines = [
        f"LCMat bound terms at θ (last layer; ρ = {head['rho']:g}, K = {head['k_dims']}, "
        f"|T| = {head['n_full']}): gradient gap ||∇L(T) − ∇L(S)||₂, curvature gap "
        "½ρ·||λ_T − λ_S||₁ over the top-K-variance diagonal-Hessian coordinates / over all, "
        "½ρ·max|λ_T − λ_S| (Eq. 7), loss gap |L(T) − L(S)| (nats). Means over S are "
        "unweighted unless the row says weighted (the selection's weights).",
        "",
        "| method | \\|S\\| | S weighted | gradient gap | curvature gap top-K | curvature gap all | "
        "curvature gap max | loss gap | gradient + curvature top-K |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in overall:
        lines.append(
            f"| {r['method']} | {r['n_subset']} | {'yes' if r['weighted'] else 'no'} | "
            f"{r['gradient_gap']:.4g} | "
            f"{r['curvature_gap_topk']:.4g} | {r['curvature_gap_all']:.4g} | "
            f"{r['curvature_gap_max']:.4g} | {r['loss_gap']:.4g} | {r['bound_topk']:.4g} |"
        )
    per_class = [r for r in rows if r["class"] != "all"]
    if per_class:
        lines += [
            "",
            "Per class (T_c vs S_c, top-K coordinates of T_c), mean over classes:",
            "",
            "| method | classes | gradient gap | curvature gap top-K | curvature gap all | "
            "loss gap |",
            "|---|---|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in per_class):
            mine = [r for r in per_class if r["method"] == method]

            def mean(key: str, mine=mine) -> float:
                return sum(r[key] for r in mine) / len(mine)

            lines.append(
                f"| {method} | {len(mine)} | {mean('gradient_gap'):.4g} | "
                f"{mean('curvature_gap_topk'):.4g} | {mean('curvature_gap_all'):.4g} | "
                f"{mean('loss_gap'):.4g} |"
            )
    return "\n".join(lines) + "\n"


def write_bound_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Every row (overall and per class) as CSV with the columns of :data:`FIELDS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_bound_terms(
    rows: Sequence[dict],
    path: str | os.PathLike,
    *,
    curvature: str = "curvature_gap_topk",
    title: str = "",
) -> Path:
    """Two bar panels per method (the paper's Fig. 2): the gradient gap and the curvature gap
    (``curvature``: ``"curvature_gap_topk"``, ``"curvature_gap_all"`` or
    ``"curvature_gap_max"``). Uses the overall rows. Returns the path."""
    from matplotlib.figure import Figure

    if curvature not in TERMS or not curvature.startswith("curvature"):
        raise ValueError(
            f"unknown curvature term {curvature!r}; choose curvature_gap_topk, "
            "curvature_gap_all or curvature_gap_max."
        )
    overall = _overall(rows)
    if not overall:
        raise ValueError("no overall rows (class 'all'); build the rows with compare_subsets.")
    methods = [r["method"] + (" (weighted)" if r["weighted"] else "") for r in overall]
    head = overall[0]
    labels = {
        "gradient_gap": "gradient gap ||∇L(T) − ∇L(S)||₂",
        "curvature_gap_topk": f"curvature gap ½ρ·||Δλ||₁, top {head['k_dims']} coords",
        "curvature_gap_all": "curvature gap ½ρ·||Δλ||₁, all coords",
        "curvature_gap_max": "curvature gap ½ρ·max|Δλ| (Eq. 7)",
    }
    fig = Figure(figsize=(max(6.0, 1.1 * len(methods) * 2 + 2), 3.8))
    colours = [f"C{i % 10}" for i in range(len(methods))]
    for i, key in enumerate(("gradient_gap", curvature)):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.bar(range(len(methods)), [r[key] for r in overall], color=colours)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(labels[key], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"LCMat bound terms (ρ = {head['rho']:g}, |T| = {head['n_full']})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
