"""Bad input to selection, keyed by what is checked:

option values (type, finiteness, range) of every registered selector; mixed dtypes and
``requires_grad`` inputs; NaN, mixed-shape and channels-last images in ``ClassMemory.put``;
channels-last images in training; the memory estimate of facility location before it allocates.
"""

from __future__ import annotations

import inspect

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from replay_lcmat import resources
from replay_lcmat.memory import ClassMemory
from replay_lcmat.resources import NotEnoughMemoryError
from replay_lcmat.selection import SELECTORS, LCMatS, lcmat_s, make_selector
from replay_lcmat.submodular import facility_location_peak_bytes
from replay_lcmat.training import evaluate, train

# Largest class part whose estimate fits in 1000 bytes (d=5, c=3, float32).
FITS_IN_1000_BYTES = {"craig": 14, "lcmat-s": 14, "adacore": 4}  # 1.2 m^2 4; 3 m c (d+1) 4
# The estimate for a class of 20 (d=5, c=3, float32): 1.2 * 20^2 * 4 bytes; AdaCore's gradient
# matrix, 3 * 20 * 3 * 6 * 4 bytes, is the larger term for it.
NEEDS_FOR_20 = {"craig": "1.9 KiB", "lcmat-s": "1.9 KiB", "adacore": "4.2 KiB"}


