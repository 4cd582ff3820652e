"""Facility-location selectors: LCMat-S, Craig and AdaCore differ only in the dissimilarity.

Per class, ``s_ij = C - d_ij`` and ``F(S) = sum_i max(0, max_{j in S} s_ij)`` is maximised greedily
(:mod:`replay_lcmat.submodular`). ``C`` is ``offset``: ``"max"`` takes the largest ``d_ij`` of the
class (nothing is clipped, picks do not depend on ``C``), a float is used as is.

``d`` is held whole (dense, ``n x n``) or computed row by row when needed (streamed,
:class:`StreamedSimilarity`, memory ``O(n (c + d + K))``). Every entry comes from exact
inner products (:func:`exact_split`, :class:`ClassDistances`), a function of its two samples
only, so both paths pick the same samples with the same gains and weights, bit for bit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from replay_lcmat import resources
from replay_lcmat.selection.base import ClassInputs, Selector, registered
from replay_lcmat.selection.distances import (
    POINT_BLOCK,
    ClassDistances,
    GradientDistances,
    PreconditionedDistances,
)
from replay_lcmat.selection.matching import GAPS, bound_order, joint_order
from replay_lcmat.selection.products import PRODUCTS
from replay_lcmat.selection.streamed import (
    STREAM_BLOCK_ROWS,
    StreamedSimilarity,
    format_bytes,
    offset_and_check,
)
from replay_lcmat.submodular import (
    FACILITY_PEAK_FACTOR,
    OPTIMIZERS,
    FacilityLocation,
    facility_location_peak_bytes,
    maximize,
    streamed_peak_bytes,
)
from replay_lcmat.validation import check_choice, check_flag, check_number, check_seed

SIMILARITIES = ("auto", "dense", "streamed")
OBJECTIVES = ("facility", "bound", "joint")


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
        return streamed_peak_bytes(n, self._per_point(d, c), STREAM_BLOCK_ROWS, itemsize)

    def _per_point(self, d: int, c: int) -> int:
        """Values kept per sample by the streamed path: the inputs, their float64 slices (two
        values of float32 each), per-sample vectors."""
        return 3 * (d + c) + 8

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


@registered
class LCMatS(FacilityLocationSelector):
    """LCMat-S: a subset whose loss curvature matches the class's (Sec. 3).

    ``objective`` says how the match is sought:

    - ``"facility"`` (default, the paper's Eq. 12): facility location on ``d_ij = ||g_i - g_j||_2
      + eps ||lambda_i - lambda_j||_1`` (top-``k_dims`` Hessian coordinates). ``weighted=True``
      returns each pick's cluster size ``gamma_j`` (they sum to the class size).
    - ``"bound"``: greedy minimisation of the bound itself for the UNWEIGHTED subset,
      ``||mean_T g - mean_S g||_2 + eps * gap`` with ``gap`` the max (Eq. 7) or ``"l1"`` norm of
      the mean diagonal-Hessian difference (:func:`~replay_lcmat.selection.matching.bound_order`).
    - ``"joint"``: greedy mean matching of features, gradients and curvature weighted
      ``1 : gradient_weight : curvature_weight`` after scaling each block to unit RMS norm; both
      weights 0 is herding (:func:`~replay_lcmat.selection.matching.joint_order`).

    The options of :class:`FacilityLocationSelector` (offset, greedy, similarity, partitions,
    weighted) apply to ``"facility"`` only; the other two are unweighted by construction.
    """

    name = "lcmat-s"
    paper = "Shin et al. 2023, Loss-Curvature Matching for Dataset Selection and Condensation"
    always_weighted = False

    def __init__(
        self,
        *,
        eps: float = 0.01,
        k_dims: int = 100,
        objective: str = "facility",
        gap: str = "max",
        gradient_weight: float = 1.0,
        curvature_weight: float = 0.5,
        **options,
    ) -> None:
        super().__init__(**options)
        self.eps = check_number(self.name, "eps", eps, minimum=0)
        self.k_dims = check_number(self.name, "k_dims", k_dims, integer=True, minimum=1)
        self.objective = check_choice(self.name, "objective", objective, OBJECTIVES)
        self.gap = check_choice(self.name, "gap", gap, GAPS)
        self.gradient_weight = check_number(
            self.name, "gradient_weight", gradient_weight, minimum=0
        )
        self.curvature_weight = check_number(
            self.name, "curvature_weight", curvature_weight, minimum=0
        )
        if self.objective != "facility" and self.weighted:
            raise ValueError(
                f"lcmat-s: weighted=True applies to objective='facility' (cluster sizes); the "
                f"{self.objective!r} objective matches the unweighted subset. Drop weighted=True."
            )

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        if self.objective == "facility":
            return super().select_class(inputs, budget)
        if self.objective == "bound":
            options = {"eps": self.eps, "gap": self.gap}
            order_of = bound_order
        else:
            options = {
                "gradient_weight": self.gradient_weight,
                "curvature_weight": self.curvature_weight,
            }
            order_of = joint_order
        part = (inputs.features, inputs.logits, inputs.labels)
        return order_of(*part, budget, k_dims=self.k_dims, **options), None  # unweighted

    def _per_point(self, d: int, c: int) -> int:
        k = min(self.k_dims, c * (d + 1)) if self.eps != 0 else 0
        return super()._per_point(d, c) + 2 * k

    def streamed_peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        # plus the float64 moments of the Hessian variances (two [n, d] float64 arrays)
        moments = math.ceil(FACILITY_PEAK_FACTOR * 16 * n * d) if self.eps != 0 else 0
        return super().streamed_peak_bytes(n, d, c, itemsize) + moments

    def distances(self, inputs: ClassInputs) -> ClassDistances:
        return GradientDistances(
            inputs.features,
            inputs.logits,
            inputs.labels,
            eps=self.eps,
            k_dims=self.k_dims,
            products=self.products,
        )


@registered
class Craig(FacilityLocationSelector):
    """Craig: facility location on last-layer gradient distances (LCMat-S with eps = 0)."""

    name = "craig"
    paper = "Mirzasoleiman et al. 2020, Coresets for Data-efficient Training of ML Models"

    def distances(self, inputs: ClassInputs) -> ClassDistances:
        # LCMat-S's distances with eps = 0: the very same values (eps = 0 gives Craig exactly)
        return GradientDistances(
            inputs.features, inputs.logits, inputs.labels, eps=0, k_dims=1, products=self.products
        )


@registered
class AdaCore(FacilityLocationSelector):
    """AdaCore: facility location on Hessian-preconditioned last-layer gradients."""

    name = "adacore"
    paper = "Pooladzandi et al. 2022, Adaptive Second Order Coresets for Data-efficient ML"

    def __init__(self, *, damping: float = 1e-3, **options) -> None:
        super().__init__(**options)
        # > 0 keeps g / (lambda + damping) finite
        self.damping = check_number(self.name, "damping", damping, exclusive_minimum=0)

    def peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        # The [n, c*(d+1)] gradients, the Hessians and their product temporary come first.
        gradients = 3 * n * c * (d + 1) * itemsize
        return max(super().peak_bytes(n, d, c, itemsize), gradients)

    def streamed_peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        # plus blocks of preconditioned gradients (built, split to float64): a point block and
        # a block of rows, about five copies each
        blocks = 5 * (POINT_BLOCK + STREAM_BLOCK_ROWS) * c * (d + 1) * itemsize
        return super().streamed_peak_bytes(n, d, c, itemsize) + blocks

    def distances(self, inputs: ClassInputs) -> ClassDistances:
        return PreconditionedDistances(
            inputs.features,
            inputs.logits,
            inputs.labels,
            damping=self.damping,
            products=self.products,
        )


def lcmat_s(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    per_class: int | Mapping[int, int] | None = None,
    *,
    fraction: float | None = None,
    eps: float = 0.01,
    k_dims: int = 100,
    offset: float | str = "max",
    greedy: str = "lazy",
    similarity: str = "auto",
    partitions: int = 1,
    products: str = "auto",
) -> Tensor:
    """LCMat-S selection (Sec. 3), class-balanced.

    Args:
        features: penultimate features ``[n, d]`` of the selection model.
        logits: its logits ``[n, c]``.
        labels: int64 ``[n]``.
        per_class / fraction: the budget, exactly one of the two: picks per class (int) or a
            mapping ``label -> picks``, or a share of each class (as
            :meth:`replay_lcmat.selection.Selector.select`).
        eps: weight of the Hessian L1 term (the paper's rho / 2); 0 gives Craig.
        k_dims: number of highest-variance diagonal-Hessian coordinates per class.
        offset: the constant C of ``s = C - d``: ``"max"`` or a float.
        greedy: ``"lazy"`` (default), ``"naive"`` (same picks, slower) or ``"stochastic"``.
        similarity / partitions / products: see :class:`FacilityLocationSelector`
            (``"streamed"``: no ``n x n`` matrix, same picks; ``partitions > 1``: approximate;
            ``products="auto"``: exact float64 products on the CPU, float32 on GPUs).

    Returns:
        int64 ``[m]`` indices: classes ascending, each in greedy pick order. Computed in the
        dtype of the inputs (float64 stays float64).
    """
    selector = LCMatS(
        eps=eps,
        k_dims=k_dims,
        offset=offset,
        greedy=greedy,
        similarity=similarity,
        partitions=partitions,
        products=products,
    )
    return selector.select(
        features=features, logits=logits, labels=labels, per_class=per_class, fraction=fraction
    ).indices
