"""Selection kernels: the lazy greedy picks what a plain greedy picks (ties
too), blocked gains round every row alike whatever the block, the L1 kernel is torch.cdist bit
for bit, the blocked dissimilarity is symmetric and matches the materialised one, and the
finiteness checks that replaced the n x n mask still refuse NaN, inf and overflow."""

from __future__ import annotations

import pytest
import torch

from replay_lcmat import submodular
from replay_lcmat.curvature import pairwise_grad_distances
from replay_lcmat.greedy import maximize
from replay_lcmat.selection import lcmat_dissimilarity, lcmat_s, make_selector
from replay_lcmat.selection.distances import l1_distances
from replay_lcmat.submodular import FacilityLocation


def similarity(n, seed, kind, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":  # many exact ties; integer sums are exact in any order
        return torch.randint(-2, 4, (n, n), generator=gen).to(dtype)
    if kind == "duplicates":  # identical rows: ties between candidates all the way
        rows = torch.randn(-(-n // 4), n, generator=gen, dtype=dtype).repeat(4, 1)[:n]
        return rows[torch.randperm(n, generator=gen)]
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    return 6.0 - torch.cdist(x, x)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3 rows of 50 float64 points: every path of the blocked gains runs."""
    monkeypatch.setattr(submodular, "BLOCK_BYTES", 3 * 50 * 8)


def plain_greedy(sim: torch.Tensor, budget: int) -> list[int]:
    """Every gain recomputed at every step in float64, the lowest index on ties."""
    state = torch.zeros(sim.shape[1], dtype=torch.float64)
    picks: list[int] = []
    for _ in range(budget):
        gains = (sim.double() - state).clamp(min=0).sum(1)
        gains[picks] = -float("inf")
        best = gains.max()
        j = int(torch.nonzero(gains == best)[0])
        picks.append(j)
        state = torch.maximum(state, sim[j].double())
    return picks


@pytest.mark.parametrize("kind", ["random", "ties", "duplicates"])
@pytest.mark.parametrize("seed", range(3))
def test_lazy_greedy_picks_what_a_plain_greedy_picks(kind, seed):
    sim = similarity(120, seed, kind)
    assert maximize(FacilityLocation(sim), 40).ranking.tolist() == plain_greedy(sim, 40)


@pytest.mark.parametrize("kind", ["random", "ties", "duplicates"])
@pytest.mark.parametrize("threads", [1, 2])
def test_lazy_equals_naive_with_tiny_blocks_and_threads(kind, threads, small_blocks):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn = FacilityLocation(similarity(50, 4, kind))
        assert fn._block_rows == 3
        naive = maximize(fn, 30, optimizer="naive")
        lazy = maximize(fn, 30, optimizer="lazy")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(lazy.ranking, naive.ranking)
    assert torch.equal(lazy.gains, naive.gains)


def test_a_lone_row_is_rounded_as_in_any_block():
    # 40,000 points: torch would split a one-row sum over threads (another rounding order)
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(5, 40_000, generator=gen)
    fn = FacilityLocation(sim)
    state = torch.rand(40_000, generator=gen) * 0.5
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = fn.gains(state)
        alone = [fn.gains(state, torch.tensor([j])) for j in range(5)]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(torch.cat(alone), together)


def test_blocked_value_and_weights_follow_their_definitions(small_blocks):
    sim = similarity(50, 5, "ties")
    fn = FacilityLocation(sim)
    subset = torch.tensor([7, 3, 30, 12, 3 + 40, 21, 0])  # more than one block, with ties
    assert fn.evaluate(subset) == float(sim[subset].max(0).values.clamp(min=0).sum())
    owner = sim[subset].argmax(0)  # the first maximum: ties to the earlier member
    expected = torch.bincount(owner, minlength=len(subset)).to(sim.dtype)
    assert torch.equal(fn.weights(subset), expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_blocked_finiteness_check_finds_any_non_finite_entry(bad, small_blocks):
    sim = similarity(50, 6, "random")
    sim[37, 11] = bad  # in a later block
    with pytest.raises(ValueError, match="NaN or inf"):
        FacilityLocation(sim)
    FacilityLocation(sim, check_finite=False)  # the caller's own proof is trusted


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,block_rows", [(300, 100, 64), (37, 5, 8), (5, 3, 128), (1, 4, 8)])
def test_l1_kernel_is_cdist_bit_for_bit(dtype, n, k, block_rows):
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(n, k, generator=gen, dtype=dtype) * torch.rand(n, 1, generator=gen, dtype=dtype)
    got = l1_distances(x, block_rows=block_rows)
    assert torch.equal(got, torch.cdist(x, x, p=1))
    assert torch.equal(got, got.T)


def test_blocked_dissimilarity_is_symmetric_and_matches_the_full_matrix():
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(70, 6, generator=gen, dtype=torch.float64).relu()
    z = torch.randn(70, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (70,), generator=gen)
    d = lcmat_dissimilarity(h, z, y, eps=0.0, k_dims=1, block_rows=8)
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(70, dtype=d.dtype))
    torch.testing.assert_close(d, pairwise_grad_distances(h, z, y), rtol=1e-12, atol=1e-12)
    with_l1 = lcmat_dissimilarity(h, z, y, eps=0.3, k_dims=5, block_rows=8)
    # exact products: the block size changes nothing, not even the last bit
    assert torch.equal(with_l1, lcmat_dissimilarity(h, z, y, eps=0.3, k_dims=5))
    assert torch.equal(with_l1, with_l1.T)


@pytest.mark.parametrize("offset", ["max", 1.0])
def test_overflow_is_refused_with_the_remedy(offset):
    gen = torch.Generator().manual_seed(8)
    h = torch.rand(12, 4, generator=gen) * 1e20  # finite, but h . h overflows float32
    z = torch.randn(12, 3, generator=gen)
    y = torch.zeros(12, dtype=torch.long)
    with pytest.raises(ValueError, match="overflow; the inputs are finite but too large"):
        make_selector("lcmat-s", offset=offset).select(features=h, logits=z, labels=y, per_class=3)
    picks = lcmat_s(h.double(), z.double(), y, 3, offset=offset)  # float64 has the range
    assert len(picks) == 3
