"""The streamed pass over half the matrix that bounds every gain (lazy greedy, Minoux 1978).

A block of rows from the diagonal on gives its rows' and, mirrored, its columns' share of
``sum_i max(0, s_ji - cov_i)``; the bounds must never be below a gain as the greedy computes
it (else a pick could change), and close to it (else they save nothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from replay_lcmat import greedy, kernels
from replay_lcmat.greedy import maximize
from replay_lcmat.selection import make_selector
from replay_lcmat.selection.base import ClassInputs
from replay_lcmat.selection.products import exact_dots
from replay_lcmat.selection.streamed import StreamedSimilarity
from replay_lcmat.submodular import FacilityLocation


def distances(n=150, dtype=torch.float32, seed=0, copies=True):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 8, generator=gen, dtype=dtype).relu()
    logits = torch.randn(n, 5, generator=gen, dtype=dtype) * 2
    if copies:  # a fifth of the samples are copies: exact ties between gains
        features[: n // 5], logits[: n // 5] = (
            features[n // 2 : n // 2 + n // 5],
            logits[n // 2 : n // 2 + n // 5],
        )
    labels = torch.zeros(n, dtype=torch.long)
    inputs = ClassInputs(label=0, features=features, logits=logits, labels=labels)
    return make_selector("lcmat-s", eps=0.3, k_dims=6).distances(inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", ["max", 3.0])
@pytest.mark.parametrize("compiled", [True, False])
def test_gain_bounds_hold_every_gain_from_above_and_tightly(dtype, offset, compiled, monkeypatch):
    if not compiled:  # the torch twin (what runs off the CPU)
        monkeypatch.setattr(kernels, "_bound_sums_compiled", None)
    dist = distances(dtype=dtype)
    source = StreamedSimilarity(dist, offset)
    assert source.block_rows == 16  # 10 blocks of rows: columns summed across blocks
    fn = FacilityLocation(source)
    state = fn.initial_state()
    for pick in (3, 77, 140):
        state = fn.update(state, pick)
        bounds = source.gain_bounds(state)
        gains = fn.gains(state).double()
        # an independent sum over the dense similarity, in float64
        d = dist.dense()
        c = d.max() if offset == "max" else torch.tensor(offset, dtype=dtype)
        brute = ((c - d).double() - state.double()).clamp(min=0).sum(1)
        assert (bounds >= gains).all() and (bounds >= brute).all()
        # tight: the same sum over the pass's entries (lower bounds of d, float32 products)
        lower = dist.upper(0, len(d), torch.empty_like(d), lower_bound=True)
        assert (lower <= d).all()
        brute_lower = ((c - lower).double() - state.double()).clamp(min=0).sum(1)
        rtol = 4 * torch.finfo(dtype).eps  # the margin: the gains' rounding to the dtype
        assert torch.allclose(bounds, brute_lower, rtol=rtol, atol=1e-9 * float(brute.max()))


def test_a_candidate_subset_has_no_gain_bounds():
    dist = distances(n=60)
    source = StreamedSimilarity(dist, "max", candidates=torch.arange(0, 60, 2))
    assert source.gain_bounds(torch.zeros(60)) is None
    dense = FacilityLocation(torch.rand(5, 5))
    assert dense.gain_bounds(dense.initial_state()) is None


@pytest.mark.parametrize("offset", ["max", 2.0])
def test_the_lazy_greedy_with_bound_passes_makes_the_naive_picks(offset, monkeypatch):
    """Exact ties included (a fifth of the samples are copies): the bounds only decide which
    rows are refreshed, never a pick or its gain."""
    dist = distances(n=240, seed=3)
    passes = []
    real = StreamedSimilarity.gain_bounds

    def counted(self, cov):
        passes.append(len(cov))
        return real(self, cov)

    monkeypatch.setattr(StreamedSimilarity, "gain_bounds", counted)
    lazy = maximize(FacilityLocation(StreamedSimilarity(dist, offset)), 60, optimizer="lazy")
    assert passes, "no bound pass ran: the test would not see a wrong one"
    naive = maximize(FacilityLocation(StreamedSimilarity(dist, offset)), 60, optimizer="naive")
    assert torch.equal(lazy.ranking, naive.ranking) and torch.equal(lazy.gains, naive.gains)
    d = dist.dense()
    dense = maximize(FacilityLocation((d.max() if offset == "max" else offset) - d), 60)
    assert torch.equal(lazy.ranking, dense.ranking)


def test_a_bound_pass_runs_only_when_most_rows_would_be_refreshed():
    bound = np.array([10.0] * 10 + [1.0])
    at = np.array([0] * 10 + [1])  # ten bounds from step 0, one gain fresh at step 1
    assert greedy._worth_a_bound_pass(bound, at, 1, best=1.0, n=11)  # 10 stale above 1
    assert not greedy._worth_a_bound_pass(bound, at, 1, best=10.0, n=11)  # none above 10
    greedy._tighten(bound, at, 1, np.full(11, 2.0))
    assert bound.tolist() == [2.0] * 10 + [1.0]  # stale bounds lowered, a fresh gain kept
    assert at.tolist() == [0] * 10 + [1]  # still stale


def test_the_queue_of_stale_candidates_has_the_largest_bounds_in_order():
    bound = np.array([5.0, 9.0, 9.0, 9.0, 1.0, 7.0, 8.0])
    at = np.array([0, 0, 0, 0, 0, 1, 0])  # candidate 5 is fresh at step 1
    assert greedy._stale_by_bound(bound, at, 1, count=3).tolist() == [1, 2, 3]
    assert greedy._stale_by_bound(bound, at, 1, count=4).tolist() == [1, 2, 3, 6]
    assert greedy._stale_by_bound(bound, at, 1, count=9).tolist() == [1, 2, 3, 6, 0, 4]
    # ties at the cut: two of the 9s, largest first
    cut = greedy._stale_by_bound(bound, at, 1, count=2).tolist()
    assert len(cut) == 2 and set(cut) <= {1, 2, 3} and cut == sorted(cut)
    assert greedy._stale_by_bound(bound, np.full(7, 1), 1, count=4).tolist() == []


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("mixed_labels", [False, True])
def test_lower_bound_entries_never_exceed_the_exact_ones(scale, mixed_labels):
    """The bound passes' float32 product of 512-wide features, moved by its worst-case error
    (Higham's gamma_k): every entry at most the exact one, and within 1e-3 of it. Mixed labels
    give negative residual products ``e_i . e_j``, where the product must move down."""
    gen = torch.Generator().manual_seed(5)
    n = 700
    features = (torch.randn(n, 512, generator=gen) * scale).relu()
    features[:50] = features[100:150] * (1 + 1e-7)  # near copies: tiny distances
    logits = torch.randn(n, 10, generator=gen) * 3
    labels = torch.randint(0, 10, (n,), generator=gen) if mixed_labels else torch.zeros(n).long()
    inputs = ClassInputs(label=0, features=features, logits=logits, labels=labels)
    dist = make_selector("lcmat-s").distances(inputs)
    if mixed_labels:
        assert (exact_dots(dist.e, dist.e) < 0).any()
    for start, stop in ((0, n), (300, 428)):
        exact = dist.upper(start, stop, torch.empty(stop - start, n - start))
        lower = dist.upper(start, stop, torch.empty(stop - start, n - start), lower_bound=True)
        assert (lower <= exact).all()
        assert (lower < exact).any()  # the float32 product ran (not the exact fallback)
        assert torch.allclose(lower, exact, rtol=1e-3, atol=1e-3 * float(exact.max()))


def test_float64_inputs_bound_with_the_exact_entries():
    dist = distances(n=90, dtype=torch.float64)
    exact = dist.upper(10, 40, torch.empty(30, 80, dtype=torch.float64))
    lower = dist.upper(10, 40, torch.empty(30, 80, dtype=torch.float64), lower_bound=True)
    assert torch.equal(lower, exact)
