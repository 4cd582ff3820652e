"""Inner products of the gradient distances, exact or fast (LCMat-S, Craig, AdaCore).

``"exact"`` (the CPU's default): every row is split into integer slices times a power of two
(:func:`exact_split`), so every product of slices is an exact integer in float64 and a dot
product comes out the same in any block shape, order, thread count or process.
``"fast"`` (the default on GPUs): one product in the inputs' dtype, TF32 off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

# Rows per block of exact_split and exact_self_dots: no [n, d] temporary, and blocks small
# enough (2 MB at d = 512) that the allocator hands the same memory back from block to block
# instead of fresh pages to fault in (a 16 MB block made exact_split 2.6x slower at n = 5,000).
SUM_ROWS = 512


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


@contextmanager
def full_float32_products() -> Iterator[None]:
    """Float32 products in full float32 arithmetic on any device, whatever the user's global
    setting (``torch.set_float32_matmul_precision``, TF32 on CUDA; restored after)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with _no_tf32():
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def split_rows(x: Tensor, products: str) -> tuple[list[Tensor], Tensor, int]:
    """:func:`exact_split` (``"exact"``), or ``x`` itself as one slice of scale 1 (``"fast"``)."""
    if products == "fast":
        return [x], torch.ones(x.shape[0], dtype=x.dtype, device=x.device), 0
    return exact_split(x, 1 if x.dtype == torch.float32 else 3)


def exact_dots(a: tuple, b: tuple, *, scaled: bool = True, out: Tensor | None = None) -> Tensor:
    """``x_j . y_i`` for the rows of two :func:`exact_split` results, float64 ``[m, p]``.

    Every product of slices is an exact integer whatever the shapes; the levels (pairs of
    slices of equal weight) are then added smallest first, elementwise, and scaled by powers of
    two: the same value in the dense and the streamed path, and symmetric when ``a`` and ``b``
    are the same rows. ``scaled=False``: before the rows' and columns' scales (exact integers).
    ``out``: float64 ``[m, p]`` (contiguous) to write into and return instead of a new tensor.
    """
    (qa, sa, bits), (qb, sb, _) = a, b
    total = None
    for level in reversed(range(len(qa))):
        exact = None
        for i in range(level + 1):  # each product and their sum are exact integers
            with _no_tf32():
                if out is not None and total is None and exact is None:  # the first product
                    term = torch.mm(qa[i], qb[level - i].T, out=out)
                else:
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
