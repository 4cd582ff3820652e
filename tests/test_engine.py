"""One class-balanced engine: the same selector, budget and seed give the same picks through
every entry point (Python API, ``select_exemplars`` / ``build_memory``, the ``select`` command,
the Avalanche storage policy; the 2-process run is in tests/test_distributed.py), and a
class's picks do not depend on the other classes."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from golden import golden_inputs

from replay_lcmat.cli import main
from replay_lcmat.cli.common import selection_model_outputs
from replay_lcmat.data import load_dataset
from replay_lcmat.memory import MEMORY_DEFAULTS, build_memory, select_exemplars
from replay_lcmat.models import MLP
from replay_lcmat.seeding import seeded
from replay_lcmat.selection import SELECTORS, extract_outputs, make_selector

SEED = 3
PER_CLASS = 4
NAMES = list(SELECTORS)


def _options(name: str) -> dict:
    return {"seed": SEED} if SELECTORS.entry(name).accepts("seed") else {}


def _api(name, features, logits, labels, per_class=PER_CLASS, *, memory=False):
    """The selector's picks; ``memory``: with the options a memory uses when none is given
    (:data:`replay_lcmat.memory.MEMORY_DEFAULTS`)."""
    chosen = MEMORY_DEFAULTS.get(name, {}) if memory else {}
    return make_selector(name, **_options(name), **chosen).select(
        features=features, logits=logits, labels=labels, per_class=per_class
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


@pytest.mark.parametrize("name", NAMES)
def test_removing_a_class_leaves_the_others_picks_unchanged(name):
    features, logits, labels = golden_inputs()
    full = _api(name, features, logits, labels)
    keep = torch.nonzero(labels != 3).flatten()
    part = _api(name, features[keep], logits[keep], labels[keep])
    others = labels[full.indices] != 3
    assert torch.equal(keep[part.indices], full.indices[others])
    if full.weights is not None:
        assert torch.equal(part.weights, full.weights[others])
    # and a class alone gives its picks in the full call
    seven = torch.nonzero(labels == 7).flatten()
    alone = _api(name, features[seven], logits[seven], labels[seven])
    assert torch.equal(seven[alone.indices], full.indices[labels[full.indices] == 7])


@pytest.mark.parametrize("name", NAMES)
def test_api_select_exemplars_and_build_memory_give_the_same_picks(name):
    features, logits, labels = golden_inputs()
    expected = _api(name, features, logits, labels, memory=True)  # both are memory entry points
    picks, weights = select_exemplars(
        name,
        labels=labels,
        features=features,
        logits=logits,
        per_class=PER_CLASS,
        seed=SEED,
        with_weights=True,
    )
    assert torch.equal(picks, expected.indices)
    assert (weights is None) == (expected.weights is None)
    if weights is not None:
        assert torch.equal(weights, expected.weights.double())
    images = torch.zeros(len(labels), 1, 8, 8)
    outputs = argparse.Namespace(features=features, logits=logits, labels=labels)
    memory = build_memory(name, images, labels, per_class=PER_CLASS, outputs=outputs, seed=SEED)
    sources = torch.cat([memory.sources(c) for c in range(10)])
    assert torch.equal(sources, expected.indices)


@pytest.mark.parametrize("name", NAMES)
def test_the_avalanche_storage_policy_keeps_the_api_picks(name):
    from avalanche.training.supervised import Naive

    from replay_lcmat.strategies import LCMatReplayPlugin, tensor_benchmark
    from replay_lcmat.strategies.datasets import dataset_tensors

    train, test = load_dataset("digits")
    benchmark = tensor_benchmark(train, test, n_experiences=1, seed=None)
    experience = benchmark.train_stream[0]
    with seeded(0):
        model = MLP(64, 10, hidden=(16,))
    plugin = LCMatReplayPlugin(PER_CLASS, name, seed=SEED, stats="running")
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=64,
        train_epochs=0,
        plugins=[plugin],
        evaluator=None,
    )
    strategy.train(experience)
    x, y, _ = dataset_tensors(experience.dataset)
    outputs = extract_outputs(model, x, labels=y, stats="running")
    expected = _api(name, outputs.features, outputs.logits, y, memory=True)
    sources = plugin.storage_policy.exemplar_sources()
    got = torch.cat([sources[c][:, 1] for c in sorted(sources)])
    assert torch.equal(got, expected.indices)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uniform", "kcenter", "herding"])
def test_the_select_command_gives_the_api_picks(tmp_path, name):
    out = tmp_path / "sel.json"
    argv = ["select", "--data", "digits", "--method", name, "--per-class", str(PER_CLASS)]
    argv += ["--model", "mlp", "--pretrain-epochs", "1", "--seed", str(SEED)]
    argv += ["--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    train, _ = load_dataset("digits")
    args = argparse.Namespace(
        model="mlp",
        width=None,
        pretrain_epochs=1,
        lr=0.1,
        batch_size=128,
        pretrain_augment=True,
        device="cpu",
        seed=SEED,
        pretrain_early_stop=None,
        stats=record["stats"],
    )
    _, outputs = selection_model_outputs(args, train, progress=False)
    expected = _api(name, outputs.features, outputs.logits, outputs.labels)
    got = [i for entry in record["by_class"] for i in entry["indices"]]
    assert got == expected.indices.tolist()
