"""Per-sample curvature of softmax cross-entropy w.r.t. the last linear layer.

Parameters of the head ``z = W h + b`` are flattened as ``[b (c values), W row-major (c*d values)]``.
Values equal BackPACK's ``BatchGrad`` / ``BatchDiagHessian`` on ``nn.Linear`` with
``CrossEntropyLoss(reduction="sum")``, concatenated as ``[bias, weight.flatten()]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_head_inputs(features: Tensor, logits: Tensor) -> None:
    if features.dim() != 2 or logits.dim() != 2:
        raise ValueError(
            f"features must be [n, d] and logits [n, c]; got {tuple(features.shape)} and "
            f"{tuple(logits.shape)}. Flatten features with .flatten(1) first."
        )
    if features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"features and logits have different lengths ({features.shape[0]} vs "
            f"{logits.shape[0]}); pass one row per sample in both."
        )


def last_layer_grads(features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample gradient of cross-entropy w.r.t. (b, W) of the last linear layer.

    Args:
        features: penultimate features ``h``, shape ``[n, d]``.
        logits: ``z = W h + b``, shape ``[n, c]``.
        labels: int64 class indices, shape ``[n]``.

    Returns:
        ``[n, c*(d+1)]``: ``[e, vec(e h^T)]`` with ``e = softmax(z) - onehot(y)``.
        Differentiable w.r.t. ``features`` and ``logits``.
    """
    _check_head_inputs(features, logits)
    e = torch.softmax(logits, dim=1)
    e = e - torch.nn.functional.one_hot(labels, logits.shape[1]).to(e.dtype)
    weight_part = (e.unsqueeze(2) * features.unsqueeze(1)).flatten(1)
    return torch.cat([e, weight_part], dim=1)


def last_layer_diag_hessians(features: Tensor, logits: Tensor) -> Tensor:
    """Per-sample diagonal Hessian of cross-entropy w.r.t. (b, W) of the last linear layer.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``.

    Returns:
        ``[n, c*(d+1)]``: ``[q, vec(q (h*h)^T)]`` with ``q = p (1 - p)``, ``p = softmax(z)``.
        The Hessian does not depend on the label.
    """
    _check_head_inputs(features, logits)
    p = torch.softmax(logits, dim=1)
    q = p * (1 - p)
    weight_part = (q.unsqueeze(2) * features.square().unsqueeze(1)).flatten(1)
    return torch.cat([q, weight_part], dim=1)


def softmax_residuals(logits: Tensor, labels: Tensor) -> Tensor:
    """``e = softmax(z) - onehot(y)``, the gradient of cross-entropy w.r.t. the logits.

    Args:
        logits: ``[n, c]``; labels: int64 ``[n]``.

    Returns:
        ``[n, c]`` in the dtype of ``logits``.
    """
    e = torch.softmax(logits, dim=1)
    return e - torch.nn.functional.one_hot(labels, logits.shape[1]).to(e.dtype)