def toy(n_per_class=(12, 10, 14), d=5, c=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((m,), k) for k, m in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    features = torch.randn(len(labels), d, generator=gen, dtype=dtype).relu()
    logits = torch.randn(len(labels), c, generator=gen, dtype=dtype) * 2
    return features, logits, labels


def numeric_options(cls):
    """``{option: default}`` of the int / float keyword options of a selector and its bases."""
    found = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if isinstance(p.default, int | float) and not isinstance(p.default, bool):
                found[p.name] = p.default
    return found


NUMERIC = [(name, option) for name, cls in SELECTORS.items() for option in numeric_options(cls)]


# ------------------------------------------------------------------------------ options
def test_every_selector_with_options_is_covered():
    # A new selector's numeric options join the checks below through its signature.
    assert {"eps", "k_dims", "eta", "ridge", "damping", "seed", "stochastic_epsilon"} <= {
        option for _, option in NUMERIC
    }


@pytest.mark.parametrize(("name", "option"), NUMERIC)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", True, None])
def test_every_numeric_option_rejects_non_numbers_and_non_finite(name, option, bad):
    with pytest.raises(ValueError, match=rf"^{name} option {option} must be .*; got "):
        make_selector(name, **{option: bad})


@pytest.mark.parametrize(
    ("name", "option"),
    [(n, o) for n, o in NUMERIC if isinstance(numeric_options(SELECTORS[n])[o], int)],
)
def test_integer_options_are_not_truncated(name, option):
    with pytest.raises(ValueError, match=rf"{option} must be an int .*; got 2\.5 \(float\)"):
        make_selector(name, **{option: 2.5})


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lcmat-s", {"k_dims": 2.5}, r"lcmat-s option k_dims must be an int >= 1; got 2\.5"),
        ("lcmat-s", {"k_dims": 0}, r"k_dims must be an int >= 1; got 0"),
        ("lcmat-s", {"eps": float("nan")}, r"eps must be a finite real number >= 0; got nan"),
        ("lcmat-s", {"eps": "0.1"}, r"eps must be a finite real number >= 0; got '0\.1' \(str\)"),
        ("lcmat-s", {"eps": -0.5}, r"eps must be a finite real number >= 0; got -0\.5"),
        ("glister", {"eta": float("nan")}, r"glister option eta must be a finite real .* >= 0"),
        ("glister", {"eta": -0.1}, r"eta must be a finite real number >= 0; got -0\.1"),
        ("gradmatch", {"ridge": 0}, r"ridge must be a finite real number > 0; got 0"),
        ("adacore", {"damping": 0.0}, r"damping must be a finite real number > 0; got 0\.0"),
        ("craig", {"stochastic_epsilon": 1}, r"stochastic_epsilon must be .* in \(0, 1\); got 1"),
        ("craig", {"offset": float("nan")}, r"offset must be 'max' or a finite real number"),
        ("craig", {"offset": "min"}, r"offset must be 'max' or a finite real number; got 'min'"),
        ("craig", {"greedy": "fast"}, r"greedy must be one of 'naive', 'lazy', 'stochastic'"),
        ("craig", {"weighted": "yes"}, r"weighted must be True or False or None; got 'yes'"),
        ("uniform", {"seed": -1}, r"uniform option seed must be an int in \[0, \d+\]; got -1"),
        ("kcenter", {"seed": 1.0}, r"kcenter option seed must be an int .*; got 1\.0 \(float\)"),
    ],
)
def test_bad_option_names_the_option_value_and_range(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_selector(name, **options)


def test_bad_options_fail_in_the_function_api_before_any_work():
    features, logits, labels = toy()
    with pytest.raises(ValueError, match="k_dims must be an int >= 1; got 2.5"):
        lcmat_s(features, logits, labels, 2, k_dims=2.5)
    # NaN eps names the option, not the similarity ("check the inputs" misled: they were fine).
    with pytest.raises(ValueError, match="lcmat-s option eps") as err:
        lcmat_s(features, logits, labels, 2, eps=float("nan"))
    assert "similarity" not in str(err.value)


def test_numpy_scalars_are_accepted_as_plain_numbers():
    features, logits, labels = toy(seed=1)
    plain = make_selector("lcmat-s", eps=0.05, k_dims=3)
    numpy = make_selector("lcmat-s", eps=np.float64(0.05), k_dims=np.int64(3))
    assert type(numpy.eps) is float and type(numpy.k_dims) is int
    inputs = {"features": features, "logits": logits, "labels": labels, "per_class": 3}
    assert torch.equal(plain.select(**inputs).indices, numpy.select(**inputs).indices)
    seeded = make_selector("kcenter", seed=np.int64(4)).select(**inputs).indices
    assert torch.equal(seeded, make_selector("kcenter", seed=4).select(**inputs).indices)


# ------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", list(SELECTORS))
def test_mixed_dtypes_and_requires_grad_are_promoted_and_detached(name):
    features, logits, labels = toy(seed=2)
    mixed = {
        "features": features.float().requires_grad_(),
        "logits": logits.clone().requires_grad_(),
    }
    # float32 features with float64 logits select as if both were float64.
    reference = {"features": features.float().double(), "logits": logits}
    selector = make_selector(name)
    got = selector.select(**mixed, labels=labels, per_class=3)
    expected = selector.select(**reference, labels=labels, per_class=3)
    assert torch.equal(got.indices, expected.indices)
    assert (got.weights is None) == (expected.weights is None)
    if got.weights is not None:
        assert not got.weights.requires_grad
        torch.testing.assert_close(got.weights, expected.weights)


def test_half_features_with_float64_logits_use_float64():
    features, logits, labels = toy(seed=3)
    result = make_selector("gradmatch").select(
        features=features.half(), logits=logits, labels=labels, per_class=2
    )
    assert result.weights.dtype == torch.float64


# --------------------------------------------------------------------- ClassMemory.put
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_class_memory_refuses_non_finite_images(bad):
    memory = ClassMemory()
    images = torch.zeros(3, 1, 4, 4)
    images[1, 0, 2, 2] = bad
    with pytest.raises(ValueError, match=r"images of class 4 contain NaN or inf in 1 of 3 images"):
        memory.put(4, images)
    assert 4 not in memory


def test_class_memory_refuses_a_second_image_shape_at_put_time():
    memory = ClassMemory()
    memory.put(0, torch.zeros(2, 3, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"images of class 1 have shape \[3, 4, 4\] per image but the stored classes "
        r"\(e\.g\. class 0\) have \[3, 8, 8\]; .*resize or crop",
    ):
        memory.put(1, torch.zeros(2, 3, 4, 4))
    assert memory.classes() == [0]
    memory.put(0, torch.zeros(5, 3, 4, 4))  # replacing the only class may change the shape
    memory.put(1, torch.zeros(2, 3, 4, 4))
    assert memory.tensors()[0].shape == (7, 3, 4, 4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 28, 28, 1)])
