"""The facility-location selectors (Sec. 3 and the paper's baselines): LCMat-S, Craig and
AdaCore, each a dissimilarity on :class:`~replay_lcmat.selection.facility.FacilityLocationSelector`;
and :func:`lcmat_s`, LCMat-S as one function."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from replay_lcmat.selection.base import ClassInputs, registered
from replay_lcmat.selection.distances import (
    POINT_BLOCK,
    ClassDistances,
    GradientDistances,
    PreconditionedDistances,
)
from replay_lcmat.selection.facility import FacilityLocationSelector
from replay_lcmat.selection.matching import GAPS, bound_order, joint_order
from replay_lcmat.selection.streamed import stream_block_rows
from replay_lcmat.submodular import FACILITY_PEAK_FACTOR
from replay_lcmat.validation import check_choice, check_number

OBJECTIVES = ("facility", "bound", "joint")  # LCMat-S: Eq. 12, Eq. 7, joint mean matching


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
        blocks = 5 * (POINT_BLOCK + stream_block_rows(n)) * c * (d + 1) * itemsize
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
