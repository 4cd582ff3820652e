"""The core replay memory (no Avalanche): store, policies, re-initialisation, protocol loop."""

from __future__ import annotations

import pytest
import torch

from replay_lcmat.continual import memory_only_run
from replay_lcmat.data import load_digits, per_class_subset
from replay_lcmat.memory import (
    ClassMemory,
    build_memory,
    condense_exemplars,
    memory_policies,
    memory_policy,
    select_exemplars,
)
from replay_lcmat.models import MLP, ConvNet, reinitialize
from replay_lcmat.seeding import derive_seed, seeded
from replay_lcmat.selection import SelectionModelConfig, extract_outputs, make_selector
from replay_lcmat.selection.geometry import herding_order
from replay_lcmat.training import TrainConfig

TINY_DM = dict(iterations=2, network_options={"width": 4, "depth": 1}, batch_real=16)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def outputs(digits):
    train, _ = digits
    with seeded(0):
        model = MLP(64, 10, hidden=(32,))
    return extract_outputs(model, train)


def test_class_memory_store_truncate_and_round_trip(tmp_path):
    memory = ClassMemory()
    a, b = torch.randn(4, 1, 2, 2), torch.randn(2, 1, 2, 2)
    memory.put(5, a, sources=torch.tensor([7, 3, 9, 1]))
    memory.put(2, b)
    assert memory.classes() == [2, 5] and len(memory) == 6 and 5 in memory
    x, y = memory.tensors()
    assert torch.equal(x, torch.cat([b, a])) and y.tolist() == [2, 2, 5, 5, 5, 5]
    memory.save(tmp_path / "m.pt")
    loaded = ClassMemory.load(tmp_path / "m.pt")
    assert loaded.counts() == {2: 2, 5: 4}
    assert torch.equal(loaded.images(5), a) and loaded.sources(5).tolist() == [7, 3, 9, 1]
    assert loaded.sources(2) is None
    loaded.truncate(3)
    assert loaded.counts() == {2: 2, 5: 3} and loaded.sources(5).tolist() == [7, 3, 9]
    with pytest.raises(ValueError, match="3 images but 2 sources"):
        memory.put(1, torch.randn(3, 1, 2, 2), sources=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="float tensor"):
        memory.put(1, torch.zeros(3, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="ClassMemory.save"):
        ClassMemory.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="empty"):
        ClassMemory().tensors()


def test_policy_names_are_checked():
    assert memory_policy("lcmat-s").kind == "selection"
    assert memory_policy("LCMat-C").kind == "condensation"
    assert memory_policy("lcmat-s").needs_model and not memory_policy("uniform").needs_model
    assert not memory_policy("dm").needs_model
    assert memory_policy("dm").defaults["iterations"] == 20000
    assert memory_policy("lcmat-c").defaults["iterations"] == 1000
    with pytest.raises(ValueError, match="unknown memory policy 'nope'.*uniform.*dm"):
        memory_policy("nope")
    with pytest.raises(ValueError, match="Did you mean 'lcmat-s'"):
        memory_policy("lcmat_s")
    from replay_lcmat.condensation import CONDENSERS
    from replay_lcmat.selection import SELECTORS

    # every registered method is a policy, with no list kept by hand
    assert list(memory_policies()) == list(SELECTORS) + list(CONDENSERS)
    with pytest.raises(ValueError, match="condensation policy"):
        select_exemplars("dm", labels=torch.zeros(3, dtype=torch.long), per_class=1)


def test_selected_exemplars_are_per_class_rankings(digits, outputs):
    train, _ = digits
    labels = train.labels
    picks = select_exemplars("herding", labels=labels, features=outputs.features, per_class=4)
    assert len(picks) == 40
    assert labels[picks].tolist() == [c for c in range(10) for _ in range(4)]
    for c in range(10):  # independent: herding on the class's features directly
        members = torch.nonzero(labels == c).flatten()
        expected = members[herding_order(outputs.features[members], 4)]
        assert torch.equal(picks[labels[picks] == c], expected)
    # uniform picks of a class do not depend on the other classes in the call
    two = select_exemplars("uniform", labels=labels, per_class=3, seed=4)
    only3 = torch.nonzero(labels == 3).flatten()
    alone = select_exemplars("uniform", labels=labels[only3], per_class=3, seed=4)
    assert torch.equal(two[labels[two] == 3], only3[alone])
    assert not torch.equal(two, select_exemplars("uniform", labels=labels, per_class=3, seed=5))
    # a configured Selector instance is used as is
    inst = select_exemplars(
        make_selector("herding"), labels=labels, features=outputs.features, per_class=4
    )
    assert torch.equal(inst, picks)


