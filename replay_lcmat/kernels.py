"""Compiled kernels of the facility-location selectors, each with a torch twin.

- :func:`l1_rows`: the L1 distances of LCMat-S's curvature term (Eq. 12,
  ``eps ||lambda_i - lambda_j||_1``).
- :func:`grad_distances_into`: ``||g_i - g_j||_2`` from the exact inner products of the Gram
  identity, in one pass instead of eight elementwise torch passes over float64 blocks.
- :func:`coverage_gains`: facility-location marginal gains ``sum_i max(0, s_ji - cov_i)``;
  :func:`add_gain_sums`: a block's share of every gain (the streamed bound passes).

L1: every entry sums ``|x_ik - x_jk|`` over ``k = 0, 1, ...`` in order from an accumulator of 0,
so an entry is a function of its two rows only: the same bits in any block of rows, in the dense
and the streamed path, and equal to ``torch.cdist(x, x, p=1)`` on the CPU. On the CPU the
compiled L1 kernel (numba) does the subtract, absolute value and add of a coordinate in one
sweep over a tile of columns, four rows at a time (each column value read once for four rows,
the accumulators in cache); elsewhere (and without numba) torch passes run in the same order,
with the same results. The distance kernel does the same IEEE operations in the same order as
its torch twin (numba does not contract without fast-math) with a correctly rounded square
root, which torch's vectorised float64 sqrt is not always (one ulp apart, rarely). The gains
kernel sums in float64 in the order its compiled code fixes for a row length, so a row's gain
is the same whatever the rows around it; where it does not run,
:class:`~replay_lcmat.submodular.FacilityLocation` sums with torch (same picks except on near
ties).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:  # numba is a declared dependency; the torch passes below keep working without it
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - only where numba has no wheel for the platform
    numba, prange = None, range

# Columns per tile of the compiled kernel: four rows of accumulators (4 x 512 floats) and the
# tile of a coordinate stay in the first-level cache.
TILE = 512
ROWS = 4


def _kernel_source(
    rows_of, out, row_stride: int, width: int, x, x_t, first_column: int, target, t_stride, eps
) -> None:
    """``out[r * row_stride + j] = sum_k |x[rows_of[r], k] - x_t[k, first_column + j]|``, k in
    order from 0. ``out`` is flat (contiguous), so the compiler sees unit strides and vectorises
    the sweep over ``j``. With ``t_stride > 0``, each finished tile is also added, times
    ``eps``, to ``target[r * t_stride + j]`` (``target += eps * out``, rounded as torch's
    ``target.add_(out.mul_(eps))``) while it is still in cache."""
    n_rows = rows_of.shape[0]
    n_coords = x.shape[1]
    groups = (n_rows + ROWS - 1) // ROWS
    # tile-major: a thread takes a run of column tiles and every group of rows on each, so a
    # tile of x_t ([K, TILE]) is read from memory once per call, not once per group of rows;
    # entries are independent (any thread, any order: the same bits)
    for item in prange(groups * ((width + TILE - 1) // TILE)):
        r0 = (item % groups) * ROWS
        m = min(ROWS, n_rows - r0)
        j0 = (item // groups) * TILE
        w = min(TILE, width - j0)
        c0 = first_column + j0
        if m == ROWS:
            o = r0 * row_stride + j0
            a0 = out[o : o + w]
            a1 = out[o + row_stride : o + row_stride + w]
            a2 = out[o + 2 * row_stride : o + 2 * row_stride + w]
            a3 = out[o + 3 * row_stride : o + 3 * row_stride + w]
            a0[:] = 0.0
            a1[:] = 0.0
            a2[:] = 0.0
            a3[:] = 0.0
            i0, i1, i2, i3 = rows_of[r0], rows_of[r0 + 1], rows_of[r0 + 2], rows_of[r0 + 3]
            for k in range(n_coords):
                x0, x1, x2, x3 = x[i0, k], x[i1, k], x[i2, k], x[i3, k]
                column = x_t[k, c0 : c0 + w]
                for j in range(w):
                    v = column[j]
                    a0[j] += abs(x0 - v)
                    a1[j] += abs(x1 - v)
                    a2[j] += abs(x2 - v)
                    a3[j] += abs(x3 - v)
            if t_stride > 0:
                for r in range(ROWS):
                    _add_scaled(
                        target,
                        r * t_stride + (r0 * t_stride) + j0,
                        out,
                        o + r * row_stride,
                        w,
                        eps,
                    )
        else:
            for r in range(r0, r0 + m):
                o = r * row_stride + j0
                acc = out[o : o + w]
                acc[:] = 0.0
                i = rows_of[r]
                for k in range(n_coords):
                    xi = x[i, k]
                    column = x_t[k, c0 : c0 + w]
                    for j in range(w):
                        acc[j] += abs(xi - column[j])
                if t_stride > 0:
                    _add_scaled(target, r * t_stride + j0, out, o, w, eps)


def _add_scaled_source(target, t0: int, source, s0: int, w: int, eps) -> None:
    """``target[t0 + j] += source[s0 + j] * eps`` for ``j < w``: two roundings in the arrays'
    dtype, as torch's ``target.add_(source.mul_(eps))``."""
    for j in range(w):
        scaled = source[s0 + j] * eps
        source[s0 + j] = scaled
        target[t0 + j] = target[t0 + j] + scaled


