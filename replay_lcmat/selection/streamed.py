"""Streamed similarity rows of one class (no ``n x n`` matrix): the facility-location
selectors' path for classes whose dense similarity would not fit in memory."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from replay_lcmat import kernels, submodular
from replay_lcmat.selection.distances import ClassDistances


def format_bytes(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


# Rows per block of a streamed pass over all rows (and of the lazy greedy's largest refresh):
# enough that a block's products reuse each point's features from cache (at 32 rows the float64
# product of n = 100,000 points waits on memory: 1.4x the time per row of 128).
STREAM_BLOCK_ROWS = 128


def stream_block_rows(n: int) -> int:
    """Rows per streamed block on ``n`` points: :data:`STREAM_BLOCK_ROWS`, fewer on small
    classes (``n / 64``, at least 16), where a block would weigh next to the ``n x n`` matrix."""
    return max(16, min(STREAM_BLOCK_ROWS, n // 64))


# Most rows a streamed similarity keeps in its cache (fewer when they pass STREAM_CACHE_BYTES).
CACHE_ROWS = 128

# Evenly spaced points whose rows guess the greedy's first picks (a class of at least
# GUESS_MIN_POINTS points, offset "max", every point a candidate): the offset pass then also
# bounds the gains after those picks, which spares the bound passes they would need. The
# guesses change the work, never the picks.
GUESS_SAMPLE = 512
GUESS_REFINE = 64  # the best estimates whose gains are then computed from their whole rows
GUESS_SECONDS = 1  # second picks guessed after the first (each costs the offset pass ~10%)
GUESS_MIN_POINTS = 4096


def guess_sample_rows(n: int) -> int:
    """Rows of the guesses' sample held at once on a class of ``n`` points (0: no guesses)."""
    return min(GUESS_SAMPLE, n) if n >= GUESS_MIN_POINTS else 0


def _overflow_error(name: str, label: int, dtype: torch.dtype, low, high, n: int) -> ValueError:
    return ValueError(
        f"{name} on class {label}: the {dtype} dissimilarities (range [{float(low):.3g}, "
        f"{float(high):.3g}]) or their sums over {n} samples overflow; the inputs are finite "
        "but too large. Scale the features or logits down"
        + (
            ", or pass float64 inputs."
            if dtype != torch.float64
            else " (e.g. divide by their max)."
        )
    )


def offset_and_check(name: str, label: int, offset, low: Tensor, high: Tensor, n: int) -> Tensor:
    """``C`` (a 0-dim tensor) from the extremes of ``d``; raises when ``d`` or its sums overflow.

    The inputs were checked finite already, so a non-finite ``d`` can only be an overflow.
    """
    c = high if offset == "max" else high.new_tensor(float(offset))
    extreme = max(abs(float(c - low)), abs(float(c - high)))
    if not (math.isfinite(float(low)) and math.isfinite(float(high))) or (
        n * extreme >= torch.finfo(high.dtype).max
    ):
        raise _overflow_error(name, label, high.dtype, low, high, n)
    return c


def _sum_margin(n: int, dtype: torch.dtype) -> float:
    """Relative margin of a float64 sum of ``n`` non-negative terms taken in another order than
    the gains' (less than ``n u``, ``u`` = 2^-53; ``4 n u`` kept) and of the gains' rounding to
    ``dtype`` (half an ulp; twice its unit roundoff kept)."""
    return 4 * n * torch.finfo(torch.float64).eps / 2 + torch.finfo(dtype).eps


def _later_gain_bounds(sums: Tensor, c: float, dtype: torch.dtype) -> Tensor:
    """Upper bounds of the gains ``sum_i max(0, s_ki - cov_i)`` once the picks ``P`` are made,
    from ``sums[k] = sum_i max(0, m_i - d_ki)`` (float64, ``m = min_{j in P} d_j``, summed
    before ``C`` was known). With ``s = C - d >= 0`` the coverage is ``C - m``, so each term
    is ``max(0, m_i - d_ki)`` but for the roundings of ``C - d`` and ``C - m`` in ``dtype``
    (at most ``u C`` each, ``u`` its unit roundoff): ``+ 2 n u C`` in all. Then the margin of
    :meth:`StreamedSimilarity.gain_bounds` for the order of the sums and the gains' rounding."""
    n = len(sums)
    unit = torch.finfo(dtype).eps / 2
    return (sums + 2 * n * unit * abs(c)).mul_(1.0 + _sum_margin(n, dtype))