def test_small_classes_are_kept_whole_with_a_warning(digits):
    train, _ = digits
    keep = torch.cat([train.class_indices(c)[: (2 if c == 3 else 30)] for c in range(10)])
    labels = train.labels[keep]
    with pytest.warns(UserWarning, match="class 3 has only 2 sample"):
        picks = select_exemplars("uniform", labels=labels, per_class=5)
    assert (labels[picks] == 3).sum() == 2 and len(picks) == 47
    images = train.subset(keep).normalized()
    with pytest.warns(UserWarning, match="class 3 has only 2 sample"):
        syn, syn_labels = condense_exemplars("dm", images, labels, per_class=5, options=TINY_DM)
    assert syn.shape == (47, 1, 8, 8) and syn_labels.bincount().tolist() == [5] * 3 + [2] + [5] * 6
    assert torch.equal(syn[syn_labels == 3], images[labels == 3])  # stored as real images


def test_build_memory_for_selection_and_condensation(digits, outputs):
    train, _ = digits
    x, y = train.normalized(), train.labels
    memory = build_memory("lcmat-s", x, y, per_class=3, outputs=outputs)
    assert memory.counts() == {c: 3 for c in range(10)}
    for c in range(10):
        assert torch.equal(memory.images(c), x[memory.sources(c)])
        assert (y[memory.sources(c)] == c).all()
    with pytest.raises(
        ValueError, match="ranks with a model: pass model=.*or outputs=extract_outputs"
    ):
        build_memory("craig", x, y, per_class=3)
    syn = build_memory("dm", x, y, per_class=2, seed=1, options=TINY_DM)
    again = build_memory("dm", x, y, per_class=2, seed=1, options=TINY_DM)
    assert syn.counts() == {c: 2 for c in range(10)} and syn.sources(0) is None
    assert torch.equal(syn.tensors()[0], again.tensors()[0])  # seeded: reproducible


def test_reinitialize_is_seeded_fresh_and_leaves_the_global_rng_alone():
    with seeded(0):
        model = ConvNet(1, 10, image_size=8, width=4, depth=1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    state = torch.random.get_rng_state()
    a, b = reinitialize(model, 7), reinitialize(model, 7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.classifier.weight, reinitialize(model, 8).classifier.weight)
    with seeded(7):  # the same as building the model anew under the seed
        built = ConvNet(1, 10, image_size=8, width=4, depth=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), built.parameters(), strict=True))
    assert (model.classifier.weight == 3.0).all()  # the original is untouched

    class NoReset(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match="reset_parameters"):
        reinitialize(NoReset(), 0)


def test_train_config_and_seeds():
    with pytest.raises(ValueError, match="unknown augment"):
        TrainConfig(augment="mixup")
    assert derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(0, 2) != derive_seed(1, 1)


def test_per_class_subset(digits):
    train, _ = digits
    small = per_class_subset(train, 7, seed=0)
    assert small.labels.bincount().tolist() == [7] * 10
    assert torch.equal(small.images, per_class_subset(train, 7, seed=0).images)
    assert per_class_subset(train, None, seed=0) is train


def test_memory_only_run_protocol_on_digits(digits):
    train, test = digits
    rows = memory_only_run(
        train,
        test,
        policies=["uniform", "herding"],
        per_class=[2, 5],
        seed=0,
        model="mlp",
        model_options={"hidden": (32,)},
        selection_model=SelectionModelConfig("mlp", {"hidden": (32,)}, epochs=2, lr=0.05),
        retrain=TrainConfig(epochs=30, batch_size=64, lr=0.05, augment="none"),
        progress=False,
    )
    assert len(rows) == 2 * 2 * 5
    last = {(r["policy"], r["per_class"]): r for r in rows if r["experience"] == 5}
    assert {r["classes_seen"] for r in last.values()} == {10}
    assert last["uniform", 5]["memory_size"] == 50 and last["herding", 2]["memory_size"] == 20
    # a fresh model trained on 5 digits per class is far above chance on all 10 classes
    assert last["uniform", 5]["accuracy"] > 0.6 and last["herding", 5]["accuracy"] > 0.6
    first = [r for r in rows if r["experience"] == 1 and r["per_class"] == 5]
    assert all(r["classes_seen"] == 2 and r["accuracy"] > 0.8 for r in first)
