"""One registry for selectors, condensers and memory policies: a new method registered in its
own file reaches every layer (API, memory, Avalanche buffer, CLI) with no other edit."""

from __future__ import annotations

import json

import pytest
import torch

from replay_lcmat.condensation import CONDENSERS, make_condenser
from replay_lcmat.condensation.distribution_matching import DistributionMatchingCondenser
from replay_lcmat.memory import build_memory, memory_policies, memory_policy
from replay_lcmat.registry import Registry, UnknownNameError, get_params, signature_parameters
from replay_lcmat.selection import SELECTORS, Selector, make_selector
from replay_lcmat.selection.base import registered


class _Widget:
    """A thing with options."""

    def __init__(self, *, size: int = 1, colour: str = "red") -> None:
        self.size, self.colour = size, colour


class _BigWidget(_Widget):
    def __init__(self, *, weight: float = 2.0, **options) -> None:
        super().__init__(**options)
        self.weight = weight


def test_registry_lookup_case_close_match_and_build():
    things = Registry("widget")
    things.register("big", paper="Doe 2020", defaults={"size": 5})(_BigWidget)
    things.register("small", paper="Doe 2021")(_Widget)
    assert list(things) == ["big", "small"] and len(things) == 2
    assert "BIG" in things and things["Big"] is _BigWidget
    assert things.describe() == {"big": "A thing with options (Doe 2020)", "small": "A thing with options (Doe 2021)"}  # fmt: skip
    built = things.build("big", colour="blue")
    assert (built.size, built.colour, built.weight) == (5, "blue", 2.0)  # defaults, then options
    with pytest.raises(UnknownNameError, match=r"unknown widget 'smal'\. Did you mean 'small'\?"):
        things.entry("smal")
    with pytest.raises(KeyError):  # a Mapping: get() and `in` work as for a dict
        things["nope"]
    assert things.get("nope") is None
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['wieght'\].*accepted.*'weight'"):
        things.build("big", wieght=1.0)


def test_registry_refuses_bad_registrations():
    things = Registry("widget")
    with pytest.raises(ValueError, match="lower case"):
        things.register("Big", paper="x")
    things.register("big", paper="x")(_Widget)
    with pytest.raises(ValueError, match="registered twice"):
        things.register("big", paper="x")
    with pytest.raises(TypeError, match=r"defaults \['sise'\]"):
        things.register("other", paper="x", defaults={"sise": 2})(_Widget)


def test_parameters_come_from_the_signature_up_the_hierarchy():
    assert list(signature_parameters(_BigWidget)) == ["weight", "size", "colour"]
    assert get_params(_BigWidget(size=3)) == {"weight": 2.0, "size": 3, "colour": "red"}

    class Forgetful(_Widget):
        def __init__(self, *, depth: int = 1, **options) -> None:
            super().__init__(**options)

    with pytest.raises(AttributeError, match="does not store it as self.depth"):
        get_params(Forgetful())
    # every shipped method stores its options under their own names
    for name in SELECTORS:
        make_selector(name).get_params()
    for name in CONDENSERS:
        assert "per_class" not in make_condenser(name).get_params()


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made in a test are dropped afterwards."""
    monkeypatch.setattr(SELECTORS, "_entries", dict(SELECTORS._entries))
    monkeypatch.setattr(CONDENSERS, "_entries", dict(CONDENSERS._entries))


def test_a_new_selector_needs_only_its_own_class(scratch_registries, tmp_path, capsys):
    @registered
    class FirstSamples(Selector):
        """The first samples of each class (index order)."""

        name = "first-samples"
        paper = "a test"

        def __init__(self, *, skip: int = 0) -> None:
            self.skip = skip

        def select_class(self, inputs, budget):
            return torch.arange(self.skip, self.skip + budget), None

    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert make_selector("first-samples", skip=1).select(labels=labels, per_class=2).indices.tolist() == [1, 2, 4, 5]  # fmt: skip
    policy = memory_policy("first-samples")
    assert policy.kind == "selection" and not policy.needs_model
    assert "first-samples" in memory_policies()
    images = torch.randn(6, 1, 4, 4)
    memory = build_memory("first-samples", images, labels, per_class=2, options={"skip": 1})
    assert memory.sources(1).tolist() == [4, 5]

    from replay_lcmat.cli import main

    out = tmp_path / "sel.json"
    argv = ["select", "--data", "digits", "--method", "first-samples", "--per-class", "2"]
    argv += ["--option", "skip=3", "--model", "mlp", "--pretrain-epochs", "0", "--no-progress"]
    assert main(argv + ["--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["method"] == "first-samples" and record["options"] == {"skip": 3}


def test_a_new_condenser_needs_only_its_own_registration(scratch_registries):
    CONDENSERS.register(
        "dm-fast", paper="a test", defaults={"iterations": 1, "init": "real", "lr_img": 1.0}
    )(DistributionMatchingCondenser)
    policy = memory_policy("dm-fast")
    assert policy.kind == "condensation" and policy.defaults["iterations"] == 1
    images, labels = torch.randn(12, 1, 8, 8), torch.arange(12) % 2
    tiny = {"network_options": {"width": 4, "depth": 1}, "batch_real": 4}
    memory = build_memory("dm-fast", images, labels, per_class=2, options=tiny, progress=False)
    assert memory.counts() == {0: 2, 1: 2}
    result = make_condenser("dm-fast", progress=False, **tiny).condense(images, labels, per_class=2)
    assert len(result.losses) == 1 and result.options["per_class"] == 2
