"""Facility-location selectors: LCMat-S, Craig and AdaCore differ only in the dissimilarity.

Per class, ``s_ij = C - d_ij`` and ``F(S) = sum_i max(0, max_{j in S} s_ij)`` is maximised greedily
(:mod:`replay_lcmat.submodular`). ``C`` is ``offset``: ``"max"`` takes the largest ``d_ij`` of the
class (nothing is clipped, picks do not depend on ``C``), a float is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from replay_lcmat import submodular
from replay_lcmat.curvature import (
    _check_head_inputs,
    diag_hessian_columns,
    gram_to_distances,
    last_layer_diag_hessians,
    last_layer_grads,
    softmax_residuals,
    top_variance_coordinates,
)
from replay_lcmat.selection.base import ClassInputs, Selector
from replay_lcmat.submodular import (
    OPTIMIZERS,
    FacilityLocation,
    NotEnoughMemoryError,
    facility_location_peak_bytes,
    maximize,
)
from replay_lcmat.validation import check_choice, check_flag, check_number, check_seed

# Rows per block when building an [n, n] dissimilarity: the temporaries are a few [BLOCK_ROWS, n]
# blocks, so the result is the only n x n allocation.
BLOCK_ROWS = 128


def _l1_rows(x: Tensor, x_t: Tensor, start: int, stop: int, out: Tensor, scratch: Tensor) -> Tensor:
    """``out[i, j] = sum_k |x[start + i, k] - x[start + j, k]|``: rows ``start:stop`` of the L1
    distances from their diagonal on (columns ``start:``); ``k`` is summed in order, from 0.

    One subtract, abs and add over the block per coordinate (torch has no fused kernel for it).
    ``x_t`` is ``x.T.contiguous()``; ``out`` and ``scratch`` are ``[stop - start, n - start]``.
    """
    out.zero_()
    columns = x[start:stop].T.unsqueeze(2).unbind(0)  # K views [rows, 1], made in one call
    rows = x_t[:, None, start:].unbind(0)  # K views [1, n - start]
    for column, row in zip(columns, rows, strict=True):
        torch.sub(column, row, out=scratch)
        out.add_(scratch.abs_())
    return out


def _mirror_rows(out: Tensor, start: int, stop: int) -> None:
    """Copy the block rows ``start:stop`` above the diagonal into the columns below it.

    The diagonal block is made exactly symmetric from its upper triangle (adding zeros: exact).
    """
    square = out[start:stop, start:stop]
    square.copy_(torch.triu(square).add_(torch.triu(square, 1).T))
    out[stop:, start:stop] = out[start:stop, stop:].T


def l1_distances(x: Tensor, *, block_rows: int = BLOCK_ROWS) -> Tensor:
    """``||x_i - x_j||_1`` for all pairs, ``[n, n]``; bit-identical to ``torch.cdist(x, x, p=1)``
    on CPU (on CUDA cdist reduces in another order: equal up to float rounding).

    Exact: like the CPU kernel of ``torch.cdist``, each pair sums ``|x_ik - x_jk|`` over
    ``k = 0, 1, ...`` in order starting from 0, and ``|a - b| = |b - a|`` in floating point, so
    only blocks of rows on and above the diagonal are computed and the rest is mirrored (half
    the work of the full matrix). Temporaries: two ``[block_rows, n]`` blocks.

    Args:
        x: ``[n, k]``.
    """
    n = x.shape[0]
    out = x.new_empty(n, n)
    x_t = x.T.contiguous()
    scratch = x.new_empty(min(block_rows, n) * n)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        diff = scratch[: (stop - start) * (n - start)].view(stop - start, n - start)
        _l1_rows(x, x_t, start, stop, out[start:stop, start:], diff)
        _mirror_rows(out, start, stop)
    return out


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def lcmat_dissimilarity(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    *,
    eps: float,
    k_dims: int,
    block_rows: int = BLOCK_ROWS,
) -> Tensor:
    """``d_ij = ||g_i - g_j||_2 + eps ||lambda_{i,K} - lambda_{j,K}||_1`` of one class, ``[n, n]``.

    ``g`` are last-layer gradients (Gram identity, never built), ``lambda_K`` the ``k_dims``
    diagonal-Hessian coordinates of largest variance over the class (from moments).

    Built in blocks of ``block_rows`` rows on and above the diagonal, the rest mirrored: about
    half the arithmetic of the full matrix, exactly symmetric, zero diagonal; the temporaries
    are a few ``[block_rows, n]`` blocks. Per entry the operations are those of
    :func:`~replay_lcmat.curvature.pairwise_grad_distances` plus ``eps`` times
    :func:`l1_distances` (same values up to the rounding of the blocked matrix products).
    """
    _check_head_inputs(features, logits)
    n = features.shape[0]
    lam = lam_t = scratch = None
    if eps != 0:  # first: its float64 [n, d] moments are freed before the [n, n] result exists
        coords = top_variance_coordinates(features, logits, k_dims)
        lam = diag_hessian_columns(features, logits, coords)
        lam_t = lam.T.contiguous()
    e = softmax_residuals(logits, labels)
    out = features.new_empty(n, n)
    # Gram g_i . g_j = (e_i . e_j)(h_i . h_j + 1) on and above the diagonal; twice as many rows
    # per matrix product (closer to its peak), as much temporary memory as the L1 pass below
    for start in range(0, n, 2 * block_rows):
        stop = min(start + 2 * block_rows, n)
        upper = out[start:stop, start:]
        torch.mm(features[start:stop], features[start:].T, out=upper)
        upper.add_(1.0).mul_(e[start:stop] @ e[start:].T)
    sq_norms = out.diagonal().clone()
    if lam is not None:
        scratch = features.new_empty(2, min(block_rows, n) * n)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        upper = out[start:stop, start:]  # ||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij, clamped at 0
        upper.mul_(-2.0).add_(sq_norms[start:]).add_(sq_norms[start:stop, None])
        upper.clamp_(min=0.0).sqrt_()
        upper[:, : stop - start].fill_diagonal_(0.0)
        if lam is not None:
            size = (stop - start) * (n - start)
            l1, diff = (part[:size].view(stop - start, n - start) for part in scratch)
            upper.add_(_l1_rows(lam, lam_t, start, stop, l1, diff), alpha=eps)
        _mirror_rows(out, start, stop)
    return out


def preconditioned_grad_distances(
    features: Tensor, logits: Tensor, labels: Tensor, *, damping: float
) -> Tensor:
    """``||u_i - u_j||_2`` with ``u = g / (lambda + damping)`` (AdaCore), ``[n, n]``.

    The element-wise preconditioning does not factorise, so ``u`` is built: ``[n, c*(d+1)]``.
    """
    u = last_layer_grads(features, logits, labels)
    u.div_(last_layer_diag_hessians(features, logits).add_(damping))
    return gram_to_distances(u @ u.T)


class FacilityLocationSelector(Selector):
    """Shared greedy facility-location machinery; subclasses define :meth:`dissimilarity`.

    Args:
        offset: the constant C of ``s = C - d``: ``"max"`` (largest d of the class) or a float.
        greedy: ``"lazy"`` (default), ``"naive"`` (same picks) or ``"stochastic"``.
        weighted: return ``gamma_j`` (points represented by pick j) as weights; default True
            for Craig / AdaCore, False for LCMat-S.
        stochastic_epsilon: accuracy of stochastic greedy; seed: its random draws.
    """

    needs = ("features", "logits")
    takes_seed = True  # used by greedy="stochastic" only
    always_weighted = True

    def __init__(
        self,
        *,
        offset: float | str = "max",
        greedy: str = "lazy",
        weighted: bool | None = None,
        stochastic_epsilon: float = 0.1,
        seed: int = 0,
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

    @property
    def uses_seed(self) -> bool:
        return self.greedy == "stochastic"

    def dissimilarity(self, inputs: ClassInputs) -> Tensor:
        """``[n_c, n_c]`` non-negative dissimilarities of the class's samples."""
        raise NotImplementedError

    def start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def peak_bytes(self, n: int, d: int, c: int, itemsize: int) -> int:
        """Estimated peak memory of :meth:`select_class` on a class of ``n`` samples."""
        return facility_location_peak_bytes(n, itemsize)

    def check_memory(self, inputs: ClassInputs) -> None:
        """Refuse a class whose ``[n, n]`` similarity would not fit, before building it.

        Raises:
            NotEnoughMemoryError: the estimated peak (:meth:`peak_bytes`) exceeds the memory
                available on the inputs' device; nothing is checked when that is unknown.
        """
        (n, d), c = inputs.features.shape, inputs.logits.shape[1]
        itemsize, device = inputs.features.element_size(), inputs.features.device
        needed = self.peak_bytes(n, d, c, itemsize)
        available = submodular.available_memory_bytes(device)
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
        raise NotEnoughMemoryError(
            f"{self.name} on class {inputs.label} ({n} samples) needs about {_size(needed)} at "
            f"its peak (the {n} x {n} {inputs.features.dtype} similarity and temporaries) "
            f"but only {_size(available)} is available on {device}. Split the class into "
            f"{split} and select from each with a share of the budget (e.g. several calls with "
            "the same fraction on disjoint parts), or use the streamed similarity once "
            f"available, which avoids the n x n matrix.{halve}"
        )

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        self.check_memory(inputs)
        sim = self.dissimilarity(inputs)
        # One pass that C = "max" needs anyway doubles as the finiteness check of the matrix
        # (min and max propagate NaN): no n x n mask. The inputs were checked finite already,
        # so a non-finite d can only be an overflow.
        low, high = torch.aminmax(sim)
        c = high if self.offset == "max" else sim.new_tensor(float(self.offset))
        extreme = max(abs(float(c - low)), abs(float(c - high)))
        if not (math.isfinite(float(low)) and math.isfinite(float(high))) or (
            len(sim) * extreme >= torch.finfo(sim.dtype).max
        ):
            raise ValueError(
                f"{self.name} on class {inputs.label}: the {sim.dtype} dissimilarities "
                f"(range [{float(low):.3g}, {float(high):.3g}]) or their sums over "
                f"{len(sim)} samples overflow; the inputs are finite but too large. Scale the "
                "features or logits down, or pass float64 inputs."
            )
        torch.sub(c, sim, out=sim)  # s = C - d, in place
        fn = FacilityLocation(sim, check_finite=False)  # checked above
        result = maximize(
            fn,
            budget,
            optimizer=self.greedy,
            epsilon=self.stochastic_epsilon,
            generator=self._generator,
        )
        weights = fn.weights(result.ranking.to(sim.device)) if self.weighted else None
        return result.ranking, weights


