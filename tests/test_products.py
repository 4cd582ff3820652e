"""How the gradients' inner products are computed per device (exact on the CPU, float32 on GPUs)."""

import pytest
import torch

from replay_lcmat.selection import lcmat_s, make_selector
from replay_lcmat.selection.distances import GradientDistances
from replay_lcmat.selection.products import resolve_products


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", "exact"), ("cuda", "fast"), ("cuda:1", "fast"), ("mps", "fast")],
)
def test_auto_is_exact_on_the_cpu_and_float32_elsewhere(device, expected):
    assert resolve_products("auto", torch.device(device)) == expected
    assert resolve_products("exact", torch.device(device)) == "exact"
    assert resolve_products("fast", torch.device(device)) == "fast"


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="products must be one of"):
        resolve_products("float64", "cpu")
    with pytest.raises(ValueError, match="products"):
        make_selector("lcmat-s", products="half")


def _class(n=80, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 10, generator=gen).relu()
    logits = torch.randn(n, 4, generator=gen)
    return features, logits, torch.full((n,), 2)


def test_fast_products_stay_in_the_inputs_dtype_and_close_to_exact():
    features, logits, labels = _class()
    fast = GradientDistances(features, logits, labels, eps=0.2, k_dims=5, products="fast")
    exact = GradientDistances(features, logits, labels, eps=0.2, k_dims=5, products="exact")
    assert fast.h[0][0].dtype == torch.float32  # no float64 copy of the features
    assert exact.h[0][0].dtype == torch.float64
    torch.testing.assert_close(fast.dense(), exact.dense(), rtol=1e-4, atol=1e-4)


def test_fast_products_pick_like_exact_ones_on_a_class_without_near_ties():
    features, logits, labels = _class(120, seed=3)
    exact = lcmat_s(features, logits, labels, per_class=8, products="exact")
    fast = lcmat_s(features, logits, labels, per_class=8, products="fast")
    assert torch.equal(exact, fast)
    assert torch.equal(exact, lcmat_s(features, logits, labels, per_class=8))  # CPU: exact


def test_fast_products_turn_tf32_off_and_restore_it():
    from replay_lcmat.selection.products import _no_tf32

    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    with _no_tf32():
        assert getattr(matmul, name) in ("ieee", False)
    assert getattr(matmul, name) == before
