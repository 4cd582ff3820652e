"""Facility location and greedy maximisers, kept apart.

:class:`FacilityLocation` is the set function; :func:`maximize` runs a greedy optimiser on any
object with the same four members (``n_candidates``, ``initial_state``, ``gains``, ``update``),
and knows nothing about gradients or similarities.

    fn = FacilityLocation(similarity)            # similarity[j, i]: how well j represents i
    result = maximize(fn, budget=10)             # lazy greedy
    result.ranking, result.gains                 # picks in greedy order, marginal gains
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

OPTIMIZERS = ("naive", "lazy", "stochastic")

# Peak bytes of facility location on n points, in units of n^2 * itemsize: the similarity, the
# [n, n] copy and difference made by the first full gains call, and the bool finiteness mask.
# Measured: LCMat-S on one class (d=512, c=10) peaks at about 3.3 n^2 * 4 bytes in float32.
FACILITY_PEAK_FACTOR = 3.3
MEMINFO = "/proc/meminfo"


class NotEnoughMemoryError(MemoryError, ValueError):
    """A step would need more memory than is available; raised before it allocates anything."""


def facility_location_peak_bytes(n_points: int, itemsize: int) -> int:
    """Estimated peak bytes of building an ``[n, n]`` similarity and running greedy on it."""
    return math.ceil(FACILITY_PEAK_FACTOR * n_points * n_points * itemsize)


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``, or ``None`` when unknown.

    CUDA: free device memory plus what PyTorch's cache holds unused. CPU: ``psutil``'s
    available memory, else ``MemAvailable`` of ``/proc/meminfo``, else ``None``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


class SetFunction(Protocol):
    """What the greedy optimisers need from a monotone submodular function."""

    n_candidates: int

    def initial_state(self) -> Tensor: ...

    def gains(self, state: Tensor, candidates: Tensor) -> Tensor: ...

    def update(self, state: Tensor, candidate: int) -> Tensor: ...


class FacilityLocation:
    """``F(S) = sum_i max(0, max_{j in S} s[j, i])``, monotone submodular for any ``s``.

    The state is the coverage ``cov_i = max(0, max_{j in S} s[j, i])`` (all zeros for the empty
    set), and the marginal gain of ``j`` is ``sum_i max(0, s[j, i] - cov_i)``.

    Args:
        similarity: ``[n_candidates, n_points]``; row ``j`` holds how well candidate ``j``
            represents each point. A symmetric ``[n, n]`` matrix works as is. Not copied.
    """

    def __init__(self, similarity: Tensor) -> None:
        if similarity.dim() != 2 or similarity.numel() == 0:
            raise ValueError(
                f"similarity must be a non-empty [n_candidates, n_points] matrix; got shape "
                f"{tuple(similarity.shape)}."
            )
        if not torch.isfinite(similarity).all():
            raise ValueError("similarity contains NaN or inf; check the inputs it was built from.")
        self.similarity = similarity
        self.n_candidates = similarity.shape[0]

    def initial_state(self) -> Tensor:
        """Coverage of the empty set: zeros ``[n_points]``."""
        return self.similarity.new_zeros(self.similarity.shape[1])

    def gains(self, state: Tensor, candidates: Tensor) -> Tensor:
        """Marginal gains ``[len(candidates)]`` of adding each candidate to the set with ``state``."""
        return (self.similarity[candidates] - state).clamp_(min=0).sum(1)

    def update(self, state: Tensor, candidate: int) -> Tensor:
        """Coverage after adding ``candidate`` (a new tensor)."""
        return torch.maximum(state, self.similarity[candidate])

    def evaluate(self, subset: Tensor) -> float:
        """``F(subset)`` for int64 candidate indices ``subset``."""
        if len(subset) == 0:
            return 0.0
        return float(self.similarity[subset].max(0).values.clamp(min=0).sum())

    def weights(self, subset: Tensor) -> Tensor:
        """``gamma_j``: number of points whose most similar member of ``subset`` is ``j``.

        Returns float ``[len(subset)]`` in the order of ``subset`` (ties go to the earlier member);
        the weights sum to ``n_points``.
        """
        owner = self.similarity[subset].argmax(0)  # argmax returns the first maximum
        return torch.bincount(owner, minlength=len(subset)).to(self.similarity.dtype)


@dataclass(frozen=True)
class GreedyResult:
    """Greedy picks: ``ranking`` int64 ``[budget]`` in pick order, ``gains`` ``[budget]``."""

    ranking: Tensor
    gains: Tensor


def maximize(
    fn: SetFunction,
    budget: int,
    *,
    optimizer: str = "lazy",
    epsilon: float = 0.1,
    generator: torch.Generator | None = None,
) -> GreedyResult:
    """Greedily pick ``budget`` candidates maximising ``fn``.

    Args:
        fn: the set function (e.g. :class:`FacilityLocation`).
        budget: number of picks, ``1 <= budget <= fn.n_candidates``.
        optimizer: ``"naive"`` (every gain at every step), ``"lazy"`` (Minoux's accelerated
            greedy; the same picks as naive, ties to the lowest index) or ``"stochastic"``
            (Mirzasoleiman et al. 2015: best of a random sample of
            ``ceil(n / budget * ln(1 / epsilon))`` candidates per step; approximate).
        epsilon: accuracy of the stochastic optimiser (ignored by the others).
        generator: random source of the stochastic optimiser (default: seed 0).

    Returns:
        :class:`GreedyResult`; its first ``k`` picks are the greedy answer for budget ``k``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
    n = fn.n_candidates
    if not 1 <= budget <= n:
        raise ValueError(
            f"budget must be between 1 and the number of candidates ({n}); got {budget}."
        )
    if optimizer == "naive":
        return _naive_greedy(fn, budget)
    if optimizer == "lazy":
        return _lazy_greedy(fn, budget)
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1); got {epsilon}. 0.1 is a good default.")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return _stochastic_greedy(fn, budget, epsilon, generator)