class LCMatS(FacilityLocationSelector):
    """LCMat-S: facility location on gradient distances plus a Hessian L1 term (curvature)."""

    name = "lcmat-s"
    paper = "Shin et al. 2023, Loss-Curvature Matching for Dataset Selection and Condensation"
    always_weighted = False

    def __init__(self, *, eps: float = 0.01, k_dims: int = 100, **options) -> None:
        super().__init__(**options)
        self.eps = check_number(self.name, "eps", eps, minimum=0)
        self.k_dims = check_number(self.name, "k_dims", k_dims, integer=True, minimum=1)

    def dissimilarity(self, inputs: ClassInputs) -> Tensor:
        return lcmat_dissimilarity(
            inputs.features, inputs.logits, inputs.labels, eps=self.eps, k_dims=self.k_dims
        )


class Craig(FacilityLocationSelector):
    """Craig: facility location on last-layer gradient distances (LCMat-S with eps = 0)."""

    name = "craig"
    paper = "Mirzasoleiman et al. 2020, Coresets for Data-efficient Training of ML Models"

    def dissimilarity(self, inputs: ClassInputs) -> Tensor:
        # LCMat-S's builder with eps = 0: the very same distances (eps = 0 gives Craig exactly)
        return lcmat_dissimilarity(inputs.features, inputs.logits, inputs.labels, eps=0, k_dims=1)


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

    def dissimilarity(self, inputs: ClassInputs) -> Tensor:
        return preconditioned_grad_distances(
            inputs.features, inputs.logits, inputs.labels, damping=self.damping
        )