def last_layer_grad_gram(features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Inner products ``g_i . g_j`` of the per-sample last-layer gradients, ``[n, n]``.

    Since ``g_i = [e_i, vec(e_i h_i^T)]``, ``g_i . g_j = (e_i . e_j)(h_i . h_j + 1)``: two small
    Gram matrices replace the ``[n, c*(d+1)]`` gradient matrix (O(n^2 (c + d)) time, O(n^2) memory).

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; labels: int64 ``[n]``.
    """
    _check_head_inputs(features, logits)
    e = softmax_residuals(logits, labels)
    gram = features @ features.T
    gram.add_(1.0).mul_(e @ e.T)
    return gram


def gram_to_distances(gram: Tensor) -> Tensor:
    """Euclidean distances ``||g_i - g_j||_2`` from a Gram matrix, computed in place.

    ``||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij``; rounding can make it slightly negative, so it
    is clamped at 0, and the diagonal is set to exactly 0.

    Args:
        gram: ``[n, n]`` symmetric; overwritten and returned.
    """
    sq_norms = gram.diagonal().clone()
    gram.mul_(-2.0).add_(sq_norms.unsqueeze(0)).add_(sq_norms.unsqueeze(1))
    gram.clamp_(min=0.0).sqrt_()
    gram.fill_diagonal_(0.0)
    return gram


def pairwise_grad_distances(features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """``||g_i - g_j||_2`` between per-sample last-layer gradients, ``[n, n]``.

    Uses :func:`last_layer_grad_gram`; the gradients themselves are never built.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; labels: int64 ``[n]``.
    """
    return gram_to_distances(last_layer_grad_gram(features, logits, labels))


# Rows per block of the moments of diag_hessian_variances: float64 temporaries of a few MB,
# whatever n (a fixed block, so the sums are taken in the same order on any machine).
MOMENT_ROWS = 512


def diag_hessian_variances(features: Tensor, logits: Tensor) -> Tensor:
    """Variance over samples of every diagonal-Hessian coordinate, ``[c*(d+1)]`` float64.

    Coordinate order as in :func:`last_layer_diag_hessians`. Population variance (divide by n),
    from the moments ``E[x^2] - E[x]^2`` with ``x = q_a`` (bias) and ``x = q_a h_b^2`` (weight):
    ``E[q_a^2 h_b^4] = (q^2)^T (h^4) / n`` and ``E[q_a h_b^2] = q^T (h^2) / n``, summed over
    blocks of :data:`MOMENT_ROWS` samples, so no ``[n, c*(d+1)]`` matrix and no ``[n, d]``
    temporary is built. Moments are accumulated in float64 because the difference of moments
    cancels.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``.
    """
    _check_head_inputs(features, logits)
    n, d = features.shape
    p = torch.softmax(logits.double(), dim=1)
    q = p * (1 - p)
    first = q.new_zeros(q.shape[1], d)  # sum_i q_ia h_ib^2
    second = q.new_zeros(q.shape[1], d)  # sum_i q_ia^2 h_ib^4
    for start in range(0, n, MOMENT_ROWS):
        rows = slice(start, start + MOMENT_ROWS)
        h2 = features[rows].to(torch.float64, copy=True).square_()  # float32 squares: exact
        first.addmm_(q[rows].T, h2)
        second.addmm_(q[rows].square().T, h2.square_())
    bias_var = q.square().mean(0) - q.mean(0).square()
    weight_var = second.div_(n).sub_(first.div_(n).square_())
    return torch.cat([bias_var, weight_var.flatten()]).clamp_(min=0.0)


def top_variance_coordinates(features: Tensor, logits: Tensor, k: int) -> Tensor:
    """The ``k`` diagonal-Hessian coordinates with the largest variance over the samples.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; k: number of coordinates (capped at c*(d+1)).

    Returns:
        int64 ``[min(k, c*(d+1))]``, by decreasing variance, ties to the lowest coordinate.
    """
    variances = diag_hessian_variances(features, logits)
    k = min(int(k), variances.numel())
    kth = torch.topk(variances, k).values[-1]  # O(P); a full sort of P = c(d+1) costs more
    above = torch.nonzero(variances > kth).flatten()
    tied = torch.nonzero(variances == kth).flatten()[: k - len(above)]
    chosen = torch.cat([above, tied])  # ascending index inside each part
    return chosen[torch.sort(variances[chosen], descending=True, stable=True).indices]


def diag_hessian_columns(features: Tensor, logits: Tensor, coords: Tensor) -> Tensor:
    """Selected columns of :func:`last_layer_diag_hessians`, ``[n, len(coords)]``.

    Builds only the requested coordinates: ``q_a`` for ``coord = a < c`` and ``q_a h_b^2`` for
    ``coord = c + a*d + b``.

    Args:
        features: ``[n, d]``; logits: ``[n, c]``; coords: int64 ``[k]``.
    """
    _check_head_inputs(features, logits)
    c, d = logits.shape[1], features.shape[1]
    p = torch.softmax(logits, dim=1)
    q = p.mul_(1 - p)
    coords = coords.to(features.device)
    is_bias = coords < c
    w = (coords - c).clamp(min=0)
    row = torch.where(is_bias, coords, w // d)
    h2 = features.index_select(1, w % d).square_()  # [n, k], the only [n, k] temporaries
    if bool(is_bias.any()):
        h2[:, is_bias] = 1.0
    return h2.mul_(q.index_select(1, row))


def backpack_last_layer_curvature(
    head: torch.nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    loss: torch.nn.Module | None = None,
    hessian: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Per-sample gradients and diagonal Hessians of any BackPACK-supported head, via BackPACK.

    For heads or losses without a closed form (e.g. a two-layer head, or ``MSELoss``). For a
    single ``nn.Linear`` with cross-entropy it returns the values of :func:`last_layer_grads`
    and :func:`last_layer_diag_hessians`. The head is copied before BackPACK extends it, so
    the caller's module keeps no hooks.

    Args:
        head: module mapping features ``[n, d]`` to outputs; its parameters are differentiated.
        features: ``[n, d]``; labels: targets accepted by ``loss``.
        loss: a BackPACK-supported loss with ``reduction="sum"`` (default cross-entropy);
            ``"mean"`` would divide every per-sample quantity by n.
        hessian: also compute the diagonal Hessians.

    Returns:
        ``(grads, diag_hessians)``, each ``[n, P]``: parameters module by module in
        ``head.modules()`` order, bias before weight inside a module, each flattened
        row-major. ``diag_hessians`` is ``None`` if ``hessian=False``.
    """
    import copy

    from backpack import backpack, extend
    from backpack.extensions import BatchDiagHessian, BatchGrad

    loss = torch.nn.CrossEntropyLoss(reduction="sum") if loss is None else copy.deepcopy(loss)
    if getattr(loss, "reduction", "sum") != "sum":
        raise ValueError(
            f"loss has reduction={loss.reduction!r}; per-sample quantities need "
            "reduction='sum' (mean divides each one by the batch size). Pass "
            "loss=<Loss>(reduction='sum')."
        )
    head = extend(copy.deepcopy(head))
    loss = extend(loss)
    params = []
    for module in head.modules():
        own = dict(module.named_parameters(recurse=False))
        params += [own[name] for name in sorted(own, key=lambda k: (k != "bias", k))]
    if not params:
        raise ValueError("head has no parameters to differentiate; pass the last layer(s).")
    for p in params:
        p.requires_grad_(True)
    extensions = [BatchGrad(), BatchDiagHessian()] if hessian else [BatchGrad()]
    with torch.enable_grad(), backpack(*extensions):
        # An input that requires grad keeps torch's full backward hooks (used by BackPACK) quiet.
        loss(head(features.detach().requires_grad_(True)), labels).backward()
    grads = torch.cat([p.grad_batch.flatten(1) for p in params], dim=1).detach()
    if not hessian:
        return grads, None
    hess = torch.cat([p.diag_h_batch.flatten(1) for p in params], dim=1).detach()
    return grads, hess