def _jit(source, **flags):
    # parallel: rows go to threads whole, so every entry is summed alike on any thread count
    if numba is None:
        return None
    return numba.njit(nogil=True, cache=True, parallel=True, **flags)(source)


def _threads() -> None:
    """Give the kernels as many threads as torch uses (``torch.set_num_threads``), and leave
    torch's count as it was.

    The first call starts numba's thread pool. Under numba's OpenMP threading layer, starting
    it sets OpenMP's thread count, which torch shares, to ``NUMBA_NUM_THREADS`` (all cores):
    a process that had taken a share of the cores (one of several ranks on a host) would then
    run every later torch operation on all of them, the ranks oversubscribing the cores. So
    torch's count is read first and put back when it changed.
    """
    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


_add_scaled = None if numba is None else numba.njit(nogil=True, cache=True)(_add_scaled_source)
_compiled = _jit(_kernel_source)


def compiled_available(device: torch.device) -> bool:
    """Whether the compiled kernel runs for tensors on ``device`` (the CPU, with numba)."""
    return _compiled is not None and torch.device(device).type == "cpu"


def _torch_rows(x: Tensor, x_t: Tensor, rows: Tensor, first_column: int, out: Tensor) -> Tensor:
    """The same sums with one torch pass per operation and coordinate (any device)."""
    out.zero_()
    scratch = torch.empty_like(out)
    width = out.shape[1]
    columns = x[rows].T.unsqueeze(2).unbind(0)  # K views [m, 1]
    points = x_t[:, None, first_column : first_column + width].unbind(0)  # K views [1, width]
    for column, point in zip(columns, points, strict=True):
        torch.sub(column, point, out=scratch)
        out.add_(scratch.abs_())
    return out


def l1_rows(
    x: Tensor,
    x_t: Tensor,
    rows: Tensor,
    out: Tensor,
    *,
    first_column: int = 0,
    add_to: Tensor | None = None,
    eps: float = 1.0,
    compiled: bool | None = None,
) -> Tensor:
    """``out[r, j] = ||x[rows[r]] - x[first_column + j]||_1``, in place; returns ``out``.

    Args:
        x: ``[n, K]``; x_t: ``x.T.contiguous()`` ``[K, n]``.
        rows: int64 ``[m]``; out: ``[m, w]`` with ``first_column + w <= n``, rows contiguous.
        add_to: ``[m, w]`` (rows contiguous): then ``out *= eps`` and ``add_to += out``, rounded
            as ``add_to.add_(out.mul_(eps))`` (the compiled kernel does it tile by tile, in cache).
        compiled: force (True) or avoid (False) the compiled kernel; default: where available.
    """
    use = compiled_available(x.device) if compiled is None else compiled
    if not use or out.shape[0] == 0:
        _torch_rows(x, x_t, rows, first_column, out)
        if add_to is not None:
            add_to.add_(out.mul_(eps))
        return out
    flat, row_stride = _flat_rows(out)
    if add_to is None:
        target, t_stride = flat[:1], 0
    else:
        target, t_stride = _flat_rows(add_to)
    _threads()
    _compiled(
        rows.cpu().numpy(),
        flat.detach().numpy(),
        row_stride,
        out.shape[1],
        x.detach().contiguous().numpy(),
        x_t.detach().numpy(),
        int(first_column),
        target.detach().numpy(),
        t_stride,
        torch.tensor(eps, dtype=out.dtype).numpy()[()],  # eps in the arrays' dtype, as torch
    )
    return out


