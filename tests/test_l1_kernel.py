"""The fused L1 kernel of LCMat-S's curvature term against torch and a plain loop."""

import pytest
import torch

from replay_lcmat.selection import l1
from replay_lcmat.selection.distances import l1_distances

needs_compiled = pytest.mark.skipif(
    not l1.compiled_available(torch.device("cpu")), reason="numba is not installed"
)


def _inputs(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=gen, dtype=torch.float64) ** 3 * 7).to(dtype)


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_rows", [1, 3, 4, 9])
def test_compiled_rows_equal_the_torch_passes_bit_for_bit(dtype, n_rows):
    x = _inputs(1100, 13, dtype)  # more columns than one tile, a partial last tile
    x_t = x.T.contiguous()
    rows = torch.tensor([1099, 0, 517, 3, 3, 800, 12, 400, 1][:n_rows])
    for first in (0, 5, 600):
        width = 1100 - first
        fast = l1.l1_rows(x, x_t, rows, x.new_empty(n_rows, width), first_column=first)
        slow = l1.l1_rows(
            x, x_t, rows, x.new_empty(n_rows, width), first_column=first, compiled=False
        )
        assert torch.equal(fast, slow)


@needs_compiled
def test_compiled_rows_equal_cdist_and_a_float64_loop():
    x = _inputs(300, 21, torch.float32, seed=1)
    rows = torch.arange(300)
    got = l1.l1_rows(x, x.T.contiguous(), rows, x.new_empty(300, 300))
    assert torch.equal(got, torch.cdist(x, x, p=1))
    loop = torch.zeros(300, 300, dtype=torch.float64)
    for k in range(21):
        loop += (x[:, None, k].double() - x[None, :, k].double()).abs()
    torch.testing.assert_close(got.double(), loop, rtol=1e-6, atol=0)


@needs_compiled
def test_compiled_writes_into_a_strided_view_of_the_full_matrix():
    x = _inputs(70, 5, torch.float32, seed=2)
    full = torch.full((70, 70), -1.0)
    l1.l1_block(x, x.T.contiguous(), 10, 30, full[10:30, 10:])
    assert torch.equal(full[10:30, 10:], torch.cdist(x[10:30], x[10:], p=1))
    assert (full[:10] == -1).all() and (full[30:] == -1).all() and (full[:, :10] == -1).all()


@needs_compiled
def test_dense_l1_is_the_same_with_and_without_the_compiled_kernel(monkeypatch):
    x = _inputs(260, 17, torch.float32, seed=3)
    fast = l1_distances(x, block_rows=64)
    monkeypatch.setattr(l1, "_compiled", None)
    assert not l1.compiled_available(torch.device("cpu"))
    assert torch.equal(fast, l1_distances(x, block_rows=64))


def test_refuses_an_output_with_strided_columns():
    if not l1.compiled_available(torch.device("cpu")):
        pytest.skip("numba is not installed")
    x = _inputs(20, 3, torch.float32)
    out = torch.empty(20, 4).T  # columns not contiguous
    with pytest.raises(ValueError, match="contiguous rows"):
        l1.l1_rows(x, x.T.contiguous(), torch.arange(4), out)
