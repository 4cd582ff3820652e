"""Class dissimilarities of the facility-location selectors, dense or a row at a time.

``d_ij`` of LCMat-S (last-layer gradient distance plus ``eps`` times the L1 distance of the
top-``K`` diagonal-Hessian coordinates), Craig (gradient distance) and AdaCore (preconditioned
gradient distance) is held whole (``n x n``, :meth:`ClassDistances.dense`) or computed a block
of rows at a time (:class:`StreamedSimilarity`, memory ``O(n (c + d + K))``). Every entry comes
from exact inner products (:func:`exact_split`), a function of its two samples only, so both
give the same numbers bit for bit.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from replay_lcmat import submodular
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
    l1_block,
    l1_rows,
    mirror_block,
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


def format_bytes(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


# Rows per block of a streamed pass over all rows (and of the lazy greedy's largest refresh).
STREAM_BLOCK_ROWS = 32
# Most rows a streamed similarity keeps in its cache (fewer when they pass STREAM_CACHE_BYTES).
CACHE_ROWS = 128
# Points per block when AdaCore's preconditioned gradients are built for a streamed row.
POINT_BLOCK = 512
# Rows per block of the row sums of exact_split (no [n, d] temporary).
SUM_ROWS = 4096


# ------------------------------------------------------------------ exact inner products
# A matrix product rounds differently with its shapes and with where a row sits in it, so the
# dense and the streamed path would disagree in the last bits. Here every row x_j is split into
# integer "slices" times a power of two, small enough that every partial sum of a product of
# slices is an exact integer in float64: the products come out the same in any shape, order,
# thread count or device, and g_i . g_j is exactly g_j . g_i.
def _slice_bits(width: int, slices: int) -> int:
    """Bits per slice so that ``slices * width`` products of two slices sum exactly in float64."""
    return int((53 - math.log2(slices * width)) // 2)


def exact_split(x: Tensor, slices: int) -> tuple[list[Tensor], Tensor, int]:
    """Rows of ``x`` ``[n, k]`` as ``x_j ~ scale_j sum_a q_a,j 2^(-a bits)`` with integer
    ``|q_a| <= 2^bits`` (float64 ``[n, k]`` each) and ``scale_j`` a power of two, deterministic
    per row.

    What is cut off is below ``2^(-slices * bits)`` of the row's largest entry: one slice
    (float32 inputs, ~22 bits for k = 512) keeps about float32's precision, three
    (float64 inputs) more than float64's.

    Returns:
        ``(slices q_a, scale float64 [n], bits)``.
    """
    bits = _slice_bits(x.shape[1], slices)
    parts = [x.new_empty(x.shape, dtype=torch.float64) for _ in range(slices)]
    scale = x.new_empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], SUM_ROWS):  # blocks of rows: no [n, k] temporaries
        rows = slice(start, start + SUM_ROWS)
        block = x[rows].to(torch.float64, copy=True)  # never the caller's tensor
        _, exponent = torch.frexp(block.abs().amax(1))  # max |x_jk| < 2^exponent (0: zero row)
        scale[rows] = torch.ldexp(torch.ones_like(block[:, 0]), exponent.long() - bits)
        rest = block.div_(scale[rows, None])  # exact: a power of two
        for part in parts:
            torch.round(rest, out=part[rows])
            rest.sub_(part[rows]).mul_(2.0**bits)  # exact
    return parts, scale, bits


PRODUCTS = ("auto", "exact", "fast")


def resolve_products(products: str, device: torch.device | str) -> str:
    """``"exact"`` or ``"fast"`` for ``products`` on ``device``.

    ``"exact"`` (the CPU's default): split float64 products, the same bits in any block shape,
    dense or streamed, on any number of processes. ``"fast"`` (the default elsewhere, e.g. CUDA,
    where float64 runs at 1/2 to 1/64 of the float32 rate): one product in the inputs' dtype,
    TF32 off, so float32 inputs keep float32's precision; blocks of other shapes may round the
    last bit differently.
    """
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}; got {products!r}.")
    if products != "auto":
        return products
    return "exact" if torch.device(device).type == "cpu" else "fast"


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 products on CUDA whatever the user's global TF32 setting (restored after)."""
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    setattr(matmul, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def split_rows(x: Tensor, products: str) -> tuple[list[Tensor], Tensor, int]:
    """:func:`exact_split` (``"exact"``), or ``x`` itself as one slice of scale 1 (``"fast"``)."""
    if products == "fast":
        return [x], torch.ones(x.shape[0], dtype=x.dtype, device=x.device), 0
    return exact_split(x, 1 if x.dtype == torch.float32 else 3)


def exact_dots(a: tuple, b: tuple, *, scaled: bool = True) -> Tensor:
    """``x_j . y_i`` for the rows of two :func:`exact_split` results, float64 ``[m, p]``.

    Every product of slices is an exact integer whatever the shapes; the levels (pairs of
    slices of equal weight) are then added smallest first, elementwise, and scaled by powers of
    two: the same value in the dense and the streamed path, and symmetric when ``a`` and ``b``
    are the same rows. ``scaled=False``: before the rows' and columns' scales (exact integers).
    """
    (qa, sa, bits), (qb, sb, _) = a, b
    total = None
    for level in reversed(range(len(qa))):
        exact = None
        for i in range(level + 1):  # each product and their sum are exact integers
            with _no_tf32():
                term = torch.mm(qa[i], qb[level - i].T)
            exact = term if exact is None else exact.add_(term)
        if level:
            exact.mul_(2.0 ** (-level * bits))
        total = exact if total is None else total.add_(exact)
    if not scaled:
        return total
    return total.mul_(sa[:, None]).mul_(sb[None, :])  # exact (powers of two), either order


def exact_self_dots(a: tuple) -> Tensor:
    """``x_j . x_j`` of an :func:`exact_split`, ``[n]``: the diagonal of ``exact_dots(a, a)``."""
    q, scale, bits = a
    out = []
    for start in range(0, len(scale), SUM_ROWS):
        rows = slice(start, start + SUM_ROWS)
        total = None
        for level in reversed(range(len(q))):
            exact = None
            for i in range(level + 1):  # exact integer sums in any order
                term = (q[i][rows] * q[level - i][rows]).sum(1)
                exact = term if exact is None else exact.add_(term)
            if level:
                exact.mul_(2.0 ** (-level * bits))
            total = exact if total is None else total.add_(exact)
        out.append(total.mul_(scale[rows]).mul_(scale[rows]))
    return torch.cat(out)


def _take(a: tuple, rows) -> tuple:
    q, scale, bits = a
    return [part[rows] for part in q], scale[rows], bits


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
            l1 = l1_rows(self.lam, self.lam_t, ids, self.lam.new_empty(len(ids), self.n))
            out.add_(l1.mul_(self.eps))
        return out

    def upper(self, start: int, stop: int, out: Tensor, scratch: Tensor | None = None) -> Tensor:
        """Rows ``start:stop`` from the diagonal on (columns ``start:``) into ``out``
        ``[stop - start, n - start]`` (a view into a larger matrix is fine); ``scratch``: at
        least as many elements, for the L1 term. Each entry equals :meth:`rows`' bit for bit."""
        n = self.n
        ids = torch.arange(start, stop, device=self.device)
        self._grad_into(ids, start, out)
        out[:, : stop - start].fill_diagonal_(0.0)
        if self.lam is not None:
            size = (stop - start) * (n - start)
            if scratch is None:
                scratch = self.lam.new_empty(size)
            l1 = scratch[:size].view(stop - start, n - start)
            out.add_(l1_block(self.lam, self.lam_t, start, stop, l1).mul_(self.eps))
        return out

    def dense(self) -> Tensor:
        """The ``[n, n]`` matrix (row ``j`` equals ``rows([j])`` bit for bit): blocks of
        ``block_rows`` rows on and above the diagonal (:meth:`upper`), mirrored; temporaries
        of a few blocks."""
        n, rows = self.n, self.block_rows
        out = torch.empty(n, n, dtype=self.dtype, device=self.device)
        scratch = None if self.lam is None else self.lam.new_empty(min(rows, n) * n)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            self.upper(start, stop, out[start:stop, start:], scratch)
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
        return grad_distances_into(
            exact_dots(h, h_cols, scaled=False),
            exact_dots(e, e_cols, scaled=False),
            (h[1], h_cols[1]),
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


class StreamedSimilarity:
    """``s = C - d`` rows of one class on demand: a :class:`~replay_lcmat.submodular.RowSource`.

    ``C = "max"`` takes one streamed pass over every candidate row first (``C`` must be known
    before any gain; the pass also checks for overflow; with every point a candidate, over the
    blocks from the diagonal on only: half the work, the same entries); a float ``C`` is checked row block by
    row block as rows are made. Recently used rows are kept in a cache of
    :data:`~replay_lcmat.submodular.STREAM_CACHE_BYTES`.

    Args:
        distances: the class's :class:`ClassDistances`.
        offset: ``"max"`` or a float.
        candidates: class indices of the candidates (default: every sample, in order); the
            points are always the whole class.
        owner: ``(selector name, class label)`` for error messages.
    """

    lazy_chunks = (16, 1024)  # a chunk's rows share one read of the inputs

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
        self.block_rows = STREAM_BLOCK_ROWS
        row_bytes = self.n_points * torch.finfo(self.dtype).bits // 8
        self._capacity = max(1, min(CACHE_ROWS, submodular.STREAM_CACHE_BYTES // row_bytes))
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self.offset = offset
        self.c: Tensor | None = None
        if offset == "max":
            low = high = None
            starts = tqdm(
                range(0, self.n_candidates, STREAM_BLOCK_ROWS),
                desc=f"{owner[0]} class {owner[1]}, streamed: offset pass",
                disable=self.n_points < submodular.STREAM_PROGRESS_MIN_POINTS,
                leave=False,
            )
            buffer = None
            for a in starts:
                stop = min(a + STREAM_BLOCK_ROWS, self.n_candidates)
                if candidates is None:  # d is symmetric: the blocks from the diagonal on
                    if buffer is None:
                        buffer = torch.empty(
                            STREAM_BLOCK_ROWS * self.n_points, dtype=self.dtype, device=self.device
                        )
                    block = buffer[: (stop - a) * (self.n_points - a)].view(
                        stop - a, self.n_points - a
                    )
                    distances.upper(a, stop, block)
                else:
                    block = self._distances(torch.arange(a, stop))
                lo, hi = torch.aminmax(block)
                low = lo if low is None else torch.minimum(low, lo)
                high = hi if high is None else torch.maximum(high, hi)
            self.c = offset_and_check(*owner, offset, low, high, self.n_points)

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
        through the cache; a run of consecutive rows (a full pass) does not."""
        ids = ids.to(self.device)
        if len(ids) > 1 and bool((ids[1:] - ids[:-1] == 1).all()):
            return self._similarity(ids)
        wanted = ids.tolist()
        missing = [j for j in dict.fromkeys(wanted) if j not in self._cache]
        if missing:
            made = self._similarity(torch.tensor(missing, device=self.device))
            for j, row in zip(missing, made, strict=True):
                self._cache[j] = row.clone()
                if len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
        out = torch.empty(len(ids), self.n_points, dtype=self.dtype, device=self.device)
        for r, j in enumerate(wanted):
            row = self._cache.get(j)
            if row is None:  # pushed out by the rows made just now: make it again
                row = self._similarity(ids[r : r + 1])[0]
            else:
                self._cache.move_to_end(j)
            out[r] = row
        return out
