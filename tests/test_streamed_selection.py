"""Facility location without an n x n matrix, and the partitioned greedy.

The streamed path (``similarity="streamed"``) must give the dense path's picks, gains and weights
bit for bit (float64 and float32, ties, every offset and optimiser), agree with a brute-force
greedy on materialised gradients, and never make an [n, n] tensor (a dispatch-mode spy sees every
tensor torch produces). ``partitions=p`` is the approximate two-round greedy: valid picks, close
to exact in objective, exact when p = 1 or p = the class size. ``"auto"`` falls back to streamed
when the dense estimate does not fit; bad option values name the choices.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from references import (
    facility_location_picks,
    preconditioned_distances,
    reference_lcmat,
)
from torch.utils._python_dispatch import TorchDispatchMode

from replay_lcmat import resources, submodular
from replay_lcmat.greedy import maximize
from replay_lcmat.resources import NotEnoughMemoryError
from replay_lcmat.selection import lcmat_s, make_selector
from replay_lcmat.selection.base import ClassInputs
from replay_lcmat.selection.distances import (
    BLOCK_ROWS,
    GradientDistances,
    PreconditionedDistances,
)
from replay_lcmat.selection.products import _take, exact_dots, exact_self_dots, exact_split
from replay_lcmat.selection.streamed import StreamedSimilarity, stream_block_rows
from replay_lcmat.submodular import FacilityLocation

FACILITY = ["lcmat-s", "craig", "adacore"]


def toy(n_per_class=(70, 45, 90), d=6, c=4, seed=0, dtype=torch.float64, duplicates=True):
    """Interleaved classes; with ``duplicates``, a quarter of the samples are exact copies of
    others (identical rows: exact ties between candidates all the way)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((m,), k) for k, m in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    features = torch.randn(len(labels), d, generator=gen, dtype=dtype).relu()
    logits = torch.randn(len(labels), c, generator=gen, dtype=dtype) * 2
    if duplicates:
        for k in range(len(n_per_class)):
            members = torch.nonzero(labels == k).flatten()
            copies = members[: len(members) // 4]
            sources = members[len(members) // 2 : len(members) // 2 + len(copies)]
            features[copies], logits[copies] = features[sources], logits[sources]
    return features, logits, labels


def select(name, inputs, budget=12, **options):
    features, logits, labels = inputs
    return make_selector(name, **options).select(
        features=features, logits=logits, labels=labels, per_class=budget
    )


# ------------------------------------------------------------------ dense == streamed, bit for bit
@pytest.mark.parametrize("name", FACILITY)
@pytest.mark.parametrize("offset", ["max", 0.5, 3.0])
@pytest.mark.parametrize("greedy", ["lazy", "naive"])
def test_streamed_picks_and_weights_equal_dense_bit_for_bit(name, offset, greedy):
    inputs = toy(seed=1)
    before = [x.clone() for x in inputs]
    options = {"offset": offset, "greedy": greedy, "weighted": True}
    dense = select(name, inputs, similarity="dense", **options)
    streamed = select(name, inputs, similarity="streamed", **options)
    assert torch.equal(streamed.indices, dense.indices)
    assert torch.equal(streamed.weights, dense.weights)
    assert all(torch.equal(a, b) for a, b in zip(before, inputs, strict=True))  # untouched


@pytest.mark.parametrize("name", FACILITY)
def test_streamed_equals_dense_in_float32_and_with_stochastic_greedy(name):
    inputs = toy(seed=2, dtype=torch.float32)
    for options in ({}, {"greedy": "stochastic", "seed": 3}):
        dense = select(name, inputs, similarity="dense", **options)
        streamed = select(name, inputs, similarity="streamed", **options)
        assert torch.equal(streamed.indices, dense.indices)


@pytest.mark.parametrize("eps,k_dims", [(0.01, 100), (0.5, 4), (2.0, 7)])
def test_lcmat_s_streamed_equals_dense_with_eps_variants(eps, k_dims):
    inputs = toy(seed=3)
    dense = lcmat_s(*inputs, 15, eps=eps, k_dims=k_dims, similarity="dense")
    streamed = lcmat_s(*inputs, 15, eps=eps, k_dims=k_dims, similarity="streamed")
    assert torch.equal(streamed, dense)


@pytest.mark.parametrize("kind", ["lcmat", "craig", "adacore"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_on_demand_equal_the_dense_matrix_bit_for_bit(kind, dtype):
    features, logits, labels = toy(n_per_class=(3 * BLOCK_ROWS + 5,), seed=4, dtype=dtype)
    if kind == "adacore":
        dist = PreconditionedDistances(features, logits, labels, damping=0.01)
    else:
        eps = 0.3 if kind == "lcmat" else 0
        dist = GradientDistances(features, logits, labels, eps=eps, k_dims=5)
    dense = dist.dense()
    assert torch.equal(dense, dense.T)  # exact products: exactly symmetric
    gen = torch.Generator().manual_seed(0)
    for ids in (torch.randperm(len(dense), generator=gen)[:9], torch.tensor([len(dense) - 1, 0])):
        assert torch.equal(dist.rows(ids), dense[ids])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_products_do_not_depend_on_shapes_and_match_float64(dtype):
    gen = torch.Generator().manual_seed(13)
    x = (torch.randn(300, 64, generator=gen, dtype=torch.float64) * 3).relu().to(dtype)
    split = exact_split(x, 1 if dtype == torch.float32 else 3)
    full = exact_dots(split, split)
    ids = torch.randperm(300, generator=gen)[:17]
    assert torch.equal(exact_dots(_take(split, ids), split), full[ids])
    assert torch.equal(exact_dots(split, _take(split, ids)), full[:, ids])
    assert torch.equal(full, full.T)
    assert torch.equal(exact_self_dots(split), full.diagonal())
    reference = x.double() @ x.double().T  # the split's only error: bits below the row's max
    tolerance = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(full, reference, rtol=tolerance, atol=tolerance * 100)


def test_streamed_gains_equal_dense_gains_step_by_step():
    features, logits, labels = toy(n_per_class=(150,), seed=5)
    dist = GradientDistances(features, logits, labels, eps=0.2, k_dims=6)
    d = dist.dense()
    dense = FacilityLocation(d.max() - d)
    streamed = FacilityLocation(StreamedSimilarity(dist, "max"))
    for optimizer in ("lazy", "naive"):
        a = maximize(dense, 40, optimizer=optimizer)
        b = maximize(streamed, 40, optimizer=optimizer)
        assert torch.equal(a.ranking, b.ranking) and torch.equal(a.gains, b.gains)
    state = dense.update(dense.initial_state(), 7)
    assert torch.equal(streamed.gains(state), dense.gains(state))


class MatrixRows:
    """A RowSource over a given matrix (rows handed out one call at a time, as a stream)."""

    block_rows, lazy_chunks = 3, (1, 4)

    def __init__(self, sim):
        self.sim = sim
        self.n_candidates, self.n_points = sim.shape
        self.dtype, self.device = sim.dtype, sim.device

    def rows(self, ids):
        return self.sim[ids].clone()


@pytest.mark.parametrize("kind", ["random", "ties", "duplicates"])
def test_a_row_source_gives_the_matrix_greedy_with_ties(kind):
    gen = torch.Generator().manual_seed(9)
    if kind == "ties":
        sim = torch.randint(-2, 4, (50, 50), generator=gen).double()
    elif kind == "duplicates":
        sim = torch.randn(13, 50, generator=gen, dtype=torch.float64).repeat(4, 1)[:50]
    else:
        x = torch.randn(50, 5, generator=gen, dtype=torch.float64)
        sim = 6.0 - torch.cdist(x, x)
    matrix, stream = FacilityLocation(sim), FacilityLocation(MatrixRows(sim))
    for optimizer in ("lazy", "naive"):
        a, b = maximize(matrix, 30, optimizer=optimizer), maximize(stream, 30, optimizer=optimizer)
        assert torch.equal(a.ranking, b.ranking) and torch.equal(a.gains, b.gains)
    picks = a.ranking[:11]
    assert torch.equal(stream.weights(picks), matrix.weights(picks))
    assert stream.evaluate(picks) == matrix.evaluate(picks)


# ------------------------------------------------------------------ streamed vs brute force
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps,k_dims", [(0.01, 100), (0.5, 4)])
def test_streamed_lcmat_s_matches_the_brute_force_greedy(seed, eps, k_dims):
    features, logits, labels = toy(n_per_class=(9, 12, 7), seed=10 + seed, duplicates=False)
    expected = reference_lcmat(features, logits, labels, 4, eps=eps, k_dims=k_dims)
    got = lcmat_s(features, logits, labels, 4, eps=eps, k_dims=k_dims, similarity="streamed")
    assert got.tolist() == expected


def test_streamed_adacore_matches_the_brute_force_greedy_and_weights():
    features, logits, labels = toy(n_per_class=(11,), seed=20, duplicates=False)
    picks, weights = facility_location_picks(
        preconditioned_distances(features, logits, labels, damping=0.05), 5, weighted=True
    )
    got = select("adacore", (features, logits, labels), 5, damping=0.05, similarity="streamed")
    assert got.indices.tolist() == picks
    assert torch.equal(got.weights, weights)


# ------------------------------------------------------------------ memory: never n x n
class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", FACILITY)
def test_the_streamed_path_never_makes_an_n_by_n_tensor(name):
    n = 300
    features, logits, labels = toy(n_per_class=(n,), d=8, c=2, seed=6, dtype=torch.float32)
    with LargestTensor() as spy:
        select(name, (features, logits, labels), 5, similarity="streamed")
    # blocks of stream_block_rows(n) rows, the cache's single rows, inputs [n, d]; never n^2 / 4
    assert spy.largest <= 2 * stream_block_rows(n) * n < n * n // 4
    with LargestTensor() as dense_spy:  # the spy does see the dense matrix
        select(name, (features, logits, labels), 5, similarity="dense")
    assert dense_spy.largest >= n * n


def test_streamed_estimate_has_no_n_squared_term():
    selector = make_selector("lcmat-s")
    small, large = (selector.streamed_peak_bytes(n, 512, 10, 4) for n in (10_000, 100_000))
    cache = submodular.STREAM_CACHE_BYTES
    assert (large - cache) == pytest.approx(10 * (small - cache), rel=1e-6)  # linear in n
    assert large < 4 * 2**30  # the target: n = 100,000 within 4 GB
    assert selector.peak_bytes(100_000, 512, 10, 4) > 40 * 2**30  # dense: 1.2 n^2 4 bytes


# ------------------------------------------------------------------ auto
def class_inputs(n, dtype=torch.float64):
    features, logits, labels = toy(n_per_class=(n,), d=5, c=3, seed=7, dtype=dtype)
    return ClassInputs(label=0, features=features, logits=logits, labels=labels)


@pytest.mark.slow
def test_auto_chooses_streamed_when_the_dense_estimate_does_not_fit(monkeypatch):
    inputs = class_inputs(1000)
    selector = make_selector("lcmat-s")
    expected = select("lcmat-s", (inputs.features, inputs.logits, inputs.labels), 6)
    assert selector.path(inputs) == "dense"  # plenty of memory here
    monkeypatch.setattr(submodular, "STREAM_CACHE_BYTES", 1 << 16)
    dense_needs = selector.peak_bytes(1000, 5, 3, 8)
    streamed_needs = selector.streamed_peak_bytes(1000, 5, 3, 8)
    assert streamed_needs < dense_needs
    available = (streamed_needs + dense_needs) // 2
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: available)
    assert selector.path(inputs) == "streamed"

    def never(inputs):
        raise AssertionError("auto built the n x n matrix although it does not fit")

    monkeypatch.setattr(selector, "dissimilarity", never)
    got = selector.select(
        features=inputs.features, logits=inputs.logits, labels=inputs.labels, per_class=6
    )
    assert torch.equal(got.indices, expected.indices)
    with pytest.raises(NotEnoughMemoryError, match='pass similarity="streamed"'):
        make_selector("lcmat-s", similarity="dense").path(inputs)


def test_auto_refuses_when_neither_path_fits(monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    inputs = class_inputs(50)
    with pytest.raises(NotEnoughMemoryError, match="streamed similarity .* does not fit either"):
        make_selector("craig").path(inputs)
    with pytest.raises(NotEnoughMemoryError, match="the streamed similarity needs about"):
        make_selector("craig", similarity="streamed").path(inputs)


# ------------------------------------------------------------------ partitions
def digits_class(label=3):
    """Real data: digits pixels / 16 as features, a nearest-class-mean head as logits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    h = torch.from_numpy(bunch.data).double() / 16
    y = torch.from_numpy(bunch.target).long()
    means = torch.stack([h[y == c].mean(0) for c in range(10)])
    z = h @ means.T - 0.5 * means.square().sum(1)
    keep = y == label
    return h[keep], z[keep], y[keep]


def objective(features, logits, labels, picks, eps=0.01):
    d = GradientDistances(features, logits, labels, eps=eps, k_dims=100).dense()
    return FacilityLocation(d.max() - d).evaluate(picks)


@pytest.mark.parametrize("name", FACILITY)
def test_one_partition_is_the_exact_path(name):
    inputs = toy(seed=8)
    exact = select(name, inputs)
    one = select(name, inputs, partitions=1)
    assert torch.equal(one.indices, exact.indices)
    assert (exact.weights is None and one.weights is None) or torch.equal(
        one.weights, exact.weights
    )


def test_one_sample_per_part_gives_the_exact_picks():
    # p = class size: the union of the parts' picks is the whole class, so round 2 is exact
    features, logits, labels = toy(n_per_class=(40,), seed=9)
    exact = select("craig", (features, logits, labels), 6)
    every = select("craig", (features, logits, labels), 6, partitions=40)
    assert torch.equal(every.indices, exact.indices) and torch.equal(every.weights, exact.weights)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_partitioned_picks_are_valid_and_close_to_exact(p):
    features, logits, labels = digits_class()
    budget = 10
    exact = lcmat_s(features, logits, labels, budget)
    got = lcmat_s(features, logits, labels, budget, partitions=p)
    assert len(got) == budget and len(set(got.tolist())) == budget
    assert int(got.min()) >= 0 and int(got.max()) < len(labels)
    ratio = objective(features, logits, labels, got) / objective(features, logits, labels, exact)
    # measured 0.999 / 0.994 / 0.996 for p = 2 / 4 / 8 (the objective carries n C, so also the
    # sum of distances to the nearest pick: measured within 1.7% of exact)
    assert ratio >= 0.98
    d = GradientDistances(features, logits, labels, eps=0.01, k_dims=100).dense()
    assert float(d[got].min(0).values.sum()) <= 1.05 * float(d[exact].min(0).values.sum())


def test_partitioned_weights_cover_the_class_and_picks_stay_in_class():
    features, logits, labels = toy(seed=11)
    result = select("craig", (features, logits, labels), 7, partitions=3)
    for k, size in enumerate((70, 45, 90)):
        part = slice(7 * k, 7 * (k + 1))
        assert (labels[result.indices[part]] == k).all()
        assert float(result.weights[part].sum()) == size


def test_more_partitions_than_samples_warn_and_use_one_sample_per_part():
    features, logits, labels = toy(n_per_class=(12,), seed=12)
    exact = select("craig", (features, logits, labels), 3)
    with pytest.warns(UserWarning, match="partitions=50 is more than the class's 12 samples"):
        got = select("craig", (features, logits, labels), 3, partitions=50)
    assert torch.equal(got.indices, exact.indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select("craig", (features, logits, labels), 3, partitions=12)  # no warning


# ------------------------------------------------------------------ bad option values
@pytest.mark.parametrize("name", FACILITY)
def test_bad_similarity_and_partitions_name_the_choices(name):
    with pytest.raises(ValueError, match="similarity must be one of 'auto', 'dense', 'streamed'"):
        make_selector(name, similarity="fast")
    for bad in (0, -2, 1.5, "2", True, None):
        with pytest.raises(ValueError, match="partitions must be"):
            make_selector(name, partitions=bad)


def test_the_offset_pass_bounds_the_first_gains_from_above_and_tightly():
    """The streamed offset pass also gives upper bounds of the first gains (n C - row sums of
    d, plus a rounding margin): never below a gain as computed, and within the margin of it."""
    features, logits, labels = toy(n_per_class=(90,), dtype=torch.float32, duplicates=True)
    inputs = ClassInputs(label=0, features=features, logits=logits, labels=labels)
    source = StreamedSimilarity(make_selector("lcmat-s", eps=0.3).distances(inputs), "max")
    fn = FacilityLocation(source)
    gains = fn.gains(fn.initial_state()).double()
    bounds = source.initial_bounds
    assert bounds is not None and bounds.shape == gains.shape
    assert (bounds >= gains).all()
    margin = 4 * 90 * float(source.c) * torch.finfo(torch.float32).eps / 2
    assert (bounds - gains).max() <= 2 * margin
    # a float offset or a candidate subset gives none: the first gains are computed
    assert StreamedSimilarity(source.distances, 3.0).initial_bounds is None


def test_a_chunk_larger_than_the_cache_is_made_once(monkeypatch):
    """Rows of a chunk come out of the one product that made them, never made again because
    the chunk pushed its own first rows out of a smaller cache; the cache keeps the first."""
    features, logits, labels = toy(n_per_class=(120,), seed=4, dtype=torch.float32)
    dist = GradientDistances(features, logits, labels, eps=0.2, k_dims=5)
    monkeypatch.setattr(submodular, "STREAM_CACHE_BYTES", 3 * 120 * 4)  # three rows
    source = StreamedSimilarity(dist, "max")
    calls = []
    real = dist.rows
    monkeypatch.setattr(dist, "rows", lambda ids: calls.append(len(ids)) or real(ids))
    ids = torch.tensor([50, 3, 77, 9, 110, 64, 3])
    got = source.rows(ids)
    assert calls == [6]  # the six distinct rows, in one call
    assert torch.equal(got, (source.c - dist.dense())[ids])
    assert list(source._cache) == [77, 3, 50]  # the chunk's first rows, the first newest
    source.rows(torch.tensor([50]))
    assert calls == [6]  # from the cache
