"""What a facility-location selection adds, per class: the greedy gains of its picks, and for
LCMat-S the weight of the curvature term in the dissimilarity and the overlap with its
gradient-only (``eps = 0``, Craig) picks.

LCMat-S's dissimilarity (paper Eq. 12) is ``d_ij = ||g_i - g_j||_2 + eps ||lambda_i - lambda_j||_1``
(last-layer gradients ``g``, the top-``K`` diagonal-Hessian coordinates ``lambda``). How much
the second term weighs depends on the scale of the features (``lambda`` grows with ``||h||²``,
``g`` with ``||h||``), so one ``eps`` may matter on one model and vanish on another:
:func:`curvature_share` measures it from sums, in ``O(n (c d + K log n))`` per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from replay_lcmat.curvature import (
    diag_hessian_columns,
    softmax_residuals,
    top_variance_coordinates,
)
from replay_lcmat.selection.base import ClassInputs, check_inputs
from replay_lcmat.selection.engine import SelectionResult
from replay_lcmat.selection.facility import FacilityLocationSelector
from replay_lcmat.selection.facility_selectors import LCMatS
from replay_lcmat.selection.streamed import StreamedSimilarity


@dataclass(frozen=True)
class CurvatureShare:
    """The two terms of LCMat-S's ``d`` over the ordered pairs ``i != j`` of one class.

    Attributes:
        gradient_rms: ``sqrt(mean ||g_i - g_j||_2²)``, the root mean square gradient distance
            (exact, from ``sum ||g_i||²`` and ``||sum g_i||²``).
        curvature_mean: ``eps * mean ||lambda_i - lambda_j||_1`` (exact, from sorted columns).
        share: ``curvature_mean / (gradient_rms + curvature_mean)``. As the root mean square is
            at least the mean, this is a LOWER BOUND of the curvature term's share of the mean
            ``d`` (equal when every gradient distance is the same); 0 for ``eps = 0``.
    """

    gradient_rms: float
    curvature_mean: float
    share: float


def curvature_share(
    features: Tensor, logits: Tensor, labels: Tensor, *, eps: float, k_dims: int
) -> CurvatureShare:
    """The weight of ``eps ||lambda_i - lambda_j||_1`` in LCMat-S's ``d`` for one class.

    Args:
        features: ``[n, d]``, logits ``[n, c]``, labels int64 ``[n]`` of one class, ``n >= 2``.
        eps, k_dims: LCMat-S's options (the same top-``k_dims`` coordinates as its ``d``).
    """
    n = len(labels)
    if n < 2:
        raise ValueError(f"a class needs at least 2 samples to have pairs; got {n}.")
    h, z = features.double(), logits.double()
    e = softmax_residuals(z, labels)
    # g_i = e_i ⊗ [h_i, 1]: ||g_i||² = ||e_i||² (||h_i||² + 1), sum_i g_i = E^T [H, 1]
    sq = (e * e).sum(1) * ((h * h).sum(1) + 1.0)
    total = e.T @ torch.cat([h, h.new_ones(n, 1)], dim=1)
    pairs = n * (n - 1)
    # sum over i != j of ||g_i - g_j||² = 2 n sum ||g_i||² - 2 ||sum g_i||²
    gradient_rms = float(
        ((2 * n * sq.sum() - 2 * (total * total).sum()) / pairs).clamp_min(0).sqrt()
    )
    curvature = 0.0
    if eps != 0:
        coords = top_variance_coordinates(features, logits, k_dims)
        lam = diag_hessian_columns(features, logits, coords).double().sort(dim=0).values
        # sorted x_1..x_n: sum_{a<b} (x_b - x_a) = sum_r x_r (2r - n - 1), r = 1..n
        rank = torch.arange(1, n + 1, dtype=torch.float64, device=lam.device)
        l1_sum = 2 * float((lam * (2 * rank - n - 1)[:, None]).sum())  # ordered pairs
        curvature = eps * l1_sum / pairs
    denominator = gradient_rms + curvature
    return CurvatureShare(gradient_rms, curvature, curvature / denominator if denominator else 0.0)


def facility_gains(
    selector: FacilityLocationSelector, inputs: ClassInputs, picks: Tensor
) -> Tensor:
    """Marginal gains ``F(S_k) - F(S_{k-1})`` of each pick of one class, in pick order.

    ``F(S) = sum_i max(0, max_{j in S} s_ij)`` with ``s = C - d`` of ``selector`` over the whole
    class (:mod:`replay_lcmat.selection.facility`); for the exact greedy these are the gains it
    saw. Costs the rows of the picks, plus one pass over every row for ``offset="max"``.

    Args:
        inputs: the class; picks: int64 ``[m]`` positions in the class, in pick order.

    Returns:
        float64 ``[m]``, non-increasing for a greedy order.
    """
    source = StreamedSimilarity(
        selector.distances(inputs), selector.offset, owner=(selector.name, inputs.label)
    )
    rows = source.rows(picks).double()
    cover = rows.new_zeros(rows.shape[1])
    gains = []
    for row in rows:
        gains.append(float((row - cover).clamp_min(0).sum()))
        cover = torch.maximum(cover, row)
    return torch.tensor(gains, dtype=torch.float64)


def selection_report(
    selector,
    result: SelectionResult,
    *,
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    compare_eps0: bool = True,
) -> tuple[Tensor | None, dict[int, dict[str, float]]]:
    """``(gains, per-class report)`` of a selection made by ``selector`` on these inputs.

    ``gains``: float64 ``[m]`` aligned with ``result.indices`` (:func:`facility_gains`) for the
    facility-location selectors (LCMat-S with ``objective="facility"``, Craig, AdaCore), else
    None. The report, for LCMat-S with ``objective="facility"`` only: per class
    ``{"gradient_rms", "curvature_mean", "curvature_share"}`` (:func:`curvature_share`) and,
    with ``compare_eps0``, ``"eps0_overlap"``: the share of the class's picks that LCMat-S with
    ``eps=0`` (same options, same budget) also picks (1.0: the curvature term changed nothing).
    The ``eps=0`` selection costs as much as the first one.
    """
    facility = isinstance(selector, FacilityLocationSelector) and (
        getattr(selector, "objective", "facility") == "facility"
    )
    if not facility:
        return None, {}
    features, logits, labels = check_inputs(features, logits, labels, selector.needs)
    picked = labels[result.indices.to(labels.device)].cpu()
    gains = torch.empty(len(result.indices), dtype=torch.float64)
    report: dict[int, dict[str, float]] = {}
    lcmat = isinstance(selector, LCMatS)
    eps0 = None
    if lcmat and compare_eps0 and selector.eps != 0:
        counts = {int(c): int((picked == c).sum()) for c in picked.unique()}
        eps0 = LCMatS(**{**selector.get_params(), "eps": 0.0}).select(
            features=features, logits=logits, labels=labels, per_class=counts
        )
    for label in picked.unique().tolist():
        members = torch.nonzero(labels == label).flatten().cpu()
        mine = torch.nonzero(picked == label).flatten()
        part = members.to(labels.device)
        inputs = ClassInputs(label, features[part], logits[part], labels[part])
        local = torch.searchsorted(members, result.indices[mine])
        gains[mine] = facility_gains(selector, inputs, local)
        if not lcmat:
            continue
        entry: dict[str, float] = {}
        if len(members) >= 2:
            share = curvature_share(
                inputs.features,
                inputs.logits,
                inputs.labels,
                eps=selector.eps,
                k_dims=selector.k_dims,
            )
            entry = {
                "gradient_rms": share.gradient_rms,
                "curvature_mean": share.curvature_mean,
                "curvature_share": share.share,
            }
        if eps0 is not None:
            other = eps0.indices[labels[eps0.indices.to(labels.device)].cpu() == label]
            same = len(set(other.tolist()) & set(result.indices[mine].tolist()))
            entry["eps0_overlap"] = same / len(mine)
        elif lcmat and compare_eps0:
            entry["eps0_overlap"] = 1.0  # eps = 0 already: the gradient-only picks themselves
        report[int(label)] = entry
    return gains, report
