"""Greedy mean matching: the subset whose UNWEIGHTED means match the class's (Sec. 3, Eq. 7).

Facility location (:mod:`replay_lcmat.selection.facility`) minimises a per-sample upper bound of
the gradient and curvature gaps between a class T and its subset S; the bound is tight only when
each pick is replayed with the weight of the samples it covers. The two greedy objectives here
minimise the gaps of the unweighted subset directly, one pick at a time, as herding does for the
features. With ``g_i = [e_i, vec(e_i h_i^T)]`` the last-layer gradient of sample ``i``
(``e = softmax(z) - onehot(y)``, size ``c (d + 1)``) and ``lambda_i`` its diagonal Hessian on the
``K`` coordinates of largest variance over the class (:mod:`replay_lcmat.curvature`):

``bound`` (Eq. 7, the quantity LCMat bounds)::

    || mean_T g - mean_S g ||_2  +  eps * gap(mean_T lambda, mean_S lambda)

with ``gap`` the max (Eq. 7) or the L1 norm of the coordinate differences; ``eps`` is ½ρ.

``joint`` (herding plus LCMat's first- and second-order terms)::

    ||Δ mean h||^2  +  w ||Δ mean g||^2 * (s_h / s_g)^2  +  c ||Δ mean lambda||^2 * (s_h / s_l)^2

where ``s_x`` is the RMS norm of block ``x`` over the class, so every block counts at unit
scale; ``w = c = 0`` is herding exactly (:func:`~replay_lcmat.selection.geometry.herding_order`).

Nothing of size ``n x c (d + 1)`` is built: the class mean gradient is the ``[c, d + 1]`` matrix
``E^T [H, 1] / n`` and ``<G, g_j> = e_j^T G [h_j, 1]``, so a greedy step costs ``O(n (c + d + K))``
like a step of herding. Memory: the inputs plus ``O(n (c + K))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from replay_lcmat.curvature import (
    diag_hessian_columns,
    softmax_residuals,
    top_variance_coordinates,
)

GAPS = ("max", "l1")


class _GradientMeans:
    """Incremental gap ``|| mean_T g - (sum_S g + g_j) / t ||^2`` for every candidate ``j``.

    Holds (float64) ``E [n, c]``, ``A = H1 G_T^T [n, c]`` and ``B = H1 S^T [n, c]`` where ``H1 =
    [H, 1]``, ``G_T`` is the class mean gradient and ``S`` the sum of the picks' gradients, both
    ``[c, d + 1]``; adding a pick updates ``B`` with one rank-one product.
    """

    def __init__(self, features: Tensor, logits: Tensor, labels: Tensor) -> None:
        h = features.double()
        self.h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # [n, d + 1]
        self.e = softmax_residuals(logits.double(), labels)  # [n, c]
        n = len(h)
        self.target = self.e.T @ self.h1 / n  # [c, d + 1]
        self.picked = torch.zeros_like(self.target)
        self.a = self.h1 @ self.target.T  # [n, c]
        self.b = torch.zeros_like(self.a)
        self.sq_norms = self.e.square().sum(1) * self.h1.square().sum(1)  # ||g_j||^2

    def gaps(self, t: int) -> Tensor:
        """``[n]`` squared gradient gaps if each sample were the ``t``-th pick (1-based)."""
        residual = self.target - self.picked / t
        # <residual, g_j> = e_j^T residual [h_j, 1] = e_j . (A - B / t)_j
        inner = (self.e * (self.a - self.b / t)).sum(1)
        gaps = residual.square().sum() - 2 * inner / t + self.sq_norms / t**2
        return gaps.clamp_(min=0.0)

    def add(self, j: int) -> None:
        self.picked += torch.outer(self.e[j], self.h1[j])
        self.b += torch.outer(self.h1 @ self.h1[j], self.e[j])

    @property
    def mean_sq_norm(self) -> float:
        return float(self.sq_norms.mean())


def _curvature_columns(features: Tensor, logits: Tensor, k_dims: int) -> Tensor:
    """``[n, K]`` float64 diagonal Hessians on the ``k_dims`` coordinates of largest variance."""
    coords = top_variance_coordinates(features, logits, k_dims)
    return diag_hessian_columns(features.double(), logits.double(), coords)


def _greedy(score, n: int, budget: int, add) -> Tensor:
    """Pick ``budget`` of ``n`` samples: step ``t`` takes the unpicked argmin of ``score(t)``
    (ties: lowest index), then calls ``add(j)``."""
    available = torch.ones(n, dtype=torch.bool)
    picks = []
    for t in range(1, budget + 1):
        values = score(t).cpu()
        values[~available] = torch.inf
        j = int(torch.argmin(values))
        picks.append(j)
        available[j] = False
        add(j)
    return torch.tensor(picks, dtype=torch.long)


def bound_order(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    budget: int,
    *,
    eps: float,
    k_dims: int = 100,
    gap: str = "max",
) -> Tensor:
    """Greedy minimisation of the LCMat bound (Eq. 7) for one class.

    Step ``t`` adds the sample ``j`` that minimises ``||mean_T g - mean_{S+j} g||_2 + eps *
    gap(mean_T lambda - mean_{S+j} lambda)`` (``gap``: ``"max"`` as Eq. 7, or ``"l1"``).

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; labels: int64 ``[n]`` (one class).
        budget: picks, at most ``n``.
        eps: weight of the curvature gap (½ρ); 0 matches the mean gradient only.
        k_dims: diagonal-Hessian coordinates of largest variance over the class.

    Returns:
        int64 ``[budget]`` local indices in greedy order.
    """
    if gap not in GAPS:
        raise ValueError(f"unknown gap {gap!r}; choose one of {GAPS}.")
    grads = _GradientMeans(features, logits, labels)
    n = len(labels)
    if eps == 0:
        return _greedy(grads.gaps, n, budget, grads.add)
    lam = _curvature_columns(features, logits, k_dims)
    target = lam.mean(0)
    picked = torch.zeros_like(target)

    def score(t: int) -> Tensor:
        diff = (target - (picked + lam) / t).abs()
        curvature = diff.amax(1) if gap == "max" else diff.sum(1)
        return grads.gaps(t).sqrt() + eps * curvature

    def add(j: int) -> None:
        grads.add(j)
        picked.add_(lam[j])

    return _greedy(score, n, budget, add)


def joint_order(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    budget: int,
    *,
    gradient_weight: float,
    curvature_weight: float,
    k_dims: int = 100,
) -> Tensor:
    """Greedy mean matching of features, last-layer gradients and curvature for one class.

    Minimises ``||Δh||^2 + w ||Δg||^2 (s_h/s_g)^2 + c ||Δlambda||^2 (s_h/s_l)^2`` over the
    means of the picks (module docstring); ``w = c = 0`` gives herding's picks exactly.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; labels: int64 ``[n]`` (one class).
        budget: picks, at most ``n``.
        gradient_weight, curvature_weight: ``w`` and ``c``, both >= 0.
        k_dims: diagonal-Hessian coordinates of largest variance over the class.

    Returns:
        int64 ``[budget]`` local indices in greedy order.
    """
    n = len(labels)
    target_h = features.mean(0)
    picked_h = torch.zeros_like(target_h)
    scale_h = float(features.double().square().sum(1).mean())  # s_h^2
    grads = _GradientMeans(features, logits, labels) if gradient_weight > 0 else None
    lam = _curvature_columns(features, logits, k_dims) if curvature_weight > 0 else None
    w = c = 0.0
    if grads is not None and grads.mean_sq_norm > 0:
        w = gradient_weight * scale_h / grads.mean_sq_norm
    if lam is not None:
        scale_l = float(lam.square().sum(1).mean())
        c = curvature_weight * scale_h / scale_l if scale_l > 0 else 0.0
        target_l = lam.mean(0)
        picked_l = torch.zeros_like(target_l)

    def score(t: int) -> Tensor:
        # the feature term written as herding writes it, so that w = c = 0 is herding
        value = ((picked_h + features) / t - target_h).square().sum(1)
        if w or c:
            value = value.double()
        if w:
            value = value + w * grads.gaps(t)
        if c:
            value = value + c * (target_l - (picked_l + lam) / t).square().sum(1)
        return value

    def add(j: int) -> None:
        picked_h.add_(features[j])
        if grads is not None:
            grads.add(j)
        if lam is not None:
            picked_l.add_(lam[j])

    return _greedy(score, n, budget, add)