def l1_block(
    x: Tensor,
    x_t: Tensor,
    start: int,
    stop: int,
    out: Tensor,
    *,
    add_to: Tensor | None = None,
    eps: float = 1.0,
) -> Tensor:
    """Rows ``start:stop`` of the L1 distances from their diagonal on (columns ``start:``),
    ``out`` ``[stop - start, n - start]`` (a view into the full matrix is fine); ``add_to`` /
    ``eps`` as in :func:`l1_rows`."""
    rows = torch.arange(start, stop, device=x.device)
    return l1_rows(x, x_t, rows, out, first_column=start, add_to=add_to, eps=eps)


def _grad_source(h_dots, e_dots, h_rows, h_cols, e_rows, e_cols, sq_rows, sq_cols, out, stride):
    """``out[r * stride + j] = sqrt(max(0, (sq_r + sq_j) - 2 ((h + 1) e)))`` with
    ``h = (h_dots[r, j] h_rows[r]) h_cols[j]`` and ``e`` alike: the torch twin's operations."""
    m, w = h_dots.shape
    for r in prange(m):
        o = r * stride
        for j in range(w):
            h = (h_dots[r, j] * h_rows[r]) * h_cols[j]
            e = (e_dots[r, j] * e_rows[r]) * e_cols[j]
            t = ((h + 1.0) * e) * -2.0 + (sq_rows[r] + sq_cols[j])
            out[o + j] = 0.0 if t < 0.0 else math.sqrt(t)  # NaN stays NaN, as in torch's clamp


def _grad_lower_source(
    h_near,
    slack_rows,
    slack_cols,
    e_dots,
    h_rows,
    h_cols,
    e_rows,
    e_cols,
    sq_rows,
    sq_cols,
    out,
    stride,
):
    """:func:`_grad_source` with ``h_dots[r, j]`` replaced by ``h_near[r, j]`` (float32, within
    ``slack_rows[r] slack_cols[j]`` of it) moved by that slack towards the larger ``(h + 1) e``:
    up where ``e_dots >= 0``, down where negative. Every later operation is the same, in the same
    order, and monotone in ``h`` that way (IEEE rounding is monotone), so each entry is at most
    the exact one."""
    m, w = h_near.shape
    for r in prange(m):
        o = r * stride
        for j in range(w):
            move = slack_rows[r] * slack_cols[j]
            raw = e_dots[r, j]
            near = np.float64(h_near[r, j]) + (move if raw >= 0.0 else -move)
            h = (near * h_rows[r]) * h_cols[j]
            e = (raw * e_rows[r]) * e_cols[j]
            t = ((h + 1.0) * e) * -2.0 + (sq_rows[r] + sq_cols[j])
            out[o + j] = 0.0 if t < 0.0 else math.sqrt(t)  # NaN stays NaN, as in torch's clamp


def _gains_source(sim, rows_of, cov, out) -> None:
    """``out[r] = sum_i max(0, sim[rows_of[r], i] - cov[i])`` in float64. Compiled with
    reassociation allowed, so the compiler vectorises the sum with its own partial sums: an
    order fixed by the compiled code and the row length alone (the same for a row whatever the
    other rows, in any process of one machine)."""
    n = cov.shape[0]
    for r in prange(rows_of.shape[0]):
        row = sim[rows_of[r]]
        total = 0.0
        for i in range(n):
            v = np.float64(row[i]) - np.float64(cov[i])
            total += v if v > 0.0 else 0.0
        out[r] = total


