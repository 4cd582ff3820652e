"""Selection API: LCMat-S against a brute-force reference, eps=0 == Craig, golden picks on digits,
every registered selector's contract, reproducibility, and bad input."""

from __future__ import annotations

import pytest
import torch
from references import reference_lcmat
from torch import nn

from replay_lcmat.curvature import last_layer_diag_hessians, last_layer_grads
from replay_lcmat.selection import (
    SELECTORS,
    available_selectors,
    class_budgets,
    extract_outputs,
    lcmat_dissimilarity,
    lcmat_s,
    make_selector,
)
from replay_lcmat.selection.distances import preconditioned_grad_distances
from replay_lcmat.selection.engine import fit_budgets

# the selectors of the paper's tables: the registry holds at least these
PAPER_NAMES = [
    "uniform",
    "herding",
    "kcenter",
    "contextual-diversity",
    "least-confidence",
    "entropy",
    "margin",
    "craig",
    "gradmatch",
    "glister",
    "adacore",
    "lcmat-s",
]


def toy(n_per_class=(15, 12, 18), d=5, c=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((m,), k) for k, m in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=gen)]  # classes interleaved
    features = torch.randn(len(labels), d, generator=gen, dtype=dtype).relu()
    logits = torch.randn(len(labels), c, generator=gen, dtype=dtype) * 2
    return features, logits, labels


# ---------------------------------------------------------------- brute-force reference
# reference_lcmat (tests/references.py): autograd gradients and Hessians, every distance
# materialised, naive greedy from the definition of F.


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps,k_dims", [(0.01, 100), (0.5, 4), (2.0, 7)])
def test_lcmat_s_matches_the_brute_force_reference(seed, eps, k_dims):
    features, logits, labels = toy(seed=seed)
    expected = reference_lcmat(features, logits, labels, 4, eps=eps, k_dims=k_dims)
    for greedy in ("lazy", "naive"):
        got = lcmat_s(features, logits, labels, 4, eps=eps, k_dims=k_dims, greedy=greedy)
        assert got.tolist() == expected


def test_lcmat_dissimilarity_matches_materialised_and_stays_float64():
    features, logits, labels = toy(n_per_class=(20,), c=4, seed=3)
    d = lcmat_dissimilarity(features, logits, labels, eps=0.3, k_dims=6)
    g = last_layer_grads(features, logits, labels)
    lam = last_layer_diag_hessians(features, logits)
    top = torch.sort(lam.var(0, unbiased=False), descending=True, stable=True).indices[:6]
    expected = torch.cdist(g, g) + 0.3 * torch.cdist(lam[:, top], lam[:, top], p=1)
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("offset", ["max", 0.5, 3.0])
def test_eps_zero_gives_exactly_craig(offset):
    features, logits, labels = toy(seed=4)
    craig = make_selector("craig", offset=offset).select(
        features=features, logits=logits, labels=labels, per_class=6
    )
    got = lcmat_s(features, logits, labels, 6, eps=0, offset=offset)
    assert torch.equal(got, craig.indices)


def test_eps_changes_the_picks_somewhere():
    features, logits, labels = toy(seed=5)
    assert not torch.equal(
        lcmat_s(features, logits, labels, 6, eps=0), lcmat_s(features, logits, labels, 6, eps=5.0)
    )


