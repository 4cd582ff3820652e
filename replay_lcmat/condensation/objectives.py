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

from replay_lcmat.curvature import last_layer_grads


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
    backward pass is needed and the synthetic side stays differentiable.
    """
    grads = []
    for features, logits in (real, synthetic):
        labels = torch.full((features.shape[0],), label, dtype=torch.long, device=features.device)
        grads.append(last_layer_grads(features, logits, labels))
    return gradient_variance_gap(grads[0], grads[1], rho)


def mean_embedding_loss(real_embeddings: Tensor, synthetic_embeddings: Tensor) -> Tensor:
    """DM loss ``||mean(real) − mean(synthetic)||²`` over embeddings ``[n, d]`` and ``[m, d]``."""
    if real_embeddings.shape[1:] != synthetic_embeddings.shape[1:]:
        raise ValueError(
            f"embedding shapes differ: {tuple(real_embeddings.shape)} vs "
            f"{tuple(synthetic_embeddings.shape)}."
        )
    return (real_embeddings.mean(dim=0) - synthetic_embeddings.mean(dim=0)).square().sum()
