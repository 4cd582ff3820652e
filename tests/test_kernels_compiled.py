"""The fused L1 kernel of LCMat-S's curvature term against torch and a plain loop."""

import os
import subprocess
import sys

import pytest
import torch

from replay_lcmat import kernels as l1
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


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_distances_compiled_rows_equal_dense_and_the_torch_twin(dtype):
    from replay_lcmat.selection.distances import GradientDistances

    gen = torch.Generator().manual_seed(4)
    features = torch.randn(90, 12, generator=gen, dtype=torch.float64).relu().to(dtype)
    logits = torch.randn(90, 5, generator=gen, dtype=torch.float64).to(dtype)
    labels = torch.full((90,), 2)
    dist = GradientDistances(features, logits, labels, eps=0.3, k_dims=4, block_rows=16)
    ids = torch.tensor([0, 89, 45, 45, 7])
    fast = dist.rows(ids)
    dense = dist.dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=0)
    assert torch.equal(fast, dense[ids])
    for start in (0, 30):
        out_fast = torch.empty(len(ids), 90 - start, dtype=dtype)
        out_torch = torch.empty_like(out_fast)
        l1_free = GradientDistances(features, logits, labels, eps=0.0, k_dims=4)
        l1_free._grad_into(ids, start, out_fast)
        out_torch.copy_(l1_free._grad(ids, start))
        # the same operations, except torch's vectorised float64 sqrt, which is not always
        # correctly rounded (one ulp apart, rarely)
        ulp = torch.finfo(dtype).eps
        torch.testing.assert_close(out_fast, out_torch, rtol=2 * ulp, atol=0)
    # against autograd-free explicit gradients in float64
    g = torch.cat(
        [
            (logits.double().softmax(1) - torch.nn.functional.one_hot(labels, 5))[:, :, None]
            * torch.cat([features.double(), torch.ones(90, 1, dtype=torch.float64)], 1)[:, None],
        ],
        0,
    ).flatten(1)
    explicit = torch.cdist(g, g)
    got = GradientDistances(features, logits, labels, eps=0.0, k_dims=4).dense()
    torch.testing.assert_close(got.double(), explicit, rtol=1e-5, atol=1e-5)


@needs_compiled
def test_coverage_gains_match_a_float64_loop_and_ignore_the_other_rows():
    gen = torch.Generator().manual_seed(5)
    sim = torch.randn(40, 53, generator=gen)  # 53: six 8-wide steps and a tail of 5
    cov = torch.randn(53, generator=gen).clamp(min=0)
    out = torch.empty(40)
    l1.coverage_gains(sim, torch.arange(40), cov, out)
    brute = (sim.double() - cov.double()).clamp(min=0).sum(1)
    torch.testing.assert_close(out.double(), brute, rtol=1e-6, atol=0)
    alone = torch.empty(3)
    l1.coverage_gains(sim, torch.tensor([17, 3, 17]), cov, alone)
    assert torch.equal(alone, out[[17, 3, 17]])
    block = torch.empty(2)
    l1.coverage_gains(sim[[3, 17]].clone(), torch.tensor([1, 0]), cov, block)
    assert torch.equal(block, out[[17, 3]])


@needs_compiled
def test_facility_location_picks_are_the_same_with_and_without_the_compiled_gains(monkeypatch):
    from replay_lcmat.greedy import maximize
    from replay_lcmat.submodular import FacilityLocation

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(120, 6, generator=gen)
    sim = torch.cdist(x, x).max() - torch.cdist(x, x)
    fast = maximize(FacilityLocation(sim), 15)
    monkeypatch.setattr(l1, "_gains_compiled", None)
    slow = maximize(FacilityLocation(sim), 15)
    assert torch.equal(fast.ranking, slow.ranking)
    torch.testing.assert_close(fast.gains, slow.gains, rtol=1e-5, atol=0)


@needs_compiled
def test_kernels_give_the_same_bits_on_one_and_two_threads():
    from replay_lcmat.selection.distances import GradientDistances

    gen = torch.Generator().manual_seed(7)
    features = torch.randn(150, 16, generator=gen).relu()
    logits = torch.randn(150, 4, generator=gen)
    labels = torch.full((150,), 1)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            dist = GradientDistances(features, logits, labels, eps=0.5, k_dims=6)
            sim = dist.dense()
            gains = torch.empty(150)
            l1.coverage_gains(sim, torch.arange(150), sim[3], gains)
            results.append((sim, gains))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("compiled", [True, False])
def test_mirror_block_copies_the_transposed_block_and_nothing_else(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(l1, "_transpose_compiled", None)
    elif l1._transpose_compiled is None:
        pytest.skip("numba is not installed")
    gen = torch.Generator().manual_seed(8)
    out = torch.randn(70, 70, generator=gen)
    before = out.clone()
    l1.mirror_block(out, 5, 41)  # 36 rows, 29 columns after them: partial 32-tiles
    assert torch.equal(out[41:, 5:41], before[5:41, 41:].T)
    rest = torch.ones(70, 70, dtype=torch.bool)
    rest[41:, 5:41] = False
    assert torch.equal(out[rest], before[rest])
    l1.mirror_block(out, 60, 70)  # the last block: nothing below it
    assert torch.equal(out[rest], before[rest])


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_add_rounds_as_torch_add_of_the_scaled_l1(dtype):
    x = _inputs(700, 11, dtype, seed=9)
    x_t = x.T.contiguous()
    rows = torch.tensor([3, 699, 350, 10, 11])
    base = torch.randn(5, 700 - 40, dtype=dtype, generator=torch.Generator().manual_seed(1))
    fused, twin = base.clone(), base.clone()
    l1.l1_rows(x, x_t, rows, x.new_empty(5, 660), first_column=40, add_to=fused, eps=0.037)
    plain = l1.l1_rows(x, x_t, rows, x.new_empty(5, 660), first_column=40, compiled=False)
    twin.add_(plain.mul_(0.037))
    assert torch.equal(fused, twin)


@needs_compiled
def test_the_first_kernel_call_leaves_torch_threads_as_they_were():
    """Starting numba's pool (its OpenMP layer sets OpenMP's count, which torch shares, to
    NUMBA_NUM_THREADS) must not undo a process's share of the cores: one of two ranks on two
    cores with one thread each would otherwise run torch on two threads after the first kernel
    call. A fresh process, since the pool starts once per process."""
    script = (
        "import torch, numba\n"
        "torch.set_num_threads(1)\n"
        "from replay_lcmat import kernels\n"
        "x = torch.rand(40, 3)\n"
        "kernels.l1_rows(x, x.T.contiguous(), torch.arange(40), x.new_empty(40, 40), "
        "compiled=True)\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["NUMBA_NUM_THREADS"] = "2"  # a pool larger than the share, on any machine
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1"]