def _bound_sums_source(block, stride: int, m: int, w: int, c, cov, first: int, rows, cols) -> None:
    """Both sums of one block of ``d`` (rows ``first:first + m``, points ``first:``, flat with
    row ``stride``): ``rows[r] = sum_j max(0, (c - d_rj) - cov[first + j])`` over the whole
    block, and, for the points right of the block's square, ``cols[j - m] += sum_r max(0,
    (c - d_rj) - cov[first + r])`` (the mirrored block: ``d`` is symmetric). Each term as in
    :func:`_gains_source` (``c - d`` in the block's dtype, the rest in float64); the order of
    the sums is the compiler's."""
    for r in prange(m):
        o = r * stride
        total = 0.0
        for j in range(w):
            v = np.float64(c - block[o + j]) - np.float64(cov[first + j])
            total += v if v > 0.0 else 0.0
        rows[r] = total
    for tile in prange((w - m + TILE - 1) // TILE):  # a column is summed by one thread
        j0 = m + tile * TILE
        j1 = min(j0 + TILE, w)
        for r in range(m):
            o = r * stride
            point = np.float64(cov[first + r])
            for j in range(j0, j1):
                v = np.float64(c - block[o + j]) - point
                cols[j - m] += v if v > 0.0 else 0.0


def _transpose_source(flat, src: int, dst: int, stride: int, m: int, w: int) -> None:
    """``flat[dst + i * stride + j] = flat[src + j * stride + i]`` for ``i < w``, ``j < m``: a
    transposed copy between two blocks of one row-major matrix, in 32 x 32 tiles (both sides
    stay in cache)."""
    for tile in prange((w + 31) // 32):
        i0 = tile * 32
        i1 = min(i0 + 32, w)
        for j0 in range(0, m, 32):
            j1 = min(j0 + 32, m)
            for i in range(i0, i1):
                row = dst + i * stride
                for j in range(j0, j1):
                    flat[row + j] = flat[src + j * stride + i]


_transpose_compiled = _jit(_transpose_source)
_grad_compiled = _jit(_grad_source)
_grad_lower_compiled = _jit(_grad_lower_source)
_gains_compiled = _jit(_gains_source, fastmath={"reassoc", "nsz"})
_bound_sums_compiled = _jit(_bound_sums_source, fastmath={"reassoc", "nsz"})


def _flat_rows(out: Tensor) -> tuple[Tensor, int]:
    """``out`` ``[m, w]`` with contiguous rows as one flat view of its memory and the row stride."""
    m, width = out.shape
    if out.stride(1) != 1:
        raise ValueError("the output needs contiguous rows (stride 1 along its columns).")
    stride = out.stride(0) if m > 1 else width
    return torch.as_strided(out, ((m - 1) * stride + width,), (1,)), stride


def grad_distances_into(
    h_dots: Tensor,
    e_dots: Tensor,
    h_scales: tuple[Tensor, Tensor],
    e_scales: tuple[Tensor, Tensor],
    sq: tuple[Tensor, Tensor],
    out: Tensor,
    *,
    compiled: bool | None = None,
) -> Tensor:
    """Last-layer gradient distances ``||g_r - g_j||_2`` into ``out`` ``[m, w]`` (any float dtype).

    ``g_r . g_j = (e_r . e_j)(h_r . h_j + 1)`` (the Gram identity), with each inner product given
    unscaled (``h_dots``, ``e_dots``: float64 ``[m, w]``, exact integers of the split rows) and
    its row and column scales (powers of two); ``sq``: ``||g||^2`` of the rows and the columns.
    """
    use = compiled_available(out.device) if compiled is None else compiled
    if not use:
        h = h_dots.mul(h_scales[0][:, None]).mul_(h_scales[1][None, :])
        e = e_dots.mul(e_scales[0][:, None]).mul_(e_scales[1][None, :])
        gram = h.add_(1.0).mul_(e).mul_(-2.0).add_(sq[0][:, None] + sq[1][None, :])
        return out.copy_(gram.clamp_(min=0.0).sqrt_())
    flat, stride = _flat_rows(out)
    _threads()
    _grad_compiled(
        *(t.contiguous().numpy() for t in (h_dots, e_dots, *h_scales, *e_scales, *sq)),
        flat.numpy(),
        stride,
    )
    return out


def grad_lower_bounds_into(
    h_near: Tensor,
    h_slack: tuple[Tensor, Tensor],
    e_dots: Tensor,
    h_scales: tuple[Tensor, Tensor],
    e_scales: tuple[Tensor, Tensor],
    sq: tuple[Tensor, Tensor],
    out: Tensor,
) -> Tensor:
    """Lower bounds of :func:`grad_distances_into`'s entries (CPU, compiled only), each at most
    the exact entry as that function rounds it, from a float32 product ``h_near`` ``[m, w]`` of
    the unscaled ``h`` slices with ``|h_near - h_dots| <= h_slack[0][r] h_slack[1][j]``
    (float64 ``[m]``, ``[w]``); the other arguments as there."""
    flat, stride = _flat_rows(out)
    _threads()
    _grad_lower_compiled(
        *(t.contiguous().numpy() for t in (h_near, *h_slack, e_dots, *h_scales, *e_scales, *sq)),
        flat.numpy(),
        stride,
    )
    return out


def coverage_gains(sim: Tensor, rows: Tensor, cov: Tensor, out: Tensor) -> Tensor:
    """``out[r] = sum_i max(0, sim[rows[r], i] - cov[i])`` with the compiled kernel (CPU, numba):
    float64 sums in the order :func:`_gains_source`'s compiled code fixes, so a row's gain is the
    same whatever the other rows of the call; returns ``out``.

    Args:
        sim: ``[N, n]`` with contiguous rows; rows: int64 ``[m]``; cov: ``[n]``; out: ``[m]``.
    """
    result = np.empty(len(rows), dtype=np.float64)
    _threads()
    _gains_compiled(sim.contiguous().numpy(), rows.cpu().numpy(), cov.contiguous().numpy(), result)
    return out.copy_(torch.from_numpy(result))


def add_gain_sums(block: Tensor, c: Tensor, cov: Tensor, first: int, sums: Tensor) -> None:
    """Add one block's share of every gain ``sum_i max(0, (c - d_ji) - cov_i)`` to ``sums``.

    ``block``: rows ``first:first + m`` of a symmetric ``d`` from their diagonal on (points
    ``first:``, ``[m, n - first]``, contiguous rows); ``c``: 0-dim, the block's dtype; ``cov``
    ``[n]``; ``sums``: float64 ``[n]``. Rows ``first:first + m`` get their sums over the block,
    the points after them their sums over the block's rows; over every block of rows, each
    gain is summed whole, in an order of its own (CPU: compiled; elsewhere torch).
    """
    m, w = block.shape
    if _bound_sums_compiled is None or block.device.type != "cpu":
        s = torch.sub(c, block).double()
        sums[first : first + m] += (s - cov[first:].double()).clamp_(min=0).sum(1)
        sums[first + m :] += (s[:, m:] - cov[first : first + m, None].double()).clamp_(min=0).sum(0)
        return
    flat, stride = _flat_rows(block)
    rows = np.empty(m, dtype=np.float64)
    cols = np.zeros(w - m, dtype=np.float64)
    _threads()
    _bound_sums_compiled(
        flat.numpy(), stride, m, w, c.numpy()[()], cov.contiguous().numpy(), first, rows, cols
    )
    sums[first : first + m] += torch.from_numpy(rows)
    sums[first + m :] += torch.from_numpy(cols)


def gains_compiled(device: torch.device) -> bool:
    """Whether :func:`coverage_gains` runs for tensors on ``device``."""
    return _gains_compiled is not None and torch.device(device).type == "cpu"


def mirror_block(out: Tensor, start: int, stop: int) -> None:
    """``out[stop:, start:stop] = out[start:stop, stop:].T`` in a square contiguous ``out``
    (compiled on the CPU, else torch's copy; the same values either way)."""
    n = out.shape[0]
    if stop >= n:
        return
    if _transpose_compiled is None or out.device.type != "cpu" or not out.is_contiguous():
        out[stop:, start:stop] = out[start:stop, stop:].T
        return
    _threads()
    _transpose_compiled(
        out.view(-1).numpy(), start * n + stop, stop * n + start, n, stop - start, n - stop
    )