def test_class_memory_names_a_channels_last_layout(shape):
    with pytest.raises(
        ValueError, match=r"class 2 look channels-last \[N, H, W, C\]; permute to \[N, C, H, W\]"
    ):
        ClassMemory().put(2, torch.zeros(shape))


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("shape", [(6, 32, 32, 3), (6, 28, 28, 1)])
def test_training_names_a_channels_last_layout(shape):
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    images, labels = torch.zeros(shape), torch.zeros(6, dtype=torch.long)
    message = r"images look channels-last \[N, H, W, C\]; permute to \[N, C, H, W\]"
    with pytest.raises(ValueError, match=message):
        train(model, images, labels, epochs=1, progress=False)
    with pytest.raises(ValueError, match=message):
        evaluate(model, images, labels)


@pytest.mark.parametrize("shape", [(6, 3, 8, 8), (6, 1, 28, 28), (6, 64, 3, 3), (6, 8, 1, 1)])
def test_channels_first_and_small_feature_maps_are_not_flagged(shape):
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape[1:])), 2))
    train(model, torch.zeros(shape), torch.zeros(6, dtype=torch.long), epochs=0, progress=False)
    ClassMemory().put(0, torch.zeros(shape))


# --------------------------------------------------------------------- memory estimate
def test_estimate_matches_the_measured_growth():
    # benchmarks/results/greedy_speed.md: one class of n = 20,000 (float32) peaks at 1.06 n^2 4
    assert facility_location_peak_bytes(20_000, 4) >= 1.06 * 20_000**2 * 4
    assert facility_location_peak_bytes(100, 8) == 2 * facility_location_peak_bytes(100, 4)


@pytest.mark.parametrize("name", list(FITS_IN_1000_BYTES))
def test_facility_location_refuses_a_class_that_does_not_fit_before_allocating(name, monkeypatch):
    features, logits, labels = toy(n_per_class=(20,), dtype=torch.float32)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    selector = make_selector(name)

    def never(inputs):
        raise AssertionError("the similarity was built before the memory check")

    monkeypatch.setattr(selector, "dissimilarity", never)
    with pytest.raises(NotEnoughMemoryError) as err:
        selector.select(features=features, logits=logits, labels=labels, per_class=3)
    assert isinstance(err.value, MemoryError) and isinstance(err.value, ValueError)
    message = str(err.value)
    for part in (
        f"{name} on class 0 (20 samples) needs about {NEEDS_FOR_20[name]}",
        "only 1000 bytes is available on cpu",
        f"Split the class into parts of at most {FITS_IN_1000_BYTES[name]} samples",
        "streamed similarity",
    ):
        assert part in message, message


def test_float64_inputs_say_float32_halves_the_estimate(monkeypatch):
    features, logits, labels = toy(n_per_class=(20,))
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    with pytest.raises(NotEnoughMemoryError, match="float32 inputs would halve the estimate"):
        lcmat_s(features, logits, labels, 3)


def test_adacore_estimate_counts_its_gradient_matrix():
    selector = make_selector("adacore")
    n, d, c = 10, 512, 10  # few samples, wide gradients: [n, c*(d+1)] dominates n x n
    assert selector.peak_bytes(n, d, c, 4) == 3 * n * c * (d + 1) * 4
    assert make_selector("craig").peak_bytes(n, d, c, 4) == facility_location_peak_bytes(n, 4)


def test_a_class_that_fits_or_unknown_memory_selects_as_before(monkeypatch):
    features, logits, labels = toy(seed=5)
    expected = lcmat_s(features, logits, labels, 3)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: None)
    assert torch.equal(lcmat_s(features, logits, labels, 3), expected)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 10**6)
    assert torch.equal(lcmat_s(features, logits, labels, 3), expected)


