"""Matching objectives of dataset condensation, as small functions of plain tensors.

- :func:`layerwise_distance`: the gradient-matching distance of Dataset Condensation (DC/DSA).
- :func:`gradient_variance_gap`: LCMat-C's curvature term ``½ ρ Σ_k |Var_T,k − Var_S,k|`` over
  per-sample last-layer gradients.
- :func:`mean_embedding_loss`: the distribution-matching (DM) loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from replay_lcmat.curvature import softmax_residuals


def layerwise_distance(real: Sequence[Tensor], synthetic: Sequence[Tensor]) -> Tensor:
    """Sum over weight tensors and their output channels of ``1 − cos(g_real, g_syn)``.

    Args:
        real: gradients of the real batch, one tensor per parameter (e.g. ``[out, in, k, k]``).
        synthetic: gradients of the synthetic batch, same shapes and order.

    Returns:
        Scalar tensor. 1-D tensors (biases, norm scales) are skipped, as in DC. Each
        ``[out, ...]`` tensor is compared row by row (one row per output channel). The distance
        is 0 for identical gradients; a zero row counts as cosine 0 (distance 1).
    """
    if len(real) != len(synthetic):
        raise ValueError(
            f"got {len(real)} real and {len(synthetic)} synthetic gradient tensors; pass the "
            "gradients of the same parameters, in the same order, for both."
        )
    total = synthetic[0].new_zeros(()) if synthetic else torch.zeros(())
    for g_real, g_syn in zip(real, synthetic, strict=True):
        if g_real.shape != g_syn.shape:
            raise ValueError(
                f"gradient shapes differ: {tuple(g_real.shape)} vs {tuple(g_syn.shape)}."
            )
        if g_real.dim() == 1:
            continue
        a, b = g_real.flatten(1), g_syn.flatten(1)
        dot = (a * b).sum(dim=1)
        norms = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
        total = total + (1 - dot / norms).sum()
    return total


def gradient_variance_gap(real_grads: Tensor, synthetic_grads: Tensor, rho: float) -> Tensor:
    """LCMat-C's curvature term ``½ ρ Σ_k |Var(G^T)_k − Var(G^S)_k|`` (paper Eq. 15).

    ``Var`` is the per-coordinate variance of the per-sample gradients of one class: unbiased
    (divide by ``n − 1``) for ``n >= 2`` samples, and for a single sample its population
    variance, 0 (one point has no spread; the unbiased estimate 0/0 is undefined).

    What Eq. 15 then means at one synthetic image per class (ipc 1): ``Var(G^S) = 0``, so the
    term is ``½ ρ Σ_k Var(G^T)_k``, the real class's gradient variance, a constant in the
    synthetic image: its gradient with respect to the image is exactly zero and LCMat-C at ipc 1
    takes the same steps as plain gradient matching (its loss is shifted by that constant).
    The curvature match needs at least two synthetic images per class to act.

    Args:
        real_grads: per-sample gradients of the real class batch, ``[n, D]``, ``n >= 1``.
        synthetic_grads: per-sample gradients of the synthetic class batch, ``[m, D]``, ``m >= 1``.
        rho: neighbourhood radius ρ (>= 0).

    Returns:
        Scalar.
    """
    for name, grads in (("real", real_grads), ("synthetic", synthetic_grads)):
        if grads.dim() != 2 or grads.shape[0] < 1:
            raise ValueError(
                f"{name} per-sample gradients must be [n >= 1, D]; got {tuple(grads.shape)}."
            )
    var_real, var_syn = (g.var(dim=0, unbiased=len(g) >= 2) for g in (real_grads, synthetic_grads))
    return 0.5 * rho * (var_real - var_syn).abs().sum()


def head_variance_gap(
    real: tuple[Tensor, Tensor],
    synthetic: tuple[Tensor, Tensor],
    label: int,
    rho: float,
) -> Tensor:
    """:func:`gradient_variance_gap` from (features ``[n, d]``, logits ``[n, c]``) of one class.

    Per-sample gradients are w.r.t. the last linear layer (closed form), so no per-sample
    backward pass is needed and the synthetic side stays differentiable. Their variances come
    from moments (:func:`head_grad_variances`), without the ``[n, c*(d+1)]`` gradient matrix.
    """
    for name, (features, logits) in (("real", real), ("synthetic", synthetic)):
        if features.dim() != 2 or logits.dim() != 2 or len(features) != len(logits):
            raise ValueError(
                f"{name} features must be [n, d] and logits [n, c] with the same n >= 1; got "
                f"{tuple(features.shape)} and {tuple(logits.shape)}."
            )
    var_real, var_syn = (head_grad_variances(h, z, label) for h, z in (real, synthetic))
    return (0.5 * rho * (var_real - var_syn).abs().sum()).to(synthetic[0].dtype)


def head_grad_variances(features: Tensor, logits: Tensor, label: int) -> Tensor:
    """Per-coordinate variance of the per-sample last-layer gradients of one class, float64.

    The gradient of sample ``i`` is ``[e_i, vec(e_i h_i^T)]`` with ``e = softmax(z) − onehot``
    (:func:`~replay_lcmat.curvature.last_layer_grads`, same coordinate order). For ``n >= 2`` the
    unbiased variance ``(Σ_i x_i² − n x̄²) / (n − 1)`` uses, for the weight coordinates
    ``x_i = e_ia h_ib``, ``Σ_i x_i² = ((e²)^T h²)_ab`` and ``n x̄ = (e^T h)_ab``: two ``[c, d]``
    products instead of an ``[n, c*(d+1)]`` matrix. The same function as the variance of
    :func:`last_layer_grads`' rows; moments are taken in float64 since their difference cancels.
    One sample: 0, its population variance (see :func:`gradient_variance_gap`).

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; label: the class of every sample.

    Returns:
        ``[c*(d+1)]`` float64, differentiable w.r.t. ``features`` and ``logits``.
    """
    n, c = logits.shape
    labels = torch.full((n,), label, dtype=torch.long, device=logits.device)
    e, h = softmax_residuals(logits.double(), labels), features.double()
    if n == 1:
        return e.new_zeros(c * (features.shape[1] + 1))
    bias_var = e.var(dim=0)
    weight_var = (e.square().T @ h.square() - (e.T @ h).square() / n) / (n - 1)
    return torch.cat([bias_var, weight_var.flatten()])


def mean_embedding_loss(real_embeddings: Tensor, synthetic_embeddings: Tensor) -> Tensor:
    """DM loss ``||mean(real) − mean(synthetic)||²`` over embeddings ``[n, d]`` and ``[m, d]``."""
    if real_embeddings.shape[1:] != synthetic_embeddings.shape[1:]:
        raise ValueError(
            f"embedding shapes differ: {tuple(real_embeddings.shape)} vs "
            f"{tuple(synthetic_embeddings.shape)}."
        )
    return (real_embeddings.mean(dim=0) - synthetic_embeddings.mean(dim=0)).square().sum()
