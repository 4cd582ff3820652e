"""Class dissimilarities of the facility-location selectors, dense or a row at a time.

``d_ij`` of LCMat-S (last-layer gradient distance plus ``eps`` times the L1 distance of the
top-``K`` diagonal-Hessian coordinates), Craig (gradient distance) and AdaCore (preconditioned
gradient distance) is held whole (``n x n``, :meth:`ClassDistances.dense`) or computed a block
of rows at a time (:meth:`ClassDistances.rows`, for
:class:`~replay_lcmat.selection.streamed.StreamedSimilarity`, memory ``O(n (c + d + K))``).
Every entry comes from exact inner products (:mod:`replay_lcmat.selection.products`) on the
CPU, a function of its two samples only, so both give the same numbers bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from replay_lcmat.curvature import (
    _check_head_inputs,
    diag_hessian_columns,
    last_layer_diag_hessians,
    last_layer_grads,
    softmax_residuals,
    top_variance_coordinates,
)
from replay_lcmat.kernels import (
    compiled_available,
    grad_distances_into,
    grad_lower_bounds_into,
    l1_block,
    l1_rows,
    mirror_block,
)
from replay_lcmat.selection.products import (
    _take,
    exact_dots,
    exact_self_dots,
    full_float32_products,
    resolve_products,
    split_rows,
)

# Rows per block when building an [n, n] dissimilarity: the temporaries are a few [BLOCK_ROWS, n]
# blocks, so the result is the only n x n allocation.
BLOCK_ROWS = 128


def _mirror_rows(out: Tensor, start: int, stop: int) -> None:
    """Copy the block rows ``start:stop`` above the diagonal into the columns below it.

    The diagonal block is made exactly symmetric from its upper triangle (adding zeros: exact).
    """
    square = out[start:stop, start:stop]
    square.copy_(torch.triu(square).add_(torch.triu(square, 1).T))
    mirror_block(out, start, stop)


def l1_distances(x: Tensor, *, block_rows: int = BLOCK_ROWS) -> Tensor:
    """``||x_i - x_j||_1`` for all pairs, ``[n, n]``; bit-identical to ``torch.cdist(x, x, p=1)``
    on CPU (on CUDA cdist reduces in another order: equal up to float rounding).

    Exact: like the CPU kernel of ``torch.cdist``, each pair sums ``|x_ik - x_jk|`` over
    ``k = 0, 1, ...`` in order starting from 0, and ``|a - b| = |b - a|`` in floating point, so
    only blocks of rows on and above the diagonal are computed and the rest is mirrored (half
    the work of the full matrix; :mod:`~replay_lcmat.selection.l1`).

    Args:
        x: ``[n, k]``.
    """
    n = x.shape[0]
    out = x.new_empty(n, n)
    x_t = x.T.contiguous()
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        l1_block(x, x_t, start, stop, out[start:stop, start:])
        _mirror_rows(out, start, stop)
    return out


# Points per block when AdaCore's preconditioned gradients are built for a streamed row.
POINT_BLOCK = 512


def _grad_distances(gram: Tensor, sq_rows: Tensor, sq_cols: Tensor) -> Tensor:
    """In place, float64: ``sqrt(max(0, (G_jj + G_ii) - 2 G_ji))`` (symmetric in i, j)."""
    gram.mul_(-2.0).add_(sq_rows[:, None] + sq_cols[None, :])
    return gram.clamp_(min=0.0).sqrt_()


class ClassDistances:
    """Rows ``d[j, :]`` of one class's dissimilarity, on demand, in ``O(n (c + d + K))`` memory.

    Subclasses define :meth:`_grad` (the float64 distances of rows ``ids`` to the points
    ``start:``, from exact inner products) and may add LCMat-S's Hessian L1 term (``lam``).
    Every entry is a function of its two samples only, so :meth:`rows` (streamed) and
    :meth:`dense` (the ``[n, n]`` matrix, upper blocks mirrored) agree bit for bit.

    Attributes:
        n: samples; dtype: the inputs' dtype (the result's); lam, lam_t: ``[n, K]`` and its
            transpose, or None; eps: the L1 weight.
    """

    n: int
    dtype: torch.dtype
    device: torch.device
    lam: Tensor | None = None
    lam_t: Tensor | None = None
    eps: float = 0.0
    block_rows: int = BLOCK_ROWS
    _buffers: dict[tuple[str, torch.dtype], Tensor] | None = None

    def _scratch(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
        """A ``[rows, cols]`` temporary reused from call to call (grown when too small): the
        blocks' products and L1 terms go into memory already mapped, not into fresh pages of a
        new allocation each time (tens of MB per block at large ``n``)."""
        if self._buffers is None:
            self._buffers = {}
        flat = self._buffers.get((name, dtype))
        if flat is None or flat.numel() < rows * cols:
            flat = self._buffers[name, dtype] = torch.empty(
                rows * cols, dtype=dtype, device=self.device
            )
        return flat[: rows * cols].view(rows, cols)

    def _grad(self, ids: Tensor, start: int = 0) -> Tensor:
        """Float64 ``[len(ids), n - start]`` distances of rows ``ids`` to points ``start:``."""
        raise NotImplementedError

    def _grad_into(self, ids: Tensor, start: int, out: Tensor) -> Tensor:
        """``out`` ``[len(ids), n - start]`` (inputs' dtype) = :meth:`_grad` rounded."""
        return out.copy_(self._grad(ids, start))

    def rows(self, ids: Tensor) -> Tensor:
        """``d[ids]``, ``[len(ids), n]`` in the inputs' dtype; a row costs ``O(n (c + d + K))``."""
        ids = ids.to(self.device)
        out = self._grad_into(
            ids, 0, torch.empty(len(ids), self.n, dtype=self.dtype, device=self.device)
        )
        out[torch.arange(len(ids), device=self.device), ids] = 0.0
        if self.lam is not None:
            l1 = self._scratch("l1", len(ids), self.n, self.lam.dtype)
            l1_rows(self.lam, self.lam_t, ids, l1, add_to=out, eps=self.eps)
        return out

    def _grad_lower_into(self, ids: Tensor, start: int, out: Tensor) -> Tensor:
        """Lower bounds of :meth:`_grad_into`'s entries into ``out``, each at most the exact
        one (here: the exact ones; subclasses may use a cheaper product)."""
        return self._grad_into(ids, start, out)

    def upper(self, start: int, stop: int, out: Tensor, *, lower_bound: bool = False) -> Tensor:
        """Rows ``start:stop`` from the diagonal on (columns ``start:``) into ``out``
        ``[stop - start, n - start]`` (a view into a larger matrix is fine). Each entry equals
        :meth:`rows`' bit for bit; with ``lower_bound``, each is at most that (the streamed
        greedy's bound passes, :meth:`_grad_lower_into`)."""
        n = self.n
        ids = torch.arange(start, stop, device=self.device)
        (self._grad_lower_into if lower_bound else self._grad_into)(ids, start, out)
        out[:, : stop - start].fill_diagonal_(0.0)
        if self.lam is not None:
            l1 = self._scratch("l1", stop - start, n - start, self.lam.dtype)
            l1_block(self.lam, self.lam_t, start, stop, l1, add_to=out, eps=self.eps)
        return out

    def dense(self) -> Tensor:
        """The ``[n, n]`` matrix (row ``j`` equals ``rows([j])`` bit for bit): blocks of
        ``block_rows`` rows on and above the diagonal (:meth:`upper`), mirrored; temporaries
        of a few blocks."""
        n, rows = self.n, self.block_rows
        out = torch.empty(n, n, dtype=self.dtype, device=self.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            self.upper(start, stop, out[start:stop, start:])
            _mirror_rows(out, start, stop)
        return out


class GradientDistances(ClassDistances):
    """LCMat-S / Craig: ``d_ij = ||g_i - g_j||_2 + eps ||lambda_{i,K} - lambda_{j,K}||_1``.

    ``g`` are last-layer gradients (Gram identity ``g_i . g_j = (e_i . e_j)(h_i . h_j + 1)``,
    never built; the two products exact, :func:`exact_dots`), ``lambda_K`` the ``k_dims``
    diagonal-Hessian coordinates of largest variance over the class (from moments). Keeps the
    slices of ``h`` and ``e`` (float64, one each for float32 inputs, three for float64) and
    ``lambda_K`` twice: a row costs ``O(n (c + d + K))``.
    """

    def __init__(
        self,
        features: Tensor,
        logits: Tensor,
        labels: Tensor,
        *,
        eps: float,
        k_dims: int,
        block_rows: int = BLOCK_ROWS,
        products: str = "auto",
    ) -> None:
        _check_head_inputs(features, logits)
        self.n, self.eps, self.block_rows = features.shape[0], eps, block_rows
        self.products = resolve_products(products, features.device)
        self.dtype, self.device = features.dtype, features.device
        if eps != 0:
            coords = top_variance_coordinates(features, logits, k_dims)
            self.lam = diag_hessian_columns(features, logits, coords)
            self.lam_t = self.lam.T.contiguous()
        self.h = split_rows(features, self.products)
        self.e = split_rows(softmax_residuals(logits, labels), self.products)
        self._near: tuple[Tensor, Tensor, Tensor] | None = None  # float32 h and its slacks
        self.sq = (exact_self_dots(self.h) + 1.0) * exact_self_dots(self.e)

    def _grad(self, ids: Tensor, start: int = 0) -> Tensor:
        points = slice(start, None)
        h, e = _take(self.h, ids), _take(self.e, ids)
        gram = exact_dots(h, _take(self.h, points)).add_(1.0)
        gram.mul_(exact_dots(e, _take(self.e, points)))
        return _grad_distances(gram, self.sq[ids], self.sq[points])

    def _grad_into(self, ids: Tensor, start: int, out: Tensor) -> Tensor:
        if self.products == "fast" or not compiled_available(self.device):
            return super()._grad_into(ids, start, out)
        points = slice(start, None)
        h, e = _take(self.h, ids), _take(self.e, ids)
        h_cols, e_cols = _take(self.h, points), _take(self.e, points)
        m, w = len(ids), self.n - start
        return grad_distances_into(
            exact_dots(h, h_cols, scaled=False, out=self._scratch("h", m, w, torch.float64)),
            exact_dots(e, e_cols, scaled=False, out=self._scratch("e", m, w, torch.float64)),
            (h[1], h_cols[1]),
            (e[1], e_cols[1]),
            (self.sq[ids], self.sq[points]),
            out,
        )

    def _grad_lower_into(self, ids: Tensor, start: int, out: Tensor) -> Tensor:
        """From a float32 product of the ``h`` slices (about 2.5x faster than the float64 one
        on blocks of 128 rows) where the slices allow it (float32 inputs: one slice of integers
        below ``2^24``, exact in float32), else the exact entries. A float32 dot product of
        length ``k`` is within ``gamma_k |x| . |y| <= gamma_k ||x|| ||y||`` of the exact one,
        ``gamma_k = k u / (1 - k u)``, ``u = 2^-24``, in any summation order (Higham 2002,
        Sec. 3.1); the bound is taken for ``k + 2`` and widened by ``2^-20`` of itself for the
        float64 roundings of the norms and of moving the product (:func:`grad_lower_bounds_into`).
        """
        if self.products != "exact" or len(self.h[0]) != 1 or not compiled_available(self.device):
            return self._grad_into(ids, start, out)
        if self._near is None:
            q = self.h[0][0]
            k = q.shape[1] + 2
            unit = torch.finfo(torch.float32).eps / 2
            gamma = k * unit / (1 - k * unit) * (1 + 2.0**-20)
            norms = q.square().sum(1).sqrt_()
            self._near = (q.float(), norms * gamma, norms)
        q32, slack_rows, slack_cols = self._near
        points = slice(start, None)
        m, w = len(ids), self.n - start
        e, e_cols = _take(self.e, ids), _take(self.e, points)
        near = self._scratch("near", m, w, torch.float32)
        with full_float32_products():
            torch.mm(q32[ids], q32[points].T, out=near)
        return grad_lower_bounds_into(
            near,
            (slack_rows[ids], slack_cols[points]),
            exact_dots(e, e_cols, scaled=False, out=self._scratch("e", m, w, torch.float64)),
            (self.h[1][ids], self.h[1][points]),
            (e[1], e_cols[1]),
            (self.sq[ids], self.sq[points]),
            out,
        )


class PreconditionedDistances(ClassDistances):
    """AdaCore: ``||u_i - u_j||_2`` with ``u = g / (lambda + damping)``.

    The preconditioning does not factorise, so ``u`` is built ``[m, c (d + 1)]`` and split for
    exact products (:func:`exact_split`): for a streamed row, the points' ``u`` in blocks of
    :data:`POINT_BLOCK` (a row costs ``O(n c d)``, memory ``O(n (c + d))`` plus a block); for
    :meth:`dense`, once for all (``[n, c (d + 1)]``).
    """

    def __init__(
        self,
        features: Tensor,
        logits: Tensor,
        labels: Tensor,
        *,
        damping: float,
        products: str = "auto",
    ):
        _check_head_inputs(features, logits)
        self.h, self.z, self.y, self.damping = features, logits, labels, damping
        self.n, self.dtype, self.device = features.shape[0], features.dtype, features.device
        self.products = resolve_products(products, features.device)
        self._all: tuple | None = None
        self.sq = torch.cat(
            [
                exact_self_dots(self._u(slice(a, a + POINT_BLOCK)))
                for a in range(0, self.n, POINT_BLOCK)
            ]
        )

    def _u(self, rows) -> tuple:
        h, z, y = self.h[rows], self.z[rows], self.y[rows]
        u = last_layer_grads(h, z, y).div_(last_layer_diag_hessians(h, z).add_(self.damping))
        return split_rows(u, self.products)

    def _grad(self, ids: Tensor, start: int = 0) -> Tensor:
        u = self._u(ids)
        if self._all is not None:
            gram = exact_dots(u, _take(self._all, slice(start, None)))
        else:
            gram = torch.cat(
                [
                    exact_dots(u, self._u(slice(a, min(a + POINT_BLOCK, self.n))))
                    for a in range(start, self.n, POINT_BLOCK)
                ],
                dim=1,
            )
        return _grad_distances(gram, self.sq[ids], self.sq[start:])

    def dense(self) -> Tensor:
        self._all = self._u(slice(None))
        try:
            return super().dense()
        finally:
            self._all = None


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

    ``g`` are last-layer gradients (Gram identity, never built; exact products,
    :func:`exact_dots`), ``lambda_K`` the ``k_dims`` diagonal-Hessian coordinates of largest
    variance over the class (from moments).

    Built in blocks of ``block_rows`` rows on and above the diagonal, the rest mirrored: about
    half the arithmetic of the full matrix, exactly symmetric, zero diagonal; the temporaries
    are a few ``[block_rows, n]`` blocks. Row ``j`` equals the streamed path's row
    (:class:`GradientDistances`) bit for bit; the values equal
    :func:`~replay_lcmat.curvature.pairwise_grad_distances` plus ``eps`` times
    :func:`l1_distances` up to rounding.
    """
    return GradientDistances(
        features, logits, labels, eps=eps, k_dims=k_dims, block_rows=block_rows
    ).dense()


def preconditioned_grad_distances(
    features: Tensor, logits: Tensor, labels: Tensor, *, damping: float
) -> Tensor:
    """``||u_i - u_j||_2`` with ``u = g / (lambda + damping)`` (AdaCore), ``[n, n]``.

    The element-wise preconditioning does not factorise, so ``u`` is built: ``[n, c*(d+1)]``
    (:class:`PreconditionedDistances`).
    """
    return PreconditionedDistances(features, logits, labels, damping=damping).dense()
