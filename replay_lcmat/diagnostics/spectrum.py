"""Curvature spectrum (the paper's Fig. 6): the per-coordinate variances of the last-layer
diagonal Hessian over the samples of one class, sorted, with LCMat-S's K cut marked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from replay_lcmat.curvature import diag_hessian_variances


def curvature_spectrum(
    features: Tensor, logits: Tensor, labels: Tensor | None = None, label: int | None = None
) -> Tensor:
    """Variances over samples of the ``c(d+1)`` diagonal-Hessian coordinates, sorted descending.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``.
        labels, label: when given, only the samples with ``labels == label`` (one class, as
            LCMat-S ranks coordinates per class).

    Returns:
        float64 ``[c(d+1)]`` (population variances, :func:`replay_lcmat.curvature.diag_hessian_variances`).
    """
    if (labels is None) != (label is None):
        raise ValueError("pass both labels=... and label=... to restrict to one class, or neither.")
    if labels is not None:
        rows = torch.as_tensor(labels).cpu() == int(label)
        if not bool(rows.any()):
            present = sorted(torch.unique(torch.as_tensor(labels)).tolist())
            raise ValueError(f"no sample has label {label}; labels present: {present}.")
        features, logits = features[rows], logits[rows]
    return torch.sort(diag_hessian_variances(features, logits), descending=True).values


def top_k_share(spectrum: Tensor, k: int) -> float:
    """Share of the total variance held by the ``k`` largest coordinates (0 for a flat zero)."""
    total = float(spectrum.sum())
    return float(spectrum[:k].sum()) / total if total > 0 else 0.0


def plot_curvature_spectrum(
    spectra: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    k_dims: int = 100,
    title: str = "",
) -> Path:
    """Sorted variances (log scale) against their rank, one line per entry of ``spectra``
    (e.g. ``{"class 3": curvature_spectrum(...)}``), with a vertical line at rank ``k_dims``
    and the share of the variance above the cut in the legend. Coordinates of zero variance
    cannot be drawn on a log axis; their count is given. Returns the path."""
    from matplotlib.figure import Figure

    if not spectra:
        raise ValueError("no spectra to plot; pass {name: curvature_spectrum(...)}.")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in spectra.items():
        values = values.detach().cpu().double()
        ranks = torch.arange(1, len(values) + 1)
        positive = values > 0
        zeros = int((~positive).sum())
        label = f"{name}: top {k_dims} hold {100 * top_k_share(values, k_dims):.1f}%"
        if zeros:
            label += f", {zeros} zero"
        ax.plot(ranks[positive].numpy(), values[positive].numpy(), label=label)
    ax.axvline(k_dims, color="k", linestyle="--", linewidth=1)
    ax.text(k_dims, 1.0, f" K = {k_dims}", transform=ax.get_xaxis_transform(), va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("coordinate rank (last-layer bias and weights)")
    ax.set_ylabel("variance of diagonal Hessian over the class")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title or "Curvature spectrum (sorted per-coordinate variances)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
