"""The facility-location machinery of LCMat-S, Craig and AdaCore, which differ only in the
dissimilarity (:mod:`replay_lcmat.selection.facility_selectors`).

Per class, ``s_ij = C - d_ij`` and ``F(S) = sum_i max(0, max_{j in S} s_ij)`` is maximised greedily
(:mod:`replay_lcmat.submodular`). ``C`` is ``offset``: ``"max"`` takes the largest ``d_ij`` of the
class (nothing is clipped, picks do not depend on ``C``), a float is used as is.

``d`` is held whole (dense, ``n x n``) or computed row by row when needed (streamed,
:class:`~replay_lcmat.selection.streamed.StreamedSimilarity`, memory ``O(n (c + d + K))``).
Every entry comes from exact inner products on the CPU
(:mod:`replay_lcmat.selection.products`), a function of its two samples only, so both paths
pick the same samples with the same gains and weights, bit for bit.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from replay_lcmat import resources
from replay_lcmat.greedy import OPTIMIZERS, maximize
from replay_lcmat.selection.base import ClassInputs, Selector
from replay_lcmat.selection.distances import (
    ClassDistances,
)
from replay_lcmat.selection.products import PRODUCTS
from replay_lcmat.selection.streamed import (
    StreamedSimilarity,
    format_bytes,
    guess_sample_rows,
    offset_and_check,
    stream_block_rows,
)
from replay_lcmat.submodular import (
    FacilityLocation,
    facility_location_peak_bytes,
    streamed_peak_bytes,
)
from replay_lcmat.validation import check_choice, check_flag, check_number, check_seed

SIMILARITIES = ("auto", "dense", "streamed")


class FacilityLocationSelector(Selector):
    """Shared greedy facility-location machinery; subclasses define :meth:`distances`.

    Args:
        offset: the constant C of ``s = C - d``: ``"max"`` (largest d of the class) or a float.
        greedy: ``"lazy"`` (default), ``"naive"`` (same picks) or ``"stochastic"``.
        weighted: return ``gamma_j`` (points represented by pick j) as weights; default True
            for Craig / AdaCore, False for LCMat-S.
        stochastic_epsilon: accuracy of stochastic greedy; seed: its random draws.
        similarity: how the ``[n, n]`` similarity of a class is held. ``"dense"``: built whole
            (about :func:`~replay_lcmat.submodular.facility_location_peak_bytes`, 1.2 n^2
            itemsize bytes; refused with :class:`resources.NotEnoughMemoryError` when that does not fit).
            ``"streamed"``: never built; a row costs ``O(n (c + d + K))`` (AdaCore:
            ``O(n c d)``) and memory stays ``O(n (c + d + K))`` plus blocks of rows. One pass
            over all rows makes ``C = "max"``, one more the first gains, then the lazy greedy
            recomputes single rows (kept in a small cache). The same picks, gains and weights
            as ``"dense"``, bit for bit. ``"auto"`` (default): dense where its estimate fits in
            the available memory (it is the faster path at any size that fits), else streamed.
        partitions: ``p >= 1``. ``1`` (default): the exact greedy above. ``p > 1``: the
            two-round distributed greedy (GreeDi, Mirzasoleiman et al. 2013), an
            APPROXIMATION: the class is split into ``p`` parts by position (part ``r`` holds
            the class's samples ``r, r + p, r + 2p, ...`` in index order), each part picks the
            class budget greedily on its own samples, then a greedy over the union of those
            picks (candidates) covering the whole class gives the answer. A ``p`` larger than
            the class is lowered to the class size with a warning.
    """

    needs = ("features", "logits")
    always_weighted = True

    def __init__(
        self,
        *,
        offset: float | str = "max",
        greedy: str = "lazy",
        weighted: bool | None = None,
        stochastic_epsilon: float = 0.1,
        seed: int = 0,
        similarity: str = "auto",
        partitions: int = 1,
        products: str = "auto",
    ) -> None:
        self.offset = check_number(self.name, "offset", offset, words=("max",))
        self.greedy = check_choice(self.name, "greedy", greedy, OPTIMIZERS)
        weighted = check_flag(self.name, "weighted", weighted, allow_none=True)
        self.weighted = self.always_weighted if weighted is None else weighted
        self.stochastic_epsilon = check_number(
            self.name,
            "stochastic_epsilon",
            stochastic_epsilon,
            exclusive_minimum=0,
            exclusive_maximum=1,
        )
        self.seed = check_seed(self.name, seed)
        self.similarity = check_choice(self.name, "similarity", similarity, SIMILARITIES)
        self.partitions = check_number(self.name, "partitions", partitions, integer=True, minimum=1)
        self.products = check_choice(self.name, "products", products, PRODUCTS)

    def distances(self, inputs: ClassInputs) -> ClassDistances:
        """The class's dissimilarity rows (nothing ``n x n`` is built)."""
        raise NotImplementedError

    def dissimilarity(self, inputs: ClassInputs) -> Tensor:
        """``[n_c, n_c]`` non-negative dissimilarities of the class's samples (the dense path)."""
        return self.distances(inputs).dense()

    def start_class(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        """Estimated peak memory of the dense path on a class of ``n`` samples."""
        return facility_location_peak_bytes(n, itemsize)

    def streamed_peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        """Estimated peak memory of the streamed path: ``O(n (c + d + K))``, no ``n^2`` term."""
        per_point = self._per_point(d, c) + guess_sample_rows(n)
        return streamed_peak_bytes(n, per_point, stream_block_rows(n), itemsize)

    def _per_point(self, d: int, c: int) -> int:
        """Values kept per sample by the streamed path: the inputs, their float64 slices (two
        values of float32 each), a float32 copy of the features' slice (the bound passes'
        product), per-sample vectors."""
        return 3 * (d + c) + d + 8

    def _shape(self, inputs: ClassInputs) -> tuple[int, int, int, int]:
        (n, d), c = inputs.features.shape, inputs.logits.shape[1]
        return n, d, c, inputs.features.element_size()

    def check_memory(self, inputs: ClassInputs, *, streamed_too: bool = False) -> None:
        """Refuse a class whose ``[n, n]`` similarity would not fit, before building it.

        Raises:
            resources.NotEnoughMemoryError: the estimated peak (:meth:`peak_bytes`) exceeds the memory
                available on the inputs' device; nothing is checked when that is unknown.
                ``streamed_too``: the message also says the streamed path does not fit.
        """
        n, d, c, itemsize = self._shape(inputs)
        device = inputs.features.device
        needed = self.peak_bytes(n, d, c, itemsize)
        available = resources.available_memory_bytes(device)
        if available is None or needed <= available:
            return
        low, high = 0, n  # the largest class part that fits: peak_bytes(low) <= available
        while low < high:
            mid = (low + high + 1) // 2
            if self.peak_bytes(mid, d, c, itemsize) <= available:
                low = mid
            else:
                high = mid - 1
        split = (
            f"parts of at most {low} samples" if low > 1 else "smaller parts after freeing memory"
        )
        halve = " float32 inputs would halve the estimate." if itemsize > 4 else ""
        streamed = format_bytes(self.streamed_peak_bytes(n, d, c, itemsize))
        remedy = (
            f" The streamed similarity (about {streamed}) does not fit either."
            if streamed_too
            else f' Or pass similarity="streamed": the streamed similarity avoids the n x n '
            f"matrix (about {streamed} here)."
        )
        raise resources.NotEnoughMemoryError(
            f"{self.name} on class {inputs.label} ({n} samples) needs about {format_bytes(needed)} at "
            f"its peak (the {n} x {n} {inputs.features.dtype} similarity and temporaries) "
            f"but only {format_bytes(available)} is available on {device} "
            f"({resources.budget_note(device)}). Split the class into "
            f"{split} and select from each with a share of the budget (e.g. several calls with "
            f"the same fraction on disjoint parts), or use partitions=p.{remedy}{halve}"
        )

    def _streamed_fits(self, inputs: ClassInputs) -> bool:
        available = resources.available_memory_bytes(inputs.features.device)
        return available is None or self.streamed_peak_bytes(*self._shape(inputs)) <= available

    def path(self, inputs: ClassInputs) -> str:
        """``"dense"`` or ``"streamed"``: what :meth:`select_class` runs on this class.

        Raises:
            resources.NotEnoughMemoryError: the chosen path (``"auto"``: both) does not fit.
        """
        if self.similarity == "dense":
            self.check_memory(inputs)
            return "dense"
        if self.similarity == "auto":
            n, d, c, itemsize = self._shape(inputs)
            available = resources.available_memory_bytes(inputs.features.device)
            if available is None or self.peak_bytes(n, d, c, itemsize) <= available:
                return "dense"
            if not self._streamed_fits(inputs):
                self.check_memory(inputs, streamed_too=True)
            return "streamed"
        if not self._streamed_fits(inputs):
            n, d, c, itemsize = self._shape(inputs)
            available = resources.available_memory_bytes(inputs.features.device)
            raise resources.NotEnoughMemoryError(
                f"{self.name} on class {inputs.label} ({n} samples): the streamed similarity "
                f"needs about {format_bytes(self.streamed_peak_bytes(n, d, c, itemsize))} (inputs and "
                f"blocks of rows) but only {format_bytes(available)} is available on "
                f"{inputs.features.device} ({resources.budget_note(inputs.features.device)}). Split the class into parts, or free memory."
            )
        return "streamed"

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        if self.partitions > 1:
            return self._select_partitioned(inputs, budget)
        return self._select_exact(inputs, budget, self.weighted)

    def _select_exact(
        self, inputs: ClassInputs, budget: int, weighted: bool
    ) -> tuple[Tensor, Tensor | None]:
        if self.path(inputs) == "streamed":
            return self._select_streamed(inputs, budget, weighted)
        try:
            sim = self.dissimilarity(inputs)
        except (MemoryError, RuntimeError) as err:
            # the estimate fitted but the allocator said no (other processes, fragmentation)
            if self.similarity != "auto" or not resources.is_allocation_failure(err):
                raise
            warnings.warn(
                f"{self.name} on class {inputs.label}: the dense similarity could not be "
                f"allocated ({str(err).splitlines()[0][:200]}); selecting with the streamed "
                f'similarity instead (same picks, slower). Pass similarity="streamed" to skip '
                f"the attempt.",
                stacklevel=4,
            )
            return self._select_streamed(inputs, budget, weighted)
        # One pass that C = "max" needs anyway doubles as the finiteness check of the matrix
        # (min and max propagate NaN): no n x n mask.
        low, high = torch.aminmax(sim)
        c = offset_and_check(self.name, inputs.label, self.offset, low, high, len(sim))
        torch.sub(c, sim, out=sim)  # s = C - d, in place
        return self._greedy(FacilityLocation(sim, check_finite=False), budget, weighted)

    def _select_streamed(
        self, inputs: ClassInputs, budget: int, weighted: bool
    ) -> tuple[Tensor, Tensor | None]:
        source = StreamedSimilarity(
            self.distances(inputs), self.offset, owner=(self.name, inputs.label)
        )
        return self._greedy(FacilityLocation(source), budget, weighted)

    def _greedy(
        self, fn: FacilityLocation, budget: int, weighted: bool
    ) -> tuple[Tensor, Tensor | None]:
        result = maximize(
            fn,
            budget,
            optimizer=self.greedy,
            epsilon=self.stochastic_epsilon,
            generator=self._generator,
        )
        weights = fn.weights(result.ranking.to(fn.device)) if weighted else None
        return result.ranking, weights

    def _select_partitioned(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        n = len(inputs.labels)
        p = self.partitions
        if p > n:
            warnings.warn(
                f"{self.name} on class {inputs.label}: partitions={p} is more than the class's "
                f"{n} samples; using {n} parts of one sample.",
                stacklevel=4,
            )
            p = n
        device = inputs.labels.device
        picks = []
        for r in range(p):  # round 1: each part on its own samples, the class budget
            part = torch.arange(r, n, p, device=device)
            sub = ClassInputs(
                label=inputs.label,
                features=inputs.features[part],
                logits=inputs.logits[part],
                labels=inputs.labels[part],
            )
            local, _ = self._select_exact(sub, min(budget, len(part)), weighted=False)
            picks.append(part[local.to(device)])
        union = torch.cat(picks).sort().values
        # round 2: greedy over the union, covering every sample of the class
        source = StreamedSimilarity(
            self.distances(inputs), self.offset, candidates=union, owner=(self.name, inputs.label)
        )
        ranking, weights = self._greedy(FacilityLocation(source), budget, self.weighted)
        return union[ranking.to(device)], weights
