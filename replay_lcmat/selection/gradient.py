"""Gradient-matching selectors that are not facility location: GradMatch and Glister.

Both work on the Gram matrix / kernel of last-layer gradients, so the ``[n, c*(d+1)]`` gradients
are never built (see :mod:`replay_lcmat.curvature`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from replay_lcmat.curvature import last_layer_grad_gram, softmax_residuals
from replay_lcmat.selection.base import ClassInputs, Selector, registered
from replay_lcmat.validation import check_number


def nonnegative_weights(gram: Tensor, target: Tensor, ridge: float) -> Tensor:
    """``argmin_{w >= 0} ||sum_k w_k g_k - t||^2 + ridge ||w||^2`` from inner products alone.

    Args:
        gram: ``[k, k]`` ``g_i . g_j`` of the chosen gradients; target: ``[k]`` ``g_i . t``.
        ridge: Tikhonov weight (> 0 keeps the problem well posed).

    Returns:
        ``[k]`` weights (float64, CPU). With ``A^T A = G + ridge I`` (Cholesky) the problem is
        the non-negative least squares ``||A w - A^{-T} b||``.
    """
    a = gram.detach().double().cpu() + ridge * torch.eye(len(gram), dtype=torch.float64)
    chol = torch.linalg.cholesky(a)  # a = L L^T, A = L^T
    rhs = torch.linalg.solve_triangular(chol, target.double().cpu().unsqueeze(1), upper=False)
    w, _ = nnls(chol.T.numpy(), rhs.squeeze(1).numpy())
    return torch.from_numpy(np.asarray(w))


def gradmatch_order(gram: Tensor, budget: int, ridge: float) -> tuple[Tensor, Tensor]:
    """Orthogonal matching pursuit towards the summed gradient ``t = sum_i g_i``.

    Each step adds the sample whose gradient best correlates with the residual
    ``t - sum_{k in S} w_k g_k`` (ties: lowest index), then refits non-negative weights.

    Args:
        gram: ``[n, n]`` gradient inner products; budget: picks; ridge: see
            :func:`nonnegative_weights` (scaled by the mean squared gradient norm).

    Returns:
        ``(picks int64 [budget], weights [budget])``.
    """
    n = len(gram)
    target = gram.sum(1)
    lam = ridge * float(gram.diagonal().mean().clamp(min=1e-12))
    available = torch.ones(n, dtype=torch.bool, device=gram.device)
    picks: list[int] = []
    w = torch.zeros(0, dtype=torch.float64)
    for _ in range(budget):
        if picks:
            chosen = torch.tensor(picks, device=gram.device)
            residual_corr = target - gram[:, chosen] @ w.to(gram.device, gram.dtype)
        else:
            residual_corr = target.clone()
        residual_corr[~available] = -torch.inf
        j = int(torch.argmax(residual_corr))
        picks.append(j)
        available[j] = False
        chosen = torch.tensor(picks, device=gram.device)
        w = nonnegative_weights(gram[chosen][:, chosen], target[chosen], lam)
    return torch.tensor(picks, dtype=torch.long), w


@registered
class GradMatch(Selector):
    """GradMatch: OMP matching the class gradient sum with non-negative weights.

    Args:
        ridge: Tikhonov weight of the weight fit, > 0 (relative to the mean squared gradient norm).
    """

    name = "gradmatch"
    paper = "Killamsetty et al. 2021, GRAD-MATCH: Gradient Matching based Data Subset Selection"
    needs = ("features", "logits")

    def __init__(self, *, ridge: float = 1e-3) -> None:
        self.ridge = check_number(self.name, "ridge", ridge, exclusive_minimum=0)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor]:
        gram = last_layer_grad_gram(inputs.features, inputs.logits, inputs.labels)
        picks, w = gradmatch_order(gram, budget, self.ridge)
        return picks, w.to(inputs.features.dtype)


def glister_order(
    features: Tensor, logits: Tensor, labels: Tensor, budget: int, eta: float
) -> Tensor:
    """Greedy Glister with a one-step Taylor model of the last layer.

    Step ``t`` picks ``argmax_j g_j . gbar(theta_t)`` where ``g_j`` is sample j's gradient at the
    selection model, ``gbar`` the mean gradient of the class (validation set) and
    ``theta_t = theta - eta sum_{k in S} g_k``. Updating (W, b) that way moves the logits by
    ``dz_i = -eta sum_k e_k (h_k . h_i + 1)``, so neither W nor the gradients are needed.
    Each step costs O(n c d).

    Returns:
        int64 ``[budget]`` (ties: lowest index).
    """
    n = len(labels)
    e0 = softmax_residuals(logits, labels)
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    shifted = logits.clone()
    available = torch.ones(n, dtype=torch.bool, device=logits.device)
    picks = []
    for _ in range(budget):
        e_val = torch.softmax(shifted, dim=1) - onehot
        # g_j . gbar = (1/n) sum_i (e_j . e_i)(h_j . h_i + 1)
        score = ((e0 @ (e_val.T @ features)) * features).sum(1) + e0 @ e_val.sum(0)
        score /= n
        score[~available] = -torch.inf
        j = int(torch.argmax(score))
        picks.append(j)
        available[j] = False
        kernel_j = features @ features[j] + 1
        shifted -= eta * kernel_j.unsqueeze(1) * e0[j].unsqueeze(0)
    return torch.tensor(picks, dtype=torch.long)


@registered
class Glister(Selector):
    """Glister: greedy validation-gradient alignment with a Taylor-updated last layer.

    Args:
        eta: step size of the Taylor update, >= 0 (0: the scores never change).
    """

    name = "glister"
    paper = "Killamsetty et al. 2021, GLISTER: Generalization based Data Subset Selection"
    needs = ("features", "logits")

    def __init__(self, *, eta: float = 0.1) -> None:
        self.eta = check_number(self.name, "eta", eta, minimum=0)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        return glister_order(inputs.features, inputs.logits, inputs.labels, budget, self.eta), None