def test_available_memory_is_psutils_then_unknown(monkeypatch):
    assert resources.available_memory_bytes("cpu") > 0
    assert resources.available_memory_bytes("meta") is None
    monkeypatch.delenv(resources.MEMORY_LIMIT_ENV, raising=False)  # no other limit applies
    monkeypatch.setattr(resources, "cgroup_available_bytes", lambda: None)
    monkeypatch.setattr(resources, "rlimit_available_bytes", lambda: None)
    host = psutil.virtual_memory().available
    got = resources.available_memory_bytes("cpu")
    assert abs(got - host) < max(host // 10, 1 << 28)  # the host's free memory moves a little

    def unknown():
        raise psutil.Error("not on this platform")

    monkeypatch.setattr(resources.psutil, "virtual_memory", unknown)
    assert resources.available_memory_bytes("cpu") is None
    features, logits, labels = toy(seed=6)  # unknown memory: no check, selection as usual
    result = LCMatS().select(features=features, logits=logits, labels=labels, per_class=2)
    assert len(result.indices) == 6


# ------------------------------------------------------------------ review cases: inputs
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_zero_width_features_are_refused_with_the_problem(name):
    _, logits, labels = toy(seed=9)
    with pytest.raises(ValueError, match=r"features has no columns \(shape \(36, 0\)\)"):
        make_selector(name).select(
            features=torch.zeros(36, 0, dtype=torch.float64),
            logits=logits,
            labels=labels,
            per_class=2,
        )


def test_lcmat_s_zero_width_features_is_a_value_error_not_zero_division():
    _, logits, labels = toy(seed=9)
    with pytest.raises(ValueError, match="no columns"):
        lcmat_s(torch.zeros(36, 0), logits.float(), labels, 2)


@pytest.mark.parametrize("name", ["lcmat-s", "craig", "herding", "kcenter"])
def test_numpy_features_and_logits_are_accepted_like_labels(name):
    features, logits, labels = toy(seed=10)
    expected = make_selector(name).select(
        features=features, logits=logits, labels=labels, per_class=3
    )
    got = make_selector(name).select(
        features=features.numpy(), logits=logits.numpy(), labels=labels.numpy(), per_class=3
    )
    assert torch.equal(got.indices, expected.indices)
    with pytest.raises(ValueError, match=r"NumPy array of dtype <U1; pass a float array"):
        make_selector(name).select(
            features=np.full((36, 5), "x"), logits=logits, labels=labels, per_class=3
        )


def test_meta_tensors_name_the_device_not_a_raw_item_error():
    features, logits, labels = toy(seed=11)
    with pytest.raises(ValueError, match="features is on the meta device"):
        lcmat_s(features.to("meta"), logits, labels, 2)
    with pytest.raises(ValueError, match="labels is on the meta device"):
        lcmat_s(features, logits, labels.to("meta"), 2)


def test_float64_overflow_does_not_advise_float64():
    gen = torch.Generator().manual_seed(8)
    h = torch.rand(12, 4, generator=gen, dtype=torch.float64) * 1e160
    z, y = torch.randn(12, 3, generator=gen, dtype=torch.float64), torch.zeros(12, dtype=torch.long)
    with pytest.raises(ValueError, match="overflow") as err:
        lcmat_s(h, z, y, 3)
    assert "pass float64" not in str(err.value)
    assert "Scale the features or logits down" in str(err.value)


@pytest.mark.parametrize("where", [(0, 0, 2, 2), (5, 1, 0, 3)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_training_and_evaluation_refuse_non_finite_pixels(where, bad):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    images, labels = torch.zeros(6, 3, 4, 4), torch.zeros(6, dtype=torch.long)
    images[where] = bad
    before = [p.clone() for p in model.parameters()]
    message = rf"images contain NaN or inf in 1 of 6 samples \(first at rows \[{where[0]}\]\); drop or repair"
    with pytest.raises(ValueError, match=message):
        train(model, images, labels, epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match=message):
        evaluate(model, images, labels)
