"""Facility location, the set function of the greedy maximisers (:mod:`replay_lcmat.greedy`).

    fn = FacilityLocation(similarity)            # similarity[j, i]: how well j represents i
    result = maximize(fn, budget=10)             # lazy greedy (replay_lcmat.greedy)
    result.ranking, result.gains                 # picks in greedy order, marginal gains

The similarity is a ``[n_candidates, n_points]`` tensor (dense) or any :class:`RowSource`, which
computes rows on demand (streamed: no ``n x n`` matrix). Both go through the same arithmetic, so
a source whose rows equal the tensor's bit for bit gives the same gains, picks and weights.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from replay_lcmat import kernels

# Size of the row blocks FacilityLocation works in: big enough that each torch call does real
# work, small enough to stay in cache and to be negligible next to the [n, n] similarity.
BLOCK_BYTES = 1 << 20

# Peak bytes of facility location on n points, in units of n^2 * itemsize: the [n, n] similarity
# plus temporaries of O(n) rows' size (blocks of rows while it is built, the greedy's 1 MiB
# buffer, the class's copies of its [n, d] inputs). Measured on LCMat-S, one class,
# d=512, c=10, float32, as the resident high-water mark: 1.06 at n = 20,000, 1.15-1.17 at
# 10,000, 1.4-1.5 at 5,000 (those O(n d) temporaries weigh only where memory is no concern).
# It was 3.3 before the blocked builder and greedy.
FACILITY_PEAK_FACTOR = 1.2
# A streamed class of at least this many points shows progress bars (its passes take minutes).
STREAM_PROGRESS_MIN_POINTS = 20_000


def facility_location_peak_bytes(n_points: int, itemsize: int) -> int:
    """Estimated peak bytes of building an ``[n, n]`` similarity and running greedy on it."""
    return math.ceil(FACILITY_PEAK_FACTOR * n_points * n_points * itemsize)


# Bytes of rows a streamed source keeps from its recent calls (a row the lazy greedy has just
# refreshed is asked for again when that candidate is picked).
STREAM_CACHE_BYTES = 32 << 20


def streamed_peak_bytes(n_points: int, per_point: int, block_rows: int, itemsize: int) -> int:
    """Estimated peak bytes of streamed facility location on ``n_points`` points.

    ``per_point`` counts the values a source keeps per point (e.g. ``d + c + K`` inputs and
    their copies); ``block_rows`` the rows of its temporary blocks. On top: the row cache
    (:data:`STREAM_CACHE_BYTES`), the greedy's coverage and buffers (a few ``[n]`` vectors).
    No term grows like ``n^2``.
    """
    rows = (per_point + 12 * block_rows + 16) * n_points * itemsize
    return math.ceil(FACILITY_PEAK_FACTOR * rows) + STREAM_CACHE_BYTES


class RowSource(Protocol):
    """Rows of a similarity computed on demand (what :class:`FacilityLocation` streams from).

    ``rows(ids)`` returns ``[len(ids), n_points]`` rows ``s[ids]`` in the order of ``ids``; the
    result may be a buffer the next call overwrites. ``block_rows`` is the number of rows a
    full pass asks for at once (e.g. the source's tile); ``lazy_chunks`` the first and largest
    chunk of stale candidates the lazy greedy refreshes per call (1 for costly rows).
    """

    n_candidates: int
    n_points: int
    dtype: torch.dtype
    device: torch.device
    block_rows: int
    lazy_chunks: tuple[int, int]

    def rows(self, ids: Tensor) -> Tensor: ...


class FacilityLocation:
    """``F(S) = sum_i max(0, max_{j in S} s[j, i])``, monotone submodular for any ``s``.

    The state is the coverage ``cov_i = max(0, max_{j in S} s[j, i])`` (all zeros for the empty
    set), and the marginal gain of ``j`` is ``sum_i max(0, s[j, i] - cov_i)``.

    Every pass over the matrix works on blocks of about :data:`BLOCK_BYTES` in one reused buffer,
    so no call allocates more than that on top of ``similarity``. A :class:`RowSource` is asked
    for blocks of its own ``block_rows`` rows (at least two) and for single candidates.

    Args:
        similarity: ``[n_candidates, n_points]``; row ``j`` holds how well candidate ``j``
            represents each point. A symmetric ``[n, n]`` matrix works as is. Not copied. Or a
            :class:`RowSource` with the same rows (streamed; its rows are not checked).
        check_finite: refuse NaN or inf (one blocked min/max pass). Callers that have already
            proved the matrix finite (e.g. from the inputs it was built from) pass ``False``.
    """

    progress_label: str | None = None  # set: the greedy and full passes show tqdm bars
    initial_bounds: Tensor | None = None  # a source's upper bounds of the first gains, if any
    later_bounds: dict[frozenset[int], Tensor] | None = None  # a source's, after given picks

    def __init__(self, similarity: Tensor | RowSource, *, check_finite: bool = True) -> None:
        if isinstance(similarity, Tensor):
            if similarity.dim() != 2 or similarity.numel() == 0:
                raise ValueError(
                    f"similarity must be a non-empty [n_candidates, n_points] matrix; got shape "
                    f"{tuple(similarity.shape)}."
                )
            self.similarity, self.source = similarity, None
            self.n_candidates, self.n_points = similarity.shape
            self.dtype, self.device = similarity.dtype, similarity.device
            row_bytes = self.n_points * similarity.element_size()
            # at least two rows: see gains() on one-row sums
            self._block_rows = max(2, min(self.n_candidates, BLOCK_BYTES // row_bytes))
        else:
            self.similarity, self.source = None, similarity
            self.n_candidates, self.n_points = similarity.n_candidates, similarity.n_points
            self.dtype, self.device = similarity.dtype, similarity.device
            self._block_rows = max(2, min(self.n_candidates, similarity.block_rows))
            self.lazy_chunks = similarity.lazy_chunks
            self.initial_bounds = getattr(similarity, "initial_bounds", None)
            self.later_bounds = getattr(similarity, "later_bounds", None)
            check_finite = False
            owner = getattr(similarity, "owner", None)
            if owner is not None and self.n_points >= STREAM_PROGRESS_MIN_POINTS:
                self.progress_label = f"{owner[0]} class {owner[1]}, streamed"
        self._buffer: Tensor | None = None
        if check_finite and not self._is_finite():
            raise ValueError("similarity contains NaN or inf; check the inputs it was built from.")

    def _rows_buffer(self) -> Tensor:
        if self._buffer is None:  # zeros: the spare second row of gains() must hold numbers
            self._buffer = torch.zeros(
                self._block_rows, self.n_points, dtype=self.dtype, device=self.device
            )
        return self._buffer

    def _is_finite(self) -> bool:
        extremes = [
            torch.stack(torch.aminmax(self.similarity[a : a + self._block_rows]))
            for a in range(0, self.n_candidates, self._block_rows)
        ]
        return bool(torch.isfinite(torch.cat(extremes)).all())  # min/max propagate NaN

    def _rows(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` (at most one block) copied into the buffer."""
        out = self._rows_buffer()[: len(ids)]
        if self.source is not None:
            return out.copy_(self.source.rows(ids))
        return torch.index_select(self.similarity, 0, ids, out=out)

    def row(self, candidate: int) -> Tensor:
        """Row ``candidate``, ``[n_points]`` (a view or a fresh tensor)."""
        if self.source is not None:
            ids = torch.tensor([candidate], device=self.device)
            return self.source.rows(ids)[0].clone()
        return self.similarity[candidate]

    def initial_state(self) -> Tensor:
        """Coverage of the empty set: zeros ``[n_points]``."""
        return torch.zeros(self.n_points, dtype=self.dtype, device=self.device)

    def gains(self, state: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Marginal gains of adding each candidate to the set with ``state``.

        Args:
            state: coverage ``[n_points]``.
            candidates: int64 indices; ``None`` for all candidates in index order.

        Returns:
            ``[len(candidates)]`` (``[n_candidates]`` for ``None``). A row's gain is rounded the
            same way whatever the other candidates of the call: on the CPU the compiled kernel
            (:func:`~replay_lcmat.kernels.coverage_gains`, float64 sums in the order its
            compiled code fixes for the row length); elsewhere torch, rows summed in blocks of
            at least two, because torch splits a one-output sum over threads (another order).
        """
        sim = self.similarity
        count = self.n_candidates if candidates is None else len(candidates)
        out = torch.empty(count, dtype=self.dtype, device=self.device)
        full_pass = candidates is None and self.progress_label is not None
        starts = range(0, count, self._block_rows)
        if full_pass:  # a streamed pass over every row: minutes on a large class
            starts = tqdm(starts, desc=f"{self.progress_label}: first gains", leave=False)
        if kernels.gains_compiled(self.device):
            for a in starts:
                b = min(a + self._block_rows, count)
                if sim is None:
                    ids = self._range(a, b) if candidates is None else candidates[a:b]
                    block = self.source.rows(ids)
                    kernels.coverage_gains(block, self._range(0, b - a), state, out[a:b])
                else:
                    ids = self._range(a, b) if candidates is None else candidates[a:b]
                    kernels.coverage_gains(sim, ids, state, out[a:b])
            return out
        buffer = self._rows_buffer()
        for a in starts:
            b = min(a + self._block_rows, count)
            if candidates is None:
                block = sim[a:b] if sim is not None else self.source.rows(self._range(a, b))
                torch.sub(block, state, out=buffer[: b - a])
            else:
                self._rows(candidates[a:b]).sub_(state)
            rows = buffer[: max(b - a, 2)]  # a lone row is summed with the spare one after it
            out[a:b] = rows.clamp_(min=0).sum(1)[: b - a]
        return out

    def gain_bounds(self, state: Tensor) -> Tensor | None:
        """Upper bounds of every candidate's gain from the source's pass over half the
        symmetric matrix (a streamed source that offers it), else None."""
        bounds = getattr(self.source, "gain_bounds", None)
        return None if bounds is None else bounds(state)

    def _range(self, a: int, b: int) -> Tensor:
        return torch.arange(a, b, device=self.device)

    def update(self, state: Tensor, candidate: int) -> Tensor:
        """Coverage after adding ``candidate`` (a new tensor)."""
        return torch.maximum(state, self.row(candidate))

    def evaluate(self, subset: Tensor) -> float:
        """``F(subset)`` for int64 candidate indices ``subset``."""
        if len(subset) == 0:
            return 0.0
        coverage = None
        for a in range(0, len(subset), self._block_rows):
            block = self._rows(subset[a : a + self._block_rows]).amax(0)
            coverage = block if coverage is None else torch.maximum(coverage, block)
        return float(coverage.clamp_(min=0).sum())

    def weights(self, subset: Tensor) -> Tensor:
        """``gamma_j``: number of points whose most similar member of ``subset`` is ``j``.

        Returns float ``[len(subset)]`` in the order of ``subset`` (ties go to the earlier member);
        the weights sum to ``n_points``.
        """
        best, owner = None, None
        for a in range(0, len(subset), self._block_rows):
            # max(0) returns the first maximum inside the block
            values, first = self._rows(subset[a : a + self._block_rows]).max(0)
            if best is None:
                best, owner = values, first
            else:  # strictly better only: ties stay with the earlier block
                better = values > best
                best = torch.where(better, values, best)
                owner = torch.where(better, first + a, owner)
        return torch.bincount(owner, minlength=len(subset)).to(self.dtype)