def _naive_greedy(fn: SetFunction, budget: int) -> GreedyResult:
    state = fn.initial_state()
    available = torch.ones(fn.n_candidates, dtype=torch.bool)
    all_candidates = torch.arange(fn.n_candidates, device=state.device)
    picks, gains = [], []
    for _ in range(budget):
        g = fn.gains(state, all_candidates).cpu()
        g[~available] = -math.inf
        j = int(torch.argmax(g))  # argmax returns the first (lowest-index) maximum
        picks.append(j)
        gains.append(float(g[j]))
        available[j] = False
        state = fn.update(state, j)
    return _result(picks, gains, state.dtype)


def _lazy_greedy(fn: SetFunction, budget: int, first_chunk: int = 16) -> GreedyResult:
    """Minoux's lazy greedy with batched re-evaluation.

    Stale gains are upper bounds of the current gains (submodularity). At each step the
    candidates are visited by decreasing bound (ties: lower index first) in chunks of doubling
    size, and their gains are refreshed with one ``fn.gains`` call per chunk. The step ends once
    the best refreshed gain is strictly above every bound not yet refreshed: those candidates
    cannot do better, so the pick (best refreshed gain, ties to the lowest index) is exactly
    naive greedy's argmax.
    """
    state = fn.initial_state()
    device = state.device
    n = fn.n_candidates
    bounds = fn.gains(state, torch.arange(n, device=device)).cpu()
    picks, gains = [], []
    for step in range(budget):
        if step == 0:  # every bound is fresh
            visited_ids, visited_gains = torch.arange(n), bounds
        else:
            order = torch.sort(bounds, descending=True, stable=True).indices
            n_open, visited, chunk = n - step, 0, first_chunk
            while True:
                ids = order[visited : min(visited + chunk, n_open)]  # picked ones sort last
                bounds[ids] = fn.gains(state, ids.to(device)).cpu()
                visited += len(ids)
                visited_ids = order[:visited]
                visited_gains = bounds[visited_ids]
                if visited >= n_open or visited_gains.max() > bounds[order[visited]]:
                    break
                chunk *= 2
        best = visited_gains.max()
        j = int(visited_ids[visited_gains == best].min())
        picks.append(j)
        gains.append(float(best))
        bounds[j] = -math.inf
        state = fn.update(state, j)
    return _result(picks, gains, state.dtype)


def _stochastic_greedy(
    fn: SetFunction, budget: int, epsilon: float, generator: torch.Generator
) -> GreedyResult:
    n = fn.n_candidates
    sample_size = min(n, math.ceil(n / budget * math.log(1 / epsilon)))
    state = fn.initial_state()
    remaining = torch.arange(n)
    picks, gains = [], []
    for _ in range(budget):
        k = min(sample_size, len(remaining))
        pos = torch.randperm(len(remaining), generator=generator)[:k].sort().values
        cands = remaining[pos]
        g = fn.gains(state, cands.to(state.device)).cpu()
        best = int(torch.argmax(g))
        j = int(cands[best])
        picks.append(j)
        gains.append(float(g[best]))
        remaining = torch.cat([remaining[: pos[best]], remaining[pos[best] + 1 :]])
        state = fn.update(state, j)
    return _result(picks, gains, state.dtype)


def _result(picks: list[int], gains: list[float], dtype: torch.dtype) -> GreedyResult:
    return GreedyResult(
        ranking=torch.tensor(picks, dtype=torch.long),
        gains=torch.tensor(gains, dtype=dtype),
    )