def _first_gain_bounds(row_sums: Tensor, c: float, dtype: torch.dtype) -> Tensor:
    """Upper bounds of the first marginal gains ``sum_i max(0, s_ji)`` with ``s = C - d`` and
    ``C = max d`` (every ``s_ji >= 0``): ``n C - sum_i d_ij`` (float64 ``[n]``) plus a margin
    for the roundings of the gains as computed (each ``C - d`` rounded in ``dtype``, the sum
    rounded to ``dtype``): ``4 n C u`` with ``u`` the unit roundoff. The lazy greedy refreshes
    the top ones before it picks (:func:`~replay_lcmat.greedy.maximize`), so the picks are
    the exact greedy's, without a pass over every row for the first gains."""
    n = len(row_sums)
    unit = torch.finfo(dtype).eps / 2
    return (n * c - row_sums) + 4 * n * abs(c) * unit


class StreamedSimilarity:
    """``s = C - d`` rows of one class on demand: a :class:`~replay_lcmat.submodular.RowSource`.

    ``C = "max"`` takes one streamed pass over every candidate row first (``C`` must be known
    before any gain; the pass also checks for overflow; with every point a candidate, over the
    blocks from the diagonal on only: half the work, the same entries). That pass also gives
    upper bounds of the first gains (``initial_bounds``) and, on a class of at least
    :data:`GUESS_MIN_POINTS`, of the gains after guessed first and second picks
    (``later_bounds``; see :meth:`_guessed_picks`). A float ``C`` is checked row block by row
    block as rows are made. Recently used rows are kept in a cache of
    :data:`~replay_lcmat.submodular.STREAM_CACHE_BYTES`.

    Args:
        distances: the class's :class:`ClassDistances`.
        offset: ``"max"`` or a float.
        candidates: class indices of the candidates (default: every sample, in order); the
            points are always the whole class.
        owner: ``(selector name, class label)`` for error messages.
    """

    lazy_chunks = (16, 1024)  # a chunk's rows share one read of the inputs
    initial_bounds: Tensor | None = None  # upper bounds of the first gains (offset "max")
    # picks (as a set) -> upper bounds of every gain once they are made (guessed first picks)
    later_bounds: dict[frozenset[int], Tensor] | None = None

    def __init__(
        self,
        distances: ClassDistances,
        offset: float | str,
        *,
        candidates: Tensor | None = None,
        owner: tuple[str, int] = ("facility location", 0),
    ) -> None:
        self.distances, self.owner = distances, owner
        self.candidates = candidates
        self.n_points = distances.n
        self.n_candidates = distances.n if candidates is None else len(candidates)
        self.dtype, self.device = distances.dtype, distances.device
        self.block_rows = stream_block_rows(self.n_points)
        row_bytes = self.n_points * torch.finfo(self.dtype).bits // 8
        self._capacity = max(1, min(CACHE_ROWS, submodular.STREAM_CACHE_BYTES // row_bytes))
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self.offset = offset
        self.c: Tensor | None = None
        self._buffer: Tensor | None = None  # one block of upper rows, reused by every pass
        if offset == "max":
            low = high = None
            row_sums = None  # sum_i d_ij of every row j, float64, from the same blocks
            guesses: dict[frozenset[int], tuple[Tensor, Tensor]] = {}  # picks -> (-m, sums)
            if candidates is None:  # d is symmetric: the blocks from the diagonal on
                row_sums = torch.zeros(self.n_points, dtype=torch.float64, device=self.device)
                if guess_sample_rows(self.n_points):
                    guesses = self._guessed_picks()
                blocks = self._upper_blocks("offset pass")
            else:
                blocks = self._candidate_blocks("offset pass")
            zero = torch.zeros((), dtype=self.dtype, device=self.device)
            for a, stop, block in blocks:
                if row_sums is not None:
                    # rows a:stop see columns a: here, and columns before a in earlier blocks
                    row_sums[a:stop] += block.sum(1, dtype=torch.float64)
                    row_sums[stop:] += block[:, stop - a :].sum(0, dtype=torch.float64)
                for negative_m, sums in guesses.values():  # terms max(0, (0 - d) - (-m))
                    kernels.add_gain_sums(block, zero, negative_m, a, sums)
                lo, hi = torch.aminmax(block)
                low = lo if low is None else torch.minimum(low, lo)
                high = hi if high is None else torch.maximum(high, hi)
            self.c = offset_and_check(*owner, offset, low, high, self.n_points)
            if row_sums is not None:
                c = float(self.c)
                self.initial_bounds = _first_gain_bounds(row_sums, c, self.dtype)
                self.later_bounds = {
                    picks: _later_gain_bounds(sums, c, self.dtype)
                    for picks, (_, sums) in guesses.items()
                }

    def _guessed_picks(self) -> dict[frozenset[int], tuple[Tensor, Tensor]]:
        """The greedy's likely first pick and :data:`GUESS_SECONDS` likely second picks, as
        ``{picks: (-m, zeros)}`` with ``m`` the smallest ``d`` to the picks (``[n]``, the
        inputs' dtype) and float64 ``[n]`` sums for the offset pass.

        The first gain of ``k`` is ``sum_i (C - d_ik)`` (largest where ``d``'s sum is smallest),
        the second after pick ``g`` is ``sum_i max(0, d_gi - d_ik)``: ``C`` cancels, so no pass
        is needed first. Each is estimated on the rows of :data:`GUESS_SAMPLE` evenly spaced
        points, then computed whole for the :data:`GUESS_REFINE` best estimates."""
        n, rows, size = self.n_points, self.block_rows, guess_sample_rows(self.n_points)
        sample = torch.arange(size, device=self.device) * n // size
        d_sample = torch.cat(
            [self.distances.rows(sample[a : a + rows]) for a in range(0, size, rows)]
        )  # [size, n]; d is symmetric, so column k holds d_ik
        estimate = d_sample.sum(0, dtype=torch.float64).neg_()
        first = int(self._best(estimate, lambda d: d.sum(1, dtype=torch.float64).neg_())[0])
        d_first = self.distances.rows(torch.tensor([first], device=self.device))[0]
        estimate.zero_()
        for a in range(0, size, rows):
            part = d_first[sample[a : a + rows], None] - d_sample[a : a + rows]
            estimate += part.clamp_(min=0).sum(0, dtype=torch.float64)
        del d_sample
        estimate[first] = -math.inf
        seconds = self._best(
            estimate,
            lambda d: (d_first - d).clamp_(min=0).sum(1, dtype=torch.float64),
            GUESS_SECONDS,
        )
        d_seconds = self.distances.rows(seconds)
        guesses = {frozenset([first]): d_first}
        for j, d_j in zip(seconds.tolist(), d_seconds, strict=True):
            guesses[frozenset([first, j])] = torch.minimum(d_first, d_j)
        return {
            picks: (m.neg(), torch.zeros(n, dtype=torch.float64, device=self.device))
            for picks, m in guesses.items()
        }

    def _best(self, estimate: Tensor, gain, count: int = 1) -> Tensor:
        """The ``count`` candidates of largest ``gain(d[ids])`` (float64 ``[len(ids)]``) among
        the :data:`GUESS_REFINE` of largest ``estimate`` (ties: lowest index)."""
        ids = torch.sort(estimate, descending=True, stable=True).indices[:GUESS_REFINE]
        ids = ids.sort().values  # rows in index order: ties stay with the lowest index
        rows = self.block_rows
        exact = torch.cat(
            [gain(self.distances.rows(ids[a : a + rows])) for a in range(0, len(ids), rows)]
        )
        return ids[torch.sort(exact, descending=True, stable=True).indices[:count]]

    def _bar(self, starts: range, what: str):
        return tqdm(
            starts,
            desc=f"{self.owner[0]} class {self.owner[1]}, streamed: {what}",
            disable=self.n_points < submodular.STREAM_PROGRESS_MIN_POINTS,
            leave=False,
        )

    def _upper_blocks(
        self, what: str, *, lower_bound: bool = False
    ) -> Iterator[tuple[int, int, Tensor]]:
        """``(a, stop, d[a:stop, a:])`` for blocks of ``block_rows`` rows (every point a
        candidate): the blocks from the diagonal on, each in the same reused buffer; with
        ``lower_bound``, entries at most ``d``'s (:meth:`ClassDistances.upper`)."""
        n, rows = self.n_points, self.block_rows
        if self._buffer is None:
            self._buffer = torch.empty(rows * n, dtype=self.dtype, device=self.device)
        for a in self._bar(range(0, n, rows), what):
            stop = min(a + rows, n)
            block = self._buffer[: (stop - a) * (n - a)].view(stop - a, n - a)
            yield a, stop, self.distances.upper(a, stop, block, lower_bound=lower_bound)

    def _candidate_blocks(self, what: str) -> Iterator[tuple[int, int, Tensor]]:
        for a in self._bar(range(0, self.n_candidates, self.block_rows), what):
            stop = min(a + self.block_rows, self.n_candidates)
            yield a, stop, self._distances(torch.arange(a, stop))

    def gain_bounds(self, cov: Tensor) -> Tensor | None:
        """Upper bounds of every candidate's gain ``sum_i max(0, s_ji - cov_i)`` (float64
        ``[n]``) from one pass over the blocks from the diagonal on: half the work of making
        every row, since ``s`` is symmetric and a block gives its rows' and, mirrored, its
        columns' share (:func:`~replay_lcmat.kernels.add_gain_sums`). The blocks hold lower
        bounds of ``d`` (a float32 product where the inputs allow it:
        :meth:`ClassDistances.upper` with ``lower_bound``), so each term is at least the gain's
        as computed; the order of the float64 sum differs, which moves a sum of ``n``
        non-negative terms by less than ``n u`` of itself (``u`` = 2^-53), and the gains are
        then rounded to the inputs' dtype (half an ulp): hence a margin of ``4 n u`` plus twice
        the dtype's unit roundoff, relative. None when the candidates are not every point.
        """
        if self.candidates is not None:
            return None
        n = self.n_points
        sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        for a, _, block in self._upper_blocks("gain bounds", lower_bound=True):
            c = self.c
            if c is None:  # a float offset: check the blocks as they come
                low, high = torch.aminmax(block)
                c = offset_and_check(*self.owner, self.offset, low, high, n)
            kernels.add_gain_sums(block, c, cov, a, sums)
        return sums.mul_(1.0 + _sum_margin(n, self.dtype))

    def _distances(self, ids: Tensor) -> Tensor:
        ids = ids.to(self.device)
        return self.distances.rows(ids if self.candidates is None else self.candidates[ids])

    def _similarity(self, ids: Tensor) -> Tensor:
        d = self._distances(ids)
        if self.c is None:  # a float offset: check the rows as they come
            low, high = torch.aminmax(d)
            c = offset_and_check(*self.owner, self.offset, low, high, self.n_points)
        else:
            c = self.c
        return torch.sub(c, d, out=d)

    def rows(self, ids: Tensor) -> Tensor:
        """``s[ids]``, ``[len(ids), n_points]``. Rows asked for one by one or in chunks go
        through the cache; a run of consecutive rows (a full pass) does not. Rows made for a
        chunk are copied out directly; the cache keeps the chunk's first rows (its largest
        bounds: the likeliest pick, asked for again right after) as far as it holds them."""
        ids = ids.to(self.device)
        if len(ids) > 1 and bool((ids[1:] - ids[:-1] == 1).all()):
            return self._similarity(ids)
        wanted = ids.tolist()
        missing = [j for j in dict.fromkeys(wanted) if j not in self._cache]
        made = {}
        if missing:
            fresh = self._similarity(torch.tensor(missing, device=self.device))
            made = dict(zip(missing, fresh, strict=True))
        out = torch.empty(len(ids), self.n_points, dtype=self.dtype, device=self.device)
        for r, j in enumerate(wanted):
            row = made.get(j)
            if row is None:
                row = self._cache[j]
                self._cache.move_to_end(j)
            out[r] = row
        for j in reversed(missing[: self._capacity]):  # the chunk's first rows end newest
            self._cache[j] = made[j].clone()
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return out
