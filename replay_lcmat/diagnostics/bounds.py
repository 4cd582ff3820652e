"""The terms of the LCMat bound (spec Eq. 6/7) for a subset S of T under a model θ (the paper's
Fig. 2), on the last layer in closed form.

For softmax cross-entropy with ``e = softmax(z) - onehot(y)``, ``q = p (1 - p)`` and features
``h`` (LCMat paper Sec. 3), the mean per-sample gradient and diagonal Hessian of a set D w.r.t.
``(b, W)`` are ``[mean e, mean e h^T]`` and ``[mean q, mean q (h*h)^T]``: two ``[c, d]``
products, never the ``[n, c(d+1)]`` per-sample matrices. Coordinates are ordered as in
:mod:`replay_lcmat.curvature` (bias first, then ``W`` row-major).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from replay_lcmat.curvature import (
    _check_head_inputs,
    softmax_residuals,
    top_variance_coordinates,
)

TERMS = (
    "gradient_gap",
    "curvature_gap_topk",
    "curvature_gap_all",
    "curvature_gap_max",
    "loss_gap",
)


def mean_last_layer_terms(
    features: Tensor, logits: Tensor, labels: Tensor, weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean gradient, mean diagonal Hessian and mean loss of cross-entropy over a set.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; labels: int64 ``[n]``; ``n >= 1``.
        weights: optional non-negative ``[n]`` with a positive sum; then the means are
            ``sum_i w_i x_i / sum_i w_i``.

    Returns:
        ``(mean_grad [c(d+1)], mean_diag_hessian [c(d+1)], mean_loss [])``, float64 (computed in
        float64); the loss is in nats.
    """
    h, z = features.double(), logits.double()
    if weights is None:
        w = torch.full((h.shape[0],), 1.0 / h.shape[0], dtype=torch.float64)
    else:
        w = weights.double() / weights.double().sum()
    e = softmax_residuals(z, labels) * w.unsqueeze(1)
    p = torch.softmax(z, dim=1)
    q = p * (1 - p) * w.unsqueeze(1)
    grad = torch.cat([e.sum(0), (e.T @ h).flatten()])
    hess = torch.cat([q.sum(0), (q.T @ h.square()).flatten()])
    losses = torch.logsumexp(z, dim=1) - z.gather(1, labels.view(-1, 1)).squeeze(1)
    return grad, hess, w @ losses


def _gaps(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    rows: Tensor,
    weights: Tensor | None,
    *,
    rho: float,
    k_dims: int,
) -> dict[str, float]:
    grad_t, hess_t, loss_t = mean_last_layer_terms(features, logits, labels)
    grad_s, hess_s, loss_s = mean_last_layer_terms(
        features[rows], logits[rows], labels[rows], weights
    )
    coords = top_variance_coordinates(features.double(), logits.double(), k_dims)
    hess_gap = (hess_t - hess_s).abs_()
    half_rho = 0.5 * float(rho)
    return {
        "gradient_gap": float(torch.linalg.vector_norm(grad_t - grad_s)),
        "curvature_gap_topk": half_rho * float(hess_gap[coords].sum()),
        "curvature_gap_all": half_rho * float(hess_gap.sum()),
        "curvature_gap_max": half_rho * float(hess_gap.max()),
        "loss_gap": float((loss_t - loss_s).abs()),
        "n_full": int(len(labels)),
        "n_subset": int(len(rows)),
    }


def _subset_rows(subset: Tensor | Sequence[int], n: int) -> Tensor:
    rows = torch.as_tensor(subset)
    if rows.dtype == torch.bool:
        if rows.shape != (n,):
            raise ValueError(
                f"a boolean subset mask needs one entry per sample ({n}); got shape "
                f"{tuple(rows.shape)}."
            )
        rows = torch.nonzero(rows).flatten()
    if rows.dim() != 1 or rows.is_floating_point():
        raise ValueError(
            f"subset must be 1-D integer indices into the samples; got shape "
            f"{tuple(rows.shape)} and dtype {rows.dtype}."
        )
    rows = rows.long().cpu()
    if len(rows) == 0:
        raise ValueError("the subset is empty; pass at least one index (e.g. result.indices).")
    if int(rows.min()) < 0 or int(rows.max()) >= n:
        raise ValueError(
            f"subset indices range from {int(rows.min())} to {int(rows.max())} but there are {n} "
            "samples; index the same features/logits/labels the subset was selected from."
        )
    return rows


