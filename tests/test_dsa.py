"""Differentiable Siamese Augmentation: shared parameters, exact transforms, gradients, seeds."""

import math

import pytest
import torch

from replay_lcmat.condensation import DSA, DSAParams
from replay_lcmat.data.dsa import TRANSFORMS


def _images(n=5, c=3, size=8, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_shared_parameters_give_the_same_transform_to_both_batches(kind):
    dsa = DSA(kind)
    real, syn = _images(7, seed=1), _images(3, seed=2)
    both = torch.cat([real, syn])
    for seed in range(5):
        params = dsa.sample((8, 8), torch.Generator().manual_seed(seed))
        joint = dsa.apply(both, params)
        # each image is transformed as if it were alone: batch composition does not matter
        torch.testing.assert_close(dsa.apply(real, params), joint[:7])
        torch.testing.assert_close(dsa.apply(syn, params), joint[7:])
        torch.testing.assert_close(dsa.apply(syn[:1], params), joint[7:8])


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_transform_is_differentiable(kind):
    dsa = DSA(kind, flip=1.0)  # flip always, so the flip case is not the identity
    x = _images(2, c=2, size=5).double().requires_grad_(True)
    params = dsa.sample((5, 5), torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params), (x,))
    dsa.apply(x, params).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_flip_crop_cutout_are_exact():
    x = _images(2)
    dsa = DSA()
    flipped = dsa.apply(x, DSAParams("flip", {"flip": torch.tensor([True, False])}))
    torch.testing.assert_close(flipped[0], x[0].flip(-1))
    torch.testing.assert_close(flipped[1], x[1])

    shifted = dsa.apply(x, DSAParams("crop", {"dy": torch.tensor([0]), "dx": torch.tensor([2])}))
    # output column j samples input column j + 2; the last two columns fall outside (zeros)
    torch.testing.assert_close(shifted[..., :6], x[..., 2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted[..., 6:], torch.zeros_like(x[..., 6:]))

    cut = dsa.apply(x, DSAParams("cutout", {"cy": torch.tensor([4]), "cx": torch.tensor([4])}))
    side = int(8 * dsa.cutout + 0.5)
    zeroed = (cut == 0).all(dim=1)  # per pixel, over channels
    assert zeroed.sum().item() == 2 * side * side
    assert zeroed[:, 2:6, 2:6].all()
    keep = ~zeroed.unsqueeze(1).expand_as(x)
    torch.testing.assert_close(cut[keep], x[keep])


def test_identity_parameters_leave_images_unchanged():
    x = _images(3)
    dsa = DSA()
    one = torch.ones(1)
    for params in (
        DSAParams("scale", {"sx": one, "sy": one}),
        DSAParams("rotate", {"angle": torch.zeros(1)}),
        DSAParams("color", {"brightness": torch.zeros(1), "saturation": one, "contrast": one}),
    ):
        torch.testing.assert_close(dsa.apply(x, params), x, atol=1e-5, rtol=1e-5)


def test_color_formula():
    x = _images(1)
    b, s, c = 0.3, 1.7, 0.6
    out = DSA().apply(
        x,
        DSAParams(
            "color",
            {
                "brightness": torch.tensor([b]),
                "saturation": torch.tensor([s]),
                "contrast": torch.tensor([c]),
            },
        ),
    )
    y = x + b
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    y = (y - y.mean()) * c + y.mean()
    torch.testing.assert_close(out, y)


def test_rotation_by_ninety_degrees_permutes_pixels():
    x = _images(1, size=6)
    rot = DSA().apply(x, DSAParams("rotate", {"angle": torch.tensor([math.pi / 2])}))
    candidates = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 3)]
    assert any(torch.allclose(rot, r, atol=1e-5) for r in candidates)


def test_parameter_ranges_and_seeding():
    dsa = DSA()
    draws = [dsa.sample((32, 32), torch.Generator().manual_seed(s), n=64) for s in range(40)]
    again = [dsa.sample((32, 32), torch.Generator().manual_seed(s), n=64) for s in range(40)]
    for a, b in zip(draws, again, strict=True):
        assert a.kind == b.kind
        for key in a.values:
            assert torch.equal(a.values[key], b.values[key])
    assert {d.kind for d in draws} == set(TRANSFORMS)  # every kind gets picked
    for d in draws:
        v = d.values
        if d.kind == "crop":
            assert v["dx"].abs().max() <= 4 and v["dy"].abs().max() <= 4
        elif d.kind == "scale":
            assert (v["sx"] >= 1 / 1.2).all() and (v["sx"] <= 1.2).all()
        elif d.kind == "rotate":
            assert v["angle"].abs().max() <= 15 * math.pi / 180 + 1e-6
        elif d.kind == "color":
            assert (v["saturation"] <= 2).all() and (v["contrast"] >= 0.5).all()


def test_training_call_draws_per_sample_parameters():
    dsa = DSA("flip")
    x = _images(64)
    out = dsa(x, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-6) for o, i in zip(out, x, strict=True)]
    kept = [torch.allclose(o, i, atol=1e-6) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image: one or other
    assert 10 < sum(flipped) < 54  # about half, not all or none


def test_bad_input():
    with pytest.raises(ValueError, match="unknown DSA transform"):
        DSA("color_blur")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        DSA().apply(torch.zeros(3, 8, 8), DSAParams("flip", {"flip": torch.ones(1, dtype=bool)}))
    params = DSA("flip").sample((8, 8), torch.Generator().manual_seed(0), n=4)
    with pytest.raises(ValueError, match="sampled for 4 images"):
        DSA().apply(_images(3), params)
