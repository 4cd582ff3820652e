"""Greedy maximisers of a monotone submodular function (facility location, Sec. 3 of the paper).

:func:`maximize` runs a greedy optimiser on any object with the four members of
:class:`SetFunction` (``n_candidates``, ``initial_state``, ``gains``, ``update``; e.g.
:class:`~replay_lcmat.submodular.FacilityLocation`) and knows nothing about gradients or
similarities.

    result = maximize(fn, budget=10)             # lazy greedy
    result.ranking, result.gains                 # picks in greedy order, marginal gains
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

OPTIMIZERS = ("naive", "lazy", "stochastic")
# The lazy greedy takes a bound pass once the rows it refreshed one by one since the last pass
# reach this fraction of the candidates: what a pass over half the symmetric matrix costs.
RENT = 0.5


class SetFunction(Protocol):
    """What the greedy optimisers need from a monotone submodular function."""

    n_candidates: int

    def initial_state(self) -> Tensor: ...

    def gains(self, state: Tensor, candidates: Tensor | None = None) -> Tensor: ...

    def update(self, state: Tensor, candidate: int) -> Tensor: ...


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
    if optimizer == "stochastic" and not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1); got {epsilon}. 0.1 is a good default.")
    label = getattr(fn, "progress_label", None)
    with tqdm(total=budget, desc=f"{label}: greedy", disable=label is None, leave=False) as bar:
        if optimizer == "naive":
            return _naive_greedy(fn, budget, bar)
        if optimizer == "lazy":
            return _lazy_greedy(fn, budget, bar)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        return _stochastic_greedy(fn, budget, epsilon, generator, bar)


def _naive_greedy(fn: SetFunction, budget: int, bar: tqdm) -> GreedyResult:
    state = fn.initial_state()
    available = torch.ones(fn.n_candidates, dtype=torch.bool)
    picks, gains = [], []
    for _ in range(budget):
        g = fn.gains(state).cpu()
        g[~available] = -math.inf
        j = int(torch.argmax(g))  # argmax returns the first (lowest-index) maximum
        picks.append(j)
        gains.append(float(g[j]))
        available[j] = False
        state = fn.update(state, j)
        bar.update(1)
    return _result(picks, gains, state.dtype)


def _lazy_greedy(fn: SetFunction, budget: int, bar: tqdm) -> GreedyResult:
    """Minoux's lazy greedy on an array of upper bounds, refreshed in chunks.

    Stale gains are upper bounds of the current gains (submodularity; also in floating point,
    since every term ``max(0, s - cov)`` only shrinks and a row is always summed in the same
    order). ``bound[j]`` is candidate ``j``'s latest gain or bound and ``at[j]`` the step it was
    computed at. While the largest bound (ties to the lowest index, as ``argmax``) is stale,
    the next chunk of stale candidates with the largest bounds (doubling in size, from
    ``first_chunk`` up to ``max_chunk``; taken from a queue of them, :func:`_stale_by_bound`) is
    refreshed with one ``fn.gains`` call. A fresh top is exactly naive greedy's argmax: its gain
    is at least every other bound, and an equal bound of a lower index would be the top
    instead. The chunk sizes are ``fn.lazy_chunks`` when it
    has them, else ``(16, 1024)``; they change the work, never the picks.

    Other upper bounds leave the picks alike. A function with ``initial_bounds`` (e.g. from
    the streamed offset pass) starts from those, all stale, instead of a pass over every
    candidate; one with ``gain_bounds(state)`` (a streamed symmetric matrix: every bound for
    half the work of every row) starts from those, and takes them again within a step when
    more than half the candidates would still need refreshing (:func:`_worth_a_bound_pass`) or
    once the rows refreshed since the last pass reach :data:`RENT` of the candidates. One with
    ``later_bounds`` (picks as a frozenset -> upper bounds of every gain once they are made;
    e.g. the streamed offset pass's, for guessed first picks) has its stale bounds lowered to
    those when the picks so far are one of its sets.
    """
    first_chunk, max_chunk = getattr(fn, "lazy_chunks", (16, 1024))
    bound_pass = getattr(fn, "gain_bounds", None)
    n = fn.n_candidates
    state = fn.initial_state()
    device = state.device
    known = getattr(fn, "initial_bounds", None)
    later = getattr(fn, "later_bounds", None) or {}
    longest = max(map(len, later), default=0)  # no set of picks beyond this size is looked up
    if known is None and bound_pass is not None:
        known = bound_pass(state)
    if known is None:  # exact gains: fresh at step 0
        bound, at = _floats(fn.gains(state)), np.zeros(n, dtype=np.int64)
    else:  # upper bounds known without a pass: stale from the start, refreshed on top
        bound, at = _floats(known), np.full(n, -1, dtype=np.int64)
    picks, gains = [], []
    since = 0  # rows refreshed since the last bound pass
    for step in range(budget):
        chunk, refreshed, best = first_chunk, 0, -math.inf
        checked = bound_pass is None
        queue, taken = None, 0  # built when the first chunk is needed
        while at[top := int(bound.argmax())] != step:
            rent = RENT is not None and bound_pass is not None and since >= RENT * n
            if rent or (not checked and refreshed >= n // 32):
                checked = True
                if rent or _worth_a_bound_pass(bound, at, step, best, n):
                    tighter = bound_pass(state)
                    if tighter is None:
                        bound_pass = None
                    else:
                        _tighten(bound, at, step, _floats(tighter))
                        chunk, since = first_chunk, 0  # tight bounds: few refreshes left
                        queue = None  # the bounds changed: queue them again
                        continue
            if queue is None or taken >= len(queue):  # none queued, or all refreshed
                queue, taken = _stale_by_bound(bound, at, step, 2 * max_chunk), 0
            stale = np.sort(queue[taken : taken + chunk])
            taken += len(stale)
            fresh = _floats(fn.gains(state, torch.from_numpy(stale).to(device)))
            bound[stale], at[stale] = fresh, step
            refreshed, best = refreshed + len(stale), max(best, float(fresh.max()))
            since += len(stale)
            chunk = min(2 * chunk, max_chunk)
        picks.append(top)
        gains.append(float(bound[top]))
        bound[top], at[top] = -math.inf, budget  # never the top again, never stale
        state = fn.update(state, top)
        known = later.get(frozenset(picks)) if len(picks) <= longest else None
        if known is not None:  # bounds for the next step, as tight as a bound pass's
            _tighten(bound, at, step + 1, _floats(known))
            since = 0
        bar.update(1)
    return _result(picks, gains, state.dtype)


def _floats(values: Tensor) -> np.ndarray:
    """``values`` as a float64 numpy array of the same numbers (a copy)."""
    return values.detach().to("cpu", torch.float64).numpy().copy()


def _stale_by_bound(bound: np.ndarray, at: np.ndarray, step: int, count: int) -> np.ndarray:
    """Up to ``count`` stale candidates (computed before ``step``) with the largest bounds,
    largest first (ties: lowest index first); int64.

    The lazy greedy refreshes them chunk by chunk within a step: refreshing makes a candidate
    fresh and changes no other bound, so what is left of the queue stays the largest stale
    bounds, in order, until it is used up or a bound pass lowers the bounds (then it is built
    again). One selection of ``O(n)`` per queue, not per chunk."""
    stale = np.flatnonzero(at < step)
    if len(stale) > count:
        stale = stale[np.argpartition(-bound[stale], count - 1)[:count]]
    return stale[np.lexsort((stale, -bound[stale]))]


def _worth_a_bound_pass(bound: np.ndarray, at: np.ndarray, step: int, best: float, n: int) -> bool:
    """Whether more than ``n / 2`` stale candidates have a bound above ``best`` (the largest
    gain refreshed so far this step, at most the pick's): each of them would be refreshed row
    by row, while one bound pass costs about ``n / 2`` rows."""
    return int(np.count_nonzero((at < step) & (bound > best))) > n // 2


def _tighten(bound: np.ndarray, at: np.ndarray, step: int, tighter: np.ndarray) -> None:
    """Lower each stale bound (computed before ``step``) to ``tighter`` where that is smaller,
    in place (still stale: the exact gain is computed before a pick)."""
    stale = at < step
    bound[stale] = np.minimum(bound[stale], tighter[stale])


def _stochastic_greedy(
    fn: SetFunction, budget: int, epsilon: float, generator: torch.Generator, bar: tqdm
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
        bar.update(1)
    return _result(picks, gains, state.dtype)


def _result(picks: list[int], gains: list[float], dtype: torch.dtype) -> GreedyResult:
    return GreedyResult(
        ranking=torch.tensor(picks, dtype=torch.long),
        gains=torch.tensor(gains, dtype=dtype),
    )
