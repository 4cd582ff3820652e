"""Closed-form last-layer curvature vs. BackPACK and torch.func; Gram-identity distances and
moment-based Hessian variances vs. their materialised brute-force versions."""

from __future__ import annotations

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import BatchDiagHessian, BatchGrad
from torch import nn

from replay_lcmat import curvature
from replay_lcmat.curvature import (
    backpack_last_layer_curvature,
    diag_hessian_columns,
    diag_hessian_variances,
    last_layer_diag_hessians,
    last_layer_grads,
    pairwise_grad_distances,
    top_variance_coordinates,
)


def random_head(n=9, d=6, c=4, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(d, c).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=gen, dtype=dtype))
        head.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
    h = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=gen)
    return head, h, y


def backpack_reference(head, h, y):
    """BackPACK used directly (not through the library), sum reduction."""
    head = extend(head)
    loss = extend(nn.CrossEntropyLoss(reduction="sum"))
    with backpack(BatchGrad(), BatchDiagHessian()):
        loss(head(h.requires_grad_(True)), y).backward()
    grads = torch.cat([head.bias.grad_batch, head.weight.grad_batch.flatten(1)], dim=1)
    hess = torch.cat([head.bias.diag_h_batch, head.weight.diag_h_batch.flatten(1)], dim=1)
    return grads.detach(), hess.detach()


@pytest.mark.parametrize("seed,shape", [(0, (9, 6, 4)), (1, (5, 3, 7)), (2, (12, 10, 2))])
def test_closed_form_matches_backpack(seed, shape):
    n, d, c = shape
    head, h, y = random_head(n, d, c, seed)
    z = head(h).detach()
    grads, hess = backpack_reference(head, h.clone(), y)
    torch.testing.assert_close(last_layer_grads(h, z, y), grads, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last_layer_diag_hessians(h, z), hess, rtol=1e-10, atol=1e-12)


def test_closed_form_matches_torch_func_autograd():
    head, h, y = random_head(5, 4, 3, seed=3)
    z = head(h).detach()
    params = torch.cat([head.bias.detach(), head.weight.detach().flatten()])
    c, d = 3, 4

    def loss_one(theta, x, t):
        b, w = theta[:c], theta[c:].view(c, d)
        return nn.functional.cross_entropy(
            (x @ w.T + b).unsqueeze(0), t.unsqueeze(0), reduction="sum"
        )

    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, h, y)
    hess = torch.stack(
        [torch.func.hessian(loss_one)(params, h[i], y[i]).diagonal() for i in range(5)]
    )
    torch.testing.assert_close(last_layer_grads(h, z, y), grads)
    torch.testing.assert_close(last_layer_diag_hessians(h, z), hess)


def test_backpack_path_matches_closed_form_and_leaves_head_untouched():
    head, h, y = random_head(8, 5, 3, seed=4)
    grads, hess = backpack_last_layer_curvature(head, h, y)
    z = head(h).detach()
    torch.testing.assert_close(grads, last_layer_grads(h, z, y))
    torch.testing.assert_close(hess, last_layer_diag_hessians(h, z))
    assert not hasattr(head.weight, "grad_batch") and head.weight.grad is None


def test_backpack_path_handles_a_two_layer_head():
    torch.manual_seed(5)
    head = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3)).double()
    h = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    grads, hess = backpack_last_layer_curvature(head, h, y)
    assert grads.shape == hess.shape == (7, 6 + 24 + 3 + 18)
    # independent check of the gradient: autograd sample by sample, params in the documented order
    params = [head[0].bias, head[0].weight, head[2].bias, head[2].weight]
    for i in range(7):
        loss = nn.functional.cross_entropy(head(h[i : i + 1]), y[i : i + 1], reduction="sum")
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(grads[i], expected)


def test_backpack_path_rejects_mean_reduction():
    head, h, y = random_head()
    with pytest.raises(ValueError, match="reduction='sum'"):
        backpack_last_layer_curvature(head, h, y, loss=nn.CrossEntropyLoss())


def test_gram_identity_distances_match_materialised_gradients():
    head, h, y = random_head(30, 7, 5, seed=6)
    z = head(h).detach()
    g = last_layer_grads(h, z, y)
    expected = (g.unsqueeze(0) - g.unsqueeze(1)).norm(dim=2)
    got = pairwise_grad_distances(h, z, y)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(got.diagonal(), torch.zeros(30, dtype=torch.float64))


def test_gram_identity_distances_in_float32_stay_close():
    head, h, y = random_head(40, 16, 10, seed=7, dtype=torch.float32)
    z = head(h).detach()
    g = last_layer_grads(h, z, y).double()
    expected = (g.unsqueeze(0) - g.unsqueeze(1)).norm(dim=2)
    got = pairwise_grad_distances(h, z, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-3)


def test_hessian_variances_from_moments_match_materialised():
    head, h, y = random_head(25, 6, 4, seed=8)
    z = head(h).detach()
    lam = last_layer_diag_hessians(h, z)
    torch.testing.assert_close(diag_hessian_variances(h, z), lam.var(0, unbiased=False))
    k = 10
    expected = torch.sort(lam.var(0, unbiased=False), descending=True, stable=True).indices[:k]
    coords = top_variance_coordinates(h, z, k)
    assert torch.equal(coords, expected)
    torch.testing.assert_close(diag_hessian_columns(h, z, coords), lam[:, coords])
    every = torch.arange(lam.shape[1]).flip(0)  # biases and weights, in any order
    torch.testing.assert_close(diag_hessian_columns(h, z, every), lam[:, every])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hessian_variances_summed_over_blocks_match_and_leave_the_inputs_alone(dtype, monkeypatch):
    monkeypatch.setattr(curvature, "MOMENT_ROWS", 7)  # 25 samples: four blocks, one short
    head, h, y = random_head(25, 6, 4, seed=9)
    h, z = h.to(dtype), head(h).detach().to(dtype)
    before = h.clone()
    lam = last_layer_diag_hessians(h.double(), z.double())
    torch.testing.assert_close(diag_hessian_variances(h, z), lam.var(0, unbiased=False))
    assert torch.equal(h, before)  # float64 features are squared in a copy, not in place


def test_top_variance_coordinates_caps_k_and_breaks_ties_by_index():
    h = torch.zeros(4, 3, dtype=torch.float64)  # every weight coordinate has variance 0
    z = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    coords = top_variance_coordinates(h, z, 100)
    assert len(coords) == 2 * (3 + 1)
    assert coords.tolist() == list(range(8))  # all variances equal (q is the same for every row)


def test_top_variance_coordinates_equal_a_full_stable_sort_for_every_k():
    head, h, y = random_head(10, 4, 3, seed=9)
    h[:, 1] = h[:, 0]  # duplicate feature: weight coordinates tie in pairs
    z = head(h).detach()
    variances = diag_hessian_variances(h, z)
    full = torch.sort(variances, descending=True, stable=True).indices
    for k in range(1, len(full) + 1):
        assert torch.equal(top_variance_coordinates(h, z, k), full[:k])