# ---------------------------------------------------------------- golden regression on digits
def digits_outputs():
    """Real data with no training: pixels / 16 as features, a nearest-class-mean head as logits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    h = torch.from_numpy(bunch.data).double() / 16
    y = torch.from_numpy(bunch.target).long()
    means = torch.stack([h[y == c].mean(0) for c in range(10)])
    z = h @ means.T - 0.5 * means.square().sum(1)
    return h, z, y


# Generated once by reference_lcmat(*digits_outputs(), per_class=3, eps=0.05, k_dims=100)
# (the brute-force implementation), then frozen: catches silent changes in selection.
DIGITS_GOLDEN = [
    1545,
    1541,
    126,
    1120,
    456,
    991,
    310,
    1718,
    1402,
    345,
    1428,
    1730,
    1539,
    1526,
    353,
    1075,
    885,
    938,
    1261,
    360,
    834,
    983,
    1622,
    438,
    148,
    1286,
    1026,
    1792,
    655,
    1676,
]


def test_golden_lcmat_s_picks_on_digits():
    h, z, y = digits_outputs()
    got = lcmat_s(h, z, y, 3, eps=0.05)
    assert got.tolist() == DIGITS_GOLDEN


# ---------------------------------------------------------------- registry and shared contract
def test_registry_lists_the_twelve_methods_with_a_paper_each():
    described = available_selectors()
    assert set(PAPER_NAMES) <= set(described) and list(described) == list(SELECTORS)
    for name, line in described.items():
        assert line and "\n" not in line and SELECTORS[name].paper in line
    assert SELECTORS["LCMat-S"] is SELECTORS["lcmat-s"]  # one case rule: any case finds it
    with pytest.raises(ValueError, match=r"unknown selection method 'lcmats'\. Did you mean"):
        make_selector("lcmats")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epsilon'\].*accepted.*'eps'"):
        make_selector("lcmat-s", epsilon=0.1)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_is_class_balanced_ordered_and_reproducible(name):
    features, logits, labels = toy(seed=6)
    sizes = {0: 15, 1: 12, 2: 18}
    kwargs = dict(features=features, logits=logits, labels=labels)
    first = make_selector(name).select(**kwargs, per_class=4)
    again = make_selector(name).select(**kwargs, per_class=4)
    assert torch.equal(first.indices, again.indices)
    assert first.indices.dtype == torch.long and len(set(first.indices.tolist())) == 12
    assert labels[first.indices].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    if first.weights is not None:
        assert first.weights.shape == (12,) and (first.weights >= 0).all()
    # fraction: round half up per class, at least 1
    by_fraction = make_selector(name).select(**kwargs, fraction=0.1)
    assert labels[by_fraction.indices].bincount().tolist() == [
        max(1, int(0.1 * sizes[c] + 0.5)) for c in range(3)
    ]


@pytest.mark.parametrize(
    "name", ["herding", "kcenter", "craig", "adacore", "lcmat-s", "gradmatch", "glister"]
)
def test_greedy_methods_rank_so_prefixes_are_smaller_budgets(name):
    features, logits, labels = toy(seed=7)
    kwargs = dict(features=features, logits=logits, labels=labels)
    big = make_selector(name).select(**kwargs, per_class=6).indices.view(3, 6)
    small = make_selector(name).select(**kwargs, per_class=3).indices.view(3, 3)
    assert torch.equal(big[:, :3], small)


def test_seed_changes_random_methods_only_through_the_seed():
    features, logits, labels = toy(seed=8)
    picks = {
        s: make_selector("uniform", seed=s).select(labels=labels, per_class=5).indices
        for s in (0, 1)
    }
    assert not torch.equal(picks[0], picks[1])
    lazy = make_selector("lcmat-s", greedy="stochastic", seed=3)
    a = lazy.select(features=features, logits=logits, labels=labels, per_class=5).indices
    b = lazy.select(features=features, logits=logits, labels=labels, per_class=5).indices
    assert torch.equal(a, b)
    assert lazy.get_params()["seed"] == 3 and make_selector("uniform").get_params() == {"seed": 0}
    assert "seed" not in make_selector("herding").get_params()


def test_weights_craig_counts_and_optional_for_lcmat():
    features, logits, labels = toy(seed=9)
    kwargs = dict(features=features, logits=logits, labels=labels, per_class=3)
    craig = make_selector("craig").select(**kwargs)
    assert craig.weights.view(3, 3).sum(1).tolist() == [15.0, 12.0, 18.0]
    assert make_selector("lcmat-s").select(**kwargs).weights is None
    weighted = make_selector("lcmat-s", weighted=True).select(**kwargs)
    assert weighted.weights.sum() == len(labels)


# ---------------------------------------------------------------- baselines vs brute force
def test_herding_and_kcenter_follow_their_definitions():
    features, _, labels = toy(n_per_class=(25,), seed=10)
    order = make_selector("herding").select(features=features, labels=labels, per_class=4).indices
    chosen, target = [], features.mean(0)
    for _ in range(4):
        gaps = [
            float((features[chosen + [j]].mean(0) - target).norm())
            if j not in chosen
            else float("inf")
            for j in range(25)
        ]
        chosen.append(min(range(25), key=gaps.__getitem__))
    assert order.tolist() == chosen
    centers = (
        make_selector("kcenter", seed=2)
        .select(features=features, labels=labels, per_class=5)
        .indices
    )
    for t in range(1, 5):
        dist = torch.cdist(features, features[centers[:t]]).min(1).values
        assert int(dist.argmax()) == int(centers[t])


def test_uncertainty_orders_match_numpy_scores():
    import numpy as np

    _, logits, labels = toy(n_per_class=(30,), c=4, seed=11)
    p = torch.softmax(logits, 1).numpy()
    top2 = -np.sort(-p, axis=1)[:, :2]
    scores = {
        "least-confidence": 1 - p.max(1),
        "entropy": -(p * np.log(p)).sum(1),
        "margin": top2[:, 1] - top2[:, 0],
    }
    for name, score in scores.items():
        got = make_selector(name).select(logits=logits, labels=labels, per_class=5).indices
        assert got.tolist() == np.argsort(-score, kind="stable")[:5].tolist()


def test_adacore_distances_match_materialised_preconditioned_gradients():
    features, logits, labels = toy(n_per_class=(10,), seed=12)
    u = last_layer_grads(features, logits, labels) / (
        last_layer_diag_hessians(features, logits) + 0.01
    )
    got = preconditioned_grad_distances(features, logits, labels, damping=0.01)
    torch.testing.assert_close(got, torch.cdist(u, u), rtol=1e-7, atol=1e-7)


def test_gradmatch_first_pick_and_weights_by_materialised_gradients():
    features, logits, labels = toy(n_per_class=(20,), seed=13)
    g = last_layer_grads(features, logits, labels)
    result = make_selector("gradmatch", ridge=1e-6).select(
        features=features, logits=logits, labels=labels, per_class=5
    )
    assert int(result.indices[0]) == int((g @ g.sum(0)).argmax())
    # refitting the weights is non-negative least squares: no feasible move helps (KKT)
    a = g[result.indices].T
    residual = a @ result.weights - g.sum(0)
    grad = a.T @ residual + 1e-6 * float(g.square().sum(1).mean()) * result.weights
    assert (result.weights >= 0).all()
    assert (grad[result.weights > 0].abs() < 1e-6 * float(g.sum(0).norm() ** 2)).all()
    assert (grad[result.weights == 0] > -1e-9).all()


def test_glister_taylor_update_matches_an_explicit_head_update():
    gen = torch.Generator().manual_seed(14)
    head = nn.Linear(5, 3).double()
    h = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    y = torch.zeros(20, dtype=torch.long)
    with torch.no_grad():
        z = head(h)
    picks = (
        make_selector("glister", eta=0.5)
        .select(features=h, logits=z, labels=y, per_class=3)
        .indices
    )
    g0 = last_layer_grads(h, z, y)
    theta = torch.cat([head.bias.detach(), head.weight.detach().flatten()])
    chosen = []
    for _ in range(3):
        b, w = theta[:3], theta[3:].view(3, 5)
        val = last_layer_grads(h, h @ w.T + b, y).mean(0)
        score = g0 @ val
        score[chosen] = -torch.inf
        j = int(score.argmax())
        chosen.append(j)
        theta = theta - 0.5 * g0[j]
    assert picks.tolist() == chosen


# ---------------------------------------------------------------- extractor
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.classifier = nn.Linear(8, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_extractor_single_pass_eval_mode_restored():
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(37, 1, 4, 4)
    y = torch.randint(0, 3, (37,))
    model.train()
    out = extract_outputs(model, x, y, stats="running", batch_size=8)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(out.features, model.features(x))
        torch.testing.assert_close(out.logits, model(x))
    assert torch.equal(out.labels, y) and not out.features.requires_grad


def test_extractor_reads_image_data_and_models_without_the_contract():
    from replay_lcmat.data import ImageData

    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    data = ImageData(images, torch.arange(10) % 2, ("a", "b"), (0.5,), (0.25,))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 2))
    out = extract_outputs(plain, data, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, plain(data.normalized()))
        torch.testing.assert_close(out.features, plain[:3](data.normalized()))
    assert out.labels.tolist() == (torch.arange(10) % 2).tolist()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(per_class=0), "positive int"),
        (dict(per_class=-2), "positive int"),
        (dict(per_class={0: 2, 5: 1}), "class 5 has no samples"),
        (dict(per_class={0: 0}), "positive int"),
        (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (dict(), "exactly one of per_class"),
        (dict(per_class=2, fraction=0.1), "exactly one of per_class"),
    ],
)
def test_bad_budgets_raise_clear_errors(kwargs, message):
    features, logits, labels = toy(seed=15)
    with pytest.raises(ValueError, match=message):
        make_selector("lcmat-s").select(features=features, logits=logits, labels=labels, **kwargs)


def test_a_class_below_its_budget_is_taken_whole_with_one_warning():
    features, logits, labels = toy(seed=16)
    with pytest.warns(UserWarning, match="class 1 has only 12 sample.*fewer than the 14") as caught:
        got = lcmat_s(features, logits, labels, 14)
    assert len(caught) == 1
    assert labels[got].bincount().tolist() == [14, 12, 14]
    # ranked by the selector like any class: the whole class is its full greedy order
    members = torch.nonzero(labels == 1).flatten()
    alone = lcmat_s(features[members], logits[members], labels[members], 12)
    assert torch.equal(got[labels[got] == 1], members[alone])
    assert class_budgets(labels, per_class={1: 50}) == {1: 50}
    with pytest.warns(UserWarning, match="class 1 has only 12 sample.*fewer than the 50"):
        assert fit_budgets({1: 12, 2: 3}, {1: 50, 2: 3}) == {1: 12, 2: 3}


@pytest.mark.parametrize("bad", ["features", "logits"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_rejected(bad, value):
    inputs = dict(zip(("features", "logits", "labels"), toy(seed=17), strict=True))
    inputs[bad] = inputs[bad].clone()
    inputs[bad][3, 1] = value
    with pytest.raises(ValueError, match=f"{bad} contains NaN or inf in 1 of 45 rows"):
        make_selector("craig").select(**inputs, per_class=2)


def test_shape_and_presence_errors():
    features, logits, labels = toy(seed=18)
    with pytest.raises(ValueError, match="features has 44 rows but labels has 45"):
        lcmat_s(features[:-1], logits, labels, 2)
    with pytest.raises(ValueError, match="2-D float tensor"):
        lcmat_s(features[:, 0], logits, labels, 2)
    with pytest.raises(ValueError, match="this method needs features"):
        make_selector("herding").select(logits=logits, labels=labels, per_class=2)
    with pytest.raises(ValueError, match="labels is empty"):
        make_selector("uniform").select(labels=torch.zeros(0, dtype=torch.long), per_class=1)
    with pytest.raises(ValueError, match="out of range for 3 logits"):
        lcmat_s(features, logits, labels + 1, 2)


def test_unknown_method_and_options_name_the_fix():
    with pytest.raises(
        ValueError, match="unknown selection method 'nope'. Known: .*uniform, herding"
    ):
        make_selector("nope")
    with pytest.raises(ValueError, match="unknown option.*'epsilon'.* for selection method"):
        make_selector("lcmat-s", epsilon=3)
    with pytest.raises(ValueError, match="offset must be 'max'"):
        make_selector("craig", offset="min")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    features, logits, labels = toy(seed=19)
    cpu = lcmat_s(features, logits, labels, 4)
    gpu = lcmat_s(features.to("cuda"), logits.to("cuda"), labels.to("cuda"), 4)
    assert torch.equal(cpu, gpu)


def test_blocked_l1_distances_equal_a_pairwise_loop():
    from replay_lcmat.selection.distances import l1_distances

    x = torch.rand(37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loop = torch.tensor([[float((a - b).abs().sum()) for b in x] for a in x], dtype=torch.float64)
    got = l1_distances(x, block_rows=8)  # several blocks, the last one partial
    torch.testing.assert_close(got, loop, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, torch.cdist(x, x, p=1))
