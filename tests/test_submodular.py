"""Facility location and the greedy optimisers: lazy == naive (ties too), the (1 - 1/e) bound
against brute force, value and weights by definition, stochastic greedy reproducibility."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from replay_lcmat.greedy import maximize
from replay_lcmat.submodular import FacilityLocation


def random_similarity(n, seed, integer=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    if integer:  # many exact ties, sums are exact in any order
        return torch.randint(-2, 4, (n, n), generator=gen).to(dtype)
    x = torch.randn(n, 3, generator=gen, dtype=dtype)
    return 5.0 - torch.cdist(x, x)


def value_by_definition(sim, subset):
    return sum(max(0.0, max(float(sim[j, i]) for j in subset)) for i in range(sim.shape[1]))


def greedy_by_definition(sim, budget):
    """Plain-Python greedy on F(S u {j}) - F(S), ties (up to rounding) to the lowest index."""
    picks = []
    for _ in range(budget):
        base = value_by_definition(sim, picks) if picks else 0.0
        best, best_gain = None, -math.inf
        for j in range(sim.shape[0]):
            if j not in picks:
                gain = value_by_definition(sim, picks + [j]) - base
                if gain > best_gain + 1e-9:
                    best, best_gain = j, gain
        picks.append(best)
    return picks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integer", [False, True])
def test_lazy_equals_naive_exactly(seed, integer):
    fn = FacilityLocation(random_similarity(60, seed, integer))
    naive = maximize(fn, 25, optimizer="naive")
    lazy = maximize(fn, 25, optimizer="lazy")
    assert torch.equal(lazy.ranking, naive.ranking)
    assert torch.equal(lazy.gains, naive.gains)


def test_ties_go_to_the_lowest_index():
    sim = torch.ones(6, 6, dtype=torch.float64)  # every candidate covers everything equally
    for optimizer in ("naive", "lazy"):
        assert maximize(FacilityLocation(sim), 4, optimizer=optimizer).ranking.tolist() == [
            0,
            1,
            2,
            3,
        ]


@pytest.mark.parametrize("seed", range(3))
def test_naive_matches_greedy_written_from_the_definition(seed):
    sim = random_similarity(9, seed)
    result = maximize(FacilityLocation(sim), 5, optimizer="naive")
    assert result.ranking.tolist() == greedy_by_definition(sim, 5)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_reaches_the_1_minus_1_over_e_bound(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    sim = torch.rand(8, 8, generator=gen, dtype=torch.float64) * 4 - 1  # some negatives
    fn = FacilityLocation(sim)
    for k in (1, 2, 3):
        best = max(value_by_definition(sim, list(s)) for s in itertools.combinations(range(8), k))
        greedy = fn.evaluate(maximize(fn, k).ranking)
        assert greedy >= (1 - 1 / math.e) * best - 1e-12
        assert greedy <= best + 1e-12


def test_gains_sum_to_the_value_and_prefixes_are_greedy_answers():
    sim = random_similarity(30, 7)
    fn = FacilityLocation(sim)
    result = maximize(fn, 10)
    assert math.isclose(float(result.gains.sum()), fn.evaluate(result.ranking), rel_tol=1e-12)
    assert value_by_definition(sim, result.ranking.tolist()) == pytest.approx(
        fn.evaluate(result.ranking)
    )
    assert torch.equal(maximize(fn, 4).ranking, result.ranking[:4])
    assert (result.gains[:-1] >= result.gains[1:]).all()  # diminishing returns


def test_weights_count_the_points_each_pick_represents():
    sim = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 1.0, 5.0]])
    weights = FacilityLocation(sim).weights(torch.tensor([2, 0]))
    # point 0: best 3.0 from 0; point 1: tie 1.0/1.0 -> the earlier member (2); point 2: 5.0 from 2
    assert weights.tolist() == [2.0, 1.0]


def test_stochastic_greedy_is_reproducible_and_close():
    fn = FacilityLocation(random_similarity(200, 8))
    first = maximize(fn, 20, optimizer="stochastic", generator=torch.Generator().manual_seed(1))
    again = maximize(fn, 20, optimizer="stochastic", generator=torch.Generator().manual_seed(1))
    assert torch.equal(first.ranking, again.ranking)
    assert len(set(first.ranking.tolist())) == 20
    assert fn.evaluate(first.ranking) >= 0.9 * fn.evaluate(maximize(fn, 20).ranking)


def test_bad_input_names_the_problem():
    fn = FacilityLocation(random_similarity(5, 0))
    with pytest.raises(ValueError, match="between 1 and the number of candidates"):
        maximize(fn, 6)
    with pytest.raises(ValueError, match="between 1 and"):
        maximize(fn, 0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        maximize(fn, 2, optimizer="fast")
    with pytest.raises(ValueError, match="NaN or inf"):
        FacilityLocation(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
