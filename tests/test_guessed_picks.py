"""Guessed first picks: the streamed offset pass also bounds the gains after them.

The bounds are summed before ``C`` is known (``C`` cancels in exact arithmetic), so they carry a
rounding allowance; they must never be below a gain as the greedy computes it once those picks
are made, and they only save bound passes: the picks stay the exact greedy's.
"""

from __future__ import annotations

import pytest
import torch
from test_gain_bounds import distances

from replay_lcmat import kernels
from replay_lcmat.greedy import maximize
from replay_lcmat.selection import streamed
from replay_lcmat.selection.streamed import StreamedSimilarity
from replay_lcmat.submodular import FacilityLocation


@pytest.fixture
def guesses_on_small_classes(monkeypatch):
    monkeypatch.setattr(streamed, "GUESS_MIN_POINTS", 100)
    monkeypatch.setattr(streamed, "GUESS_SAMPLE", 64)


@pytest.mark.usefixtures("guesses_on_small_classes")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("compiled", [True, False])
def test_later_bounds_hold_every_gain_after_their_picks(dtype, compiled, monkeypatch):
    if not compiled:  # the torch twin (what runs off the CPU)
        monkeypatch.setattr(kernels, "_bound_sums_compiled", None)
    dist = distances(n=300, dtype=dtype, copies=False)
    source = StreamedSimilarity(dist, "max")
    assert len(source.later_bounds) == 1 + streamed.GUESS_SECONDS  # first; first and a second
    fn = FacilityLocation(source)
    d = dist.dense()
    s = d.max() - d
    n = len(d)
    for picks, bounds in source.later_bounds.items():
        state = fn.initial_state()
        for j in sorted(picks):
            state = fn.update(state, j)
        gains = fn.gains(state).double()
        brute = (s.double() - state.double()).clamp(min=0).sum(1)  # float64, independent
        assert (bounds >= gains).all() and (bounds >= brute).all()
        unit = torch.finfo(dtype).eps / 2
        slack = 4 * n * unit * float(s.max()) + 1e-9 * float(brute.max())
        assert torch.allclose(bounds, brute, rtol=4 * torch.finfo(dtype).eps, atol=slack)


@pytest.mark.usefixtures("guesses_on_small_classes")
def test_the_guesses_are_the_greedy_picks_on_a_clear_class_and_spare_bound_passes(monkeypatch):
    dist = distances(n=400, seed=1, copies=False)
    passes = []
    real = StreamedSimilarity.gain_bounds

    def counted(self, cov):
        passes.append(1)
        return real(self, cov)

    monkeypatch.setattr(StreamedSimilarity, "gain_bounds", counted)
    monkeypatch.setattr(streamed, "GUESS_SAMPLE", 400)  # the sample is the class: no misses
    source = StreamedSimilarity(dist, "max")
    picks = maximize(FacilityLocation(source), 40).ranking.tolist()
    assert frozenset(picks[:1]) in source.later_bounds
    assert frozenset(picks[:2]) in source.later_bounds
    with_guesses, passes[:] = len(passes), []
    monkeypatch.setattr(streamed, "GUESS_MIN_POINTS", 10**9)
    plain = StreamedSimilarity(dist, "max")
    assert plain.later_bounds == {}
    assert maximize(FacilityLocation(plain), 40).ranking.tolist() == picks
    assert with_guesses < len(passes)  # the passes after the first two picks are spared


@pytest.mark.usefixtures("guesses_on_small_classes")
@pytest.mark.parametrize("seed", [3, 4])
def test_with_guesses_the_lazy_picks_are_the_naive_and_the_dense_picks(seed):
    """Exact ties included: the guessed bounds only decide which rows are refreshed."""
    dist = distances(n=240, seed=seed)
    source = StreamedSimilarity(dist, "max")
    assert source.later_bounds
    lazy = maximize(FacilityLocation(source), 60, optimizer="lazy")
    naive = maximize(FacilityLocation(StreamedSimilarity(dist, "max")), 60, optimizer="naive")
    assert torch.equal(lazy.ranking, naive.ranking) and torch.equal(lazy.gains, naive.gains)
    d = dist.dense()
    dense = maximize(FacilityLocation(d.max() - d), 60)
    assert torch.equal(lazy.ranking, dense.ranking) and torch.equal(lazy.gains, dense.gains)


def test_small_classes_and_candidate_subsets_make_no_guesses():
    dist = distances(n=200)
    assert StreamedSimilarity(dist, "max").later_bounds == {}  # below GUESS_MIN_POINTS
    subset = StreamedSimilarity(dist, "max", candidates=torch.arange(0, 200, 2))
    assert not subset.later_bounds
    assert StreamedSimilarity(dist, 2.0).later_bounds is None  # C given: no offset pass
