"""L1 distances of LCMat-S's curvature term (Eq. 12: ``eps ||lambda_i - lambda_j||_1``), fused.

Every entry sums ``|x_ik - x_jk|`` over ``k = 0, 1, ...`` in order from an accumulator of 0,
so an entry is a function of its two rows only: the same bits in any block of rows, in the dense
and the streamed path, and equal to ``torch.cdist(x, x, p=1)`` on the CPU.

On the CPU a compiled kernel (numba) does the subtract, absolute value and add of a coordinate in
one sweep over a tile of columns, four rows at a time, so each column value is read once for
four rows and the accumulators stay in cache: about 3.5x faster than one torch pass per
operation and coordinate. On other devices (and without numba) the torch passes run, in the same
order, with the same results.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # numba is a declared dependency; the torch passes below keep working without it
    import numba
except ImportError:  # pragma: no cover - only where numba has no wheel for the platform
    numba = None

# Columns per tile of the compiled kernel: four rows of accumulators (4 x 512 floats) and the
# tile of a coordinate stay in the first-level cache.
TILE = 512
ROWS = 4


def _kernel_source(rows_of, out, row_stride: int, width: int, x, x_t, first_column: int) -> None:
    """``out[r * row_stride + j] = sum_k |x[rows_of[r], k] - x_t[k, first_column + j]|``, k in
    order from 0. ``out`` is flat (contiguous), so the compiler sees unit strides and vectorises
    the sweep over ``j``."""
    n_rows = rows_of.shape[0]
    n_coords = x.shape[1]
    for r0 in range(0, n_rows, ROWS):
        m = min(ROWS, n_rows - r0)
        for j0 in range(0, width, TILE):
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


_compiled = None if numba is None else numba.njit(nogil=True, cache=True)(_kernel_source)


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
    x: Tensor, x_t: Tensor, rows: Tensor, out: Tensor, *, first_column: int = 0, compiled=None
) -> Tensor:
    """``out[r, j] = ||x[rows[r]] - x[first_column + j]||_1``, in place; returns ``out``.

    Args:
        x: ``[n, K]``; x_t: ``x.T.contiguous()`` ``[K, n]``.
        rows: int64 ``[m]``; out: ``[m, w]`` with ``first_column + w <= n``, rows contiguous.
        compiled: force (True) or avoid (False) the compiled kernel; default: where available.
    """
    use = compiled_available(x.device) if compiled is None else compiled
    if not use or out.shape[0] == 0:
        return _torch_rows(x, x_t, rows, first_column, out)
    m, width = out.shape
    if out.stride(1) != 1:
        raise ValueError("l1_rows needs out with contiguous rows (stride 1 along its columns).")
    row_stride = out.stride(0) if m > 1 else width
    flat = torch.as_strided(out, ((m - 1) * row_stride + width,), (1,))  # the rows' memory
    _compiled(
        rows.cpu().numpy(),
        flat.detach().numpy(),
        row_stride,
        width,
        x.detach().contiguous().numpy(),
        x_t.detach().numpy(),
        int(first_column),
    )
    return out


def l1_block(x: Tensor, x_t: Tensor, start: int, stop: int, out: Tensor) -> Tensor:
    """Rows ``start:stop`` of the L1 distances from their diagonal on (columns ``start:``),
    ``out`` ``[stop - start, n - start]`` (a view into the full matrix is fine)."""
    rows = torch.arange(start, stop, device=x.device)
    return l1_rows(x, x_t, rows, out, first_column=start)
