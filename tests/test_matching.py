"""The mean-matching objectives of LCMat-S (objective="bound" / "joint") against brute force:
every greedy step must be the exhaustive argmin of the objective written out with explicit
per-sample gradients and Hessians."""

import pytest
import torch

from replay_lcmat.curvature import (
    last_layer_diag_hessians,
    last_layer_grads,
    top_variance_coordinates,
)
from replay_lcmat.selection import make_selector
from replay_lcmat.selection.geometry import herding_order
from replay_lcmat.selection.matching import bound_order, joint_order


def one_class(n=12, d=4, c=3, seed=0, label=1):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    return features, logits, torch.full((n,), label, dtype=torch.long)


def brute_force(objective, n, budget):
    """Greedy by exhaustion: step t takes the j minimising objective(picks + [j])."""
    picks = []
    for _ in range(budget):
        values = {j: float(objective(picks + [j])) for j in range(n) if j not in picks}
        best = min(values, key=values.get)
        ordered = sorted(values.values())
        assert len(ordered) == 1 or ordered[1] - ordered[0] > 1e-9  # no tie on these inputs
        picks.append(best)
    return picks


@pytest.mark.parametrize("gap", ["max", "l1"])
@pytest.mark.parametrize("eps", [0.0, 0.3, 2.0])
def test_bound_each_step_is_the_exhaustive_argmin(gap, eps):
    features, logits, labels = one_class()
    k = 5
    g = last_layer_grads(features, logits, labels)  # [n, c (d + 1)], built explicitly
    coords = top_variance_coordinates(features, logits, k)
    lam = last_layer_diag_hessians(features, logits)[:, coords]

    def objective(s):
        grad_gap = torch.linalg.vector_norm(g.mean(0) - g[s].mean(0))
        diff = (lam.mean(0) - lam[s].mean(0)).abs()
        return grad_gap + eps * (diff.max() if gap == "max" else diff.sum())

    expected = brute_force(objective, len(labels), 7)
    got = bound_order(features, logits, labels, 7, eps=eps, k_dims=k, gap=gap)
    assert got.tolist() == expected


@pytest.mark.parametrize("w,c", [(1.0, 0.0), (0.0, 1.0), (1.0, 0.5), (3.0, 2.0)])
def test_joint_each_step_is_the_exhaustive_argmin(w, c):
    features, logits, labels = one_class(seed=3)
    k = 6
    g = last_layer_grads(features, logits, labels)
    lam = last_layer_diag_hessians(features, logits)[
        :, top_variance_coordinates(features, logits, k)
    ]

    def unit(x):  # each block scaled to unit RMS norm over the class
        return x / x.square().sum(1).mean().sqrt()

    blocks = [(unit(features), 1.0), (unit(g), w), (unit(lam), c)]

    def objective(s):
        return sum(wt * (x.mean(0) - x[s].mean(0)).square().sum() for x, wt in blocks)

    expected = brute_force(objective, len(labels), 8)
    got = joint_order(features, logits, labels, 8, gradient_weight=w, curvature_weight=c, k_dims=k)
    assert got.tolist() == expected


def test_joint_without_gradient_and_curvature_is_herding():
    for seed in range(3):
        features, logits, labels = one_class(n=200, d=16, c=5, seed=seed)
        features = features.float()
        got = joint_order(
            features, logits.float(), labels, 30, gradient_weight=0, curvature_weight=0
        )
        assert torch.equal(got, herding_order(features, 30))


def test_selector_objectives_per_class_and_unweighted():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(60, 8, generator=g)
    logits = torch.randn(60, 3, generator=g)
    labels = torch.arange(60) % 3
    for objective in ("bound", "joint"):
        selector = make_selector("lcmat-s", objective=objective, eps=0.1)
        result = selector.select(features=features, logits=logits, labels=labels, per_class=4)
        assert result.weights is None
        for c in range(3):
            members = torch.nonzero(labels == c).flatten()
            part = (features[members], logits[members], labels[members])
            if objective == "bound":
                local = bound_order(*part, 4, eps=0.1)
            else:
                local = joint_order(*part, 4, gradient_weight=1.0, curvature_weight=0.5)
            assert result.indices[4 * c : 4 * c + 4].tolist() == members[local].tolist()
    with pytest.raises(ValueError, match="weighted=True applies to objective='facility'"):
        make_selector("lcmat-s", objective="bound", weighted=True)
    with pytest.raises(ValueError, match="objective"):
        make_selector("lcmat-s", objective="bounds")


@pytest.mark.parametrize("name", ["lcmat-s", "craig"])
def test_facility_weights_sum_to_the_class_size(name):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(90, 6, generator=g)
    logits = torch.randn(90, 4, generator=g)
    labels = torch.cat([torch.zeros(50), torch.ones(25), torch.full((15,), 3)]).long()
    result = make_selector(name, weighted=True).select(
        features=features, logits=logits, labels=labels, per_class=5
    )
    picked = labels[result.indices]
    for c, size in ((0, 50), (1, 25), (3, 15)):
        assert float(result.weights[picked == c].sum()) == pytest.approx(size)
        assert (result.weights[picked == c] >= 1).all()  # each pick covers at least itself