def _subset_weights(weights: Tensor | Sequence[float] | None, m: int) -> Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64).cpu()
    if w.shape != (m,):
        raise ValueError(
            f"weights must have one value per subset element ({m}); got shape "
            f"{tuple(w.shape)}. Pass the weights aligned with the indices (result.weights)."
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be finite, >= 0 and not all zero.")
    return w


def bound_terms(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    subset: Tensor | Sequence[int],
    *,
    rho: float = 0.5,
    k_dims: int = 100,
    per_class: bool = False,
    weights: Tensor | Sequence[float] | None = None,
) -> dict:
    """Gradient, curvature and loss gaps between T (all rows) and S (the rows ``subset``).

    With ``g``/``λ`` the per-sample last-layer gradient / diagonal Hessian (LCMat paper Sec. 3) and
    ``Δλ = mean_T λ - mean_S λ``:

    - ``gradient_gap``: ``||mean_T g - mean_S g||_2``, the first term of Eq. 6.
    - ``curvature_gap_topk``: ``½ρ ||Δλ_K||_1`` over the ``k_dims`` coordinates whose λ varies
      most over T (:func:`replay_lcmat.curvature.top_variance_coordinates`, the K of LCMat-S).
    - ``curvature_gap_all``: ``½ρ ||Δλ||_1`` over all ``c(d+1)`` coordinates.
    - ``curvature_gap_max``: ``½ρ max_k |Δλ_k|``, the curvature term of Eq. 7.
    - ``loss_gap``: ``|L(T) - L(S)|``, mean cross-entropy in nats (``L_abs`` at θ).

    Means over S are unweighted unless ``weights`` are given (e.g. Craig's γ, which make the
    weighted S stand for T). Computed in float64.

    Args:
        features: penultimate features ``[n, d]``; logits ``[n, c]``; labels int64 ``[n]``
            (e.g. :func:`replay_lcmat.selection.extract_outputs`).
        subset: int64 indices ``[m]`` into the rows (a repeated index counts twice) or a bool
            mask ``[n]``.
        rho: the ρ of the bound (the curvature terms scale with ½ρ).
        k_dims: K, the number of top-variance coordinates.
        per_class: also compare every class of T with the same class of S (T_c vs S_c, top-K
            coordinates of T_c): key ``"per_class"``, ``{label: {term: value}}``. Needs every
            class of T in S.
        weights: optional non-negative ``[m]`` aligned with ``subset`` (with a mask: with its
            ``True`` rows in ascending order); S's means become weighted means.

    Returns:
        ``{term: float}`` for the terms above, plus ``n_full``, ``n_subset``, ``rho``,
        ``k_dims``, ``weighted`` (and ``per_class`` when asked).
    """
    _check_head_inputs(features, logits)
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must be int64 [n] with n = {features.shape[0]} (the rows of features); got "
            f"shape {tuple(labels.shape)}."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}) (one logit per class); found "
            f"{int(labels.min())}..{int(labels.max())}."
        )
    if not float(rho) >= 0:
        raise ValueError(f"rho must be >= 0 (the radius of the bound); got {rho!r}.")
    if isinstance(k_dims, bool) or not isinstance(k_dims, int) or k_dims < 1:
        raise ValueError(f"k_dims must be an integer >= 1; got {k_dims!r}.")
    features, logits = features.detach().cpu(), logits.detach().cpu()
    rows = _subset_rows(subset, len(labels))
    w = _subset_weights(weights, len(rows))
    result = _gaps(features, logits, labels, rows, w, rho=rho, k_dims=k_dims)
    result.update(rho=float(rho), k_dims=int(k_dims), weighted=w is not None)
    if per_class:
        result["per_class"] = {}
        chosen = labels[rows]
        for c in torch.unique(labels).tolist():
            members = torch.nonzero(labels == c).flatten()
            picked = rows[chosen == c]
            class_w = None if w is None else w[chosen == c]
            if len(picked) == 0 or (class_w is not None and float(class_w.sum()) <= 0):
                raise ValueError(
                    f"class {c} has no (positively weighted) sample in the subset, so T_c vs "
                    "S_c is undefined; use per_class=False (no --by-class) or a "
                    "class-balanced subset."
                )
            # positions of the picked rows inside the class (rows are indices into all of T)
            position = torch.full((len(labels),), -1, dtype=torch.int64)
            position[members] = torch.arange(len(members))
            result["per_class"][int(c)] = _gaps(
                features[members],
                logits[members],
                labels[members],
                position[picked],
                class_w,
                rho=rho,
                k_dims=k_dims,
            )
    return result