def lcmat_s(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    per_class: int | Mapping[int, int],
    *,
    eps: float = 0.01,
    k_dims: int = 100,
    offset: float | str = "max",
    greedy: str = "lazy",
    take_all: bool = False,
) -> Tensor:
    """LCMat-S selection (spec section 3), class-balanced.

    Args:
        features: penultimate features ``[n, d]`` of the selection model.
        logits: its logits ``[n, c]``.
        labels: int64 ``[n]``.
        per_class: picks per class (int), or a mapping ``label -> picks``.
        eps: weight of the Hessian L1 term (the spec's rho / 2); 0 gives Craig.
        k_dims: number of highest-variance diagonal-Hessian coordinates per class.
        offset: the constant C of ``s = C - d``: ``"max"`` or a float.
        greedy: ``"lazy"`` (default), ``"naive"`` (same picks, slower) or ``"stochastic"``.
        take_all: a budget larger than its class keeps the whole class instead of raising.

    Returns:
        int64 ``[m]`` indices: classes ascending, each in greedy pick order. Computed in the
        dtype of the inputs (float64 stays float64).
    """
    selector = LCMatS(eps=eps, k_dims=k_dims, offset=offset, greedy=greedy)
    return selector.select(
        features=features, logits=logits, labels=labels, per_class=per_class, take_all=take_all
    ).indices
