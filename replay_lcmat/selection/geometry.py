"""Selectors that use only labels, features or predicted probabilities: Uniform, Herding,
k-Center Greedy, Contextual Diversity."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from replay_lcmat.selection.base import ClassInputs, Selector, registered
from replay_lcmat.validation import check_seed


@registered
class Uniform(Selector):
    """Uniform random sampling per class (seeded per class); the order is the random order."""

    name = "uniform"
    paper = "the random baseline of every coreset paper"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = check_seed(self.name, seed)

    def start_class(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        return torch.randperm(len(inputs.labels), generator=self._generator)[:budget], None


def herding_order(features: Tensor, budget: int) -> Tensor:
    """Greedy herding: step ``t`` adds the sample that brings the mean of the picks closest to
    the mean of all ``features`` ``[n, d]``. Returns int64 ``[budget]`` (ties: lowest index)."""
    n = len(features)
    target = features.mean(0)
    picked_sum = torch.zeros_like(target)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picks = []
    for t in range(budget):
        gap = ((picked_sum + features) / (t + 1) - target).square().sum(1)
        gap[~available] = torch.inf
        j = int(torch.argmin(gap))
        picks.append(j)
        available[j] = False
        picked_sum += features[j]
    return torch.tensor(picks, dtype=torch.long)


@registered
class Herding(Selector):
    """Herding on penultimate features: match the class mean greedily."""

    name = "herding"
    paper = "Welling 2009, Herding Dynamical Weights to Learn"
    needs = ("features",)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        return herding_order(inputs.features, budget), None


def kcenter_order(distance_to: Callable[[int], Tensor], n: int, budget: int, first: int) -> Tensor:
    """Greedy k-center: start at ``first``, then repeatedly the point farthest from the picks.

    Args:
        distance_to: ``j -> [n]`` distances of every point to point ``j``.
        n: number of points; budget: picks; first: the first pick.

    Returns:
        int64 ``[budget]`` in pick order (ties: lowest index).
    """
    picks = [first]
    nearest = distance_to(first).clone()
    nearest[first] = -torch.inf
    for _ in range(budget - 1):
        j = int(torch.argmax(nearest))
        picks.append(j)
        nearest = torch.minimum(nearest, distance_to(j))
        nearest[j] = -torch.inf  # earlier picks stay at -inf through the minimum
    return torch.tensor(picks, dtype=torch.long)


@registered
class KCenter(Selector):
    """k-Center Greedy on penultimate features; the first center is drawn from the class's seed."""

    name = "kcenter"
    paper = "Sener & Savarese 2018, Active Learning for CNNs: A Core-Set Approach"
    needs = ("features",)

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = check_seed(self.name, seed)

    def start_class(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def first_center(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self._generator))

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        x = inputs.features
        return kcenter_order(
            lambda j: (x - x[j]).square().sum(1).sqrt(), len(x), budget, self.first_center(len(x))
        ), None


@registered
class ContextualDiversity(KCenter):
    """k-Center Greedy under the symmetric KL divergence of the predicted class probabilities."""

    name = "contextual-diversity"
    paper = "Agarwal et al. 2020, Contextual Diversity for Active Learning"
    needs = ("logits",)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        logp = torch.log_softmax(inputs.logits, dim=1)
        p = logp.exp()

        def sym_kl(
            j: int,
        ) -> Tensor:  # KL(p_i||p_j) + KL(p_j||p_i) = sum (p_i - p_j)(log p_i - log p_j)
            return ((p - p[j]) * (logp - logp[j])).sum(1).clamp_(min=0)

        return kcenter_order(sym_kl, len(p), budget, self.first_center(len(p))), None
