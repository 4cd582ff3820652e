"""Weighted replay (cluster sizes as loss weights), eps="auto" chosen on held-out experience
data only, and the resumable continual benchmark."""

from __future__ import annotations

import copy
import csv
from dataclasses import replace

import pytest
import torch
from torch import nn

from replay_lcmat.continual import memory_only_run
from replay_lcmat.data import ImageData, holdout_split, load_digits
from replay_lcmat.memory import ClassMemory, build_memory
from replay_lcmat.models import MLP
from replay_lcmat.seeding import seeded
from replay_lcmat.selection import SelectionModelConfig, extract_outputs
from replay_lcmat.training import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_weighted_training_step_equals_autograd_of_the_weighted_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1, 2, 2, generator=g)
    y = torch.randint(0, 3, (9,), generator=g)
    w = torch.rand(9, generator=g) * 3
    with seeded(1):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    expected = copy.deepcopy(model)
    loss = (nn.functional.cross_entropy(expected(x), y, reduction="none") * w).mean()
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    with torch.no_grad():
        for p, gr in zip(expected.parameters(), grads, strict=True):
            p -= 0.5 * gr
    # one full batch, plain SGD: the step is -lr * grad of mean(w * ce)
    train(
        model,
        x,
        y,
        epochs=1,
        lr=0.5,
        momentum=0,
        weight_decay=0,
        batch_size=9,
        schedule="constant",
        progress=False,
        weights=w,
    )
    for a, b in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="one per image"):
        train(model, x, y, epochs=1, progress=False, weights=w[:3])


@pytest.mark.parametrize("policy", ["craig", "lcmat-s"])
def test_memory_weights_sum_to_the_class_size_and_survive_saving(digits, policy, tmp_path):
    data, _ = digits
    with seeded(0):
        outputs = extract_outputs(MLP(64, 10, hidden=(16,)), data)
    x, y = data.normalized(), data.labels
    memory = build_memory(policy, x, y, per_class=6, outputs=outputs, options={"weighted": True})
    sizes = torch.bincount(y)
    for c in memory.classes():
        assert float(memory.weights(c).sum()) == pytest.approx(int(sizes[c]))
    w = memory.sample_weights(1.0)
    _, labels = memory.tensors()
    for c in memory.classes():  # scaled to mean 1 inside each class
        assert float(w[labels == c].mean()) == pytest.approx(1.0)
    tempered = memory.sample_weights(0.5)
    assert tempered.std() < w.std()
    assert torch.allclose(memory.sample_weights(0.0), torch.ones(len(w)))
    memory.save(tmp_path / "m.pt")
    again = ClassMemory.load(tmp_path / "m.pt")
    assert torch.equal(again.sample_weights(), w)
    assert build_memory("uniform", x, y, per_class=3).sample_weights() is None


def test_holdout_split_is_per_class_disjoint_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = holdout_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(17))
    assert torch.bincount(labels[held]).tolist() == [2, 1, 1]
    assert torch.equal(held, holdout_split(labels, 0.2, seed=3)[1])
    with pytest.raises(ValueError, match="at least 2 per class"):
        holdout_split(torch.tensor([0, 0, 1]), 0.2, seed=0)


def _run(train_data, test_data, policies, memories=None, log=None):
    return memory_only_run(
        train_data,
        test_data,
        policies=policies,
        per_class=4,
        n_experiences=2,
        seed=0,
        model="mlp",
        model_options={"hidden": (16,)},
        selection_model=SelectionModelConfig("mlp", {"hidden": (16,)}, epochs=2, lr=0.05),
        retrain=TrainConfig(epochs=15, batch_size=32, lr=0.05, augment="none"),
        progress=False,
        memories_out=memories,
        log=log,
    )


@pytest.mark.slow
def test_eps_auto_never_reads_the_test_split(digits):
    train_data, test_data = digits
    lines, memories = [], {}
    _run(train_data, test_data, ["lcmat-s[eps=auto]"], memories, lines.append)
    chosen = [line for line in lines if "chosen on held-out data" in line]
    assert len(chosen) == 2  # one choice per experience
    # poison the test split: noise images, shuffled labels; the choice and memory must not move
    g = torch.Generator().manual_seed(9)
    poisoned = ImageData(
        images=torch.randint(0, 256, test_data.images.shape, generator=g, dtype=torch.uint8)
        if not test_data.images.is_floating_point()
        else torch.rand(test_data.images.shape, generator=g),
        labels=test_data.labels[torch.randperm(len(test_data.labels), generator=g)],
        mean=test_data.mean,
        std=test_data.std,
        classes=test_data.classes,
    )
    lines2, memories2 = [], {}
    _run(train_data, poisoned, ["lcmat-s[eps=auto]"], memories2, lines2.append)
    assert [line for line in lines2 if "chosen on held-out data" in line] == chosen
    (key,) = memories
    for c in memories[key].classes():
        assert torch.equal(memories[key].sources(c), memories2[key].sources(c))


def test_weight_power_spec_changes_replay_not_memory(digits):
    train_data, test_data = digits
    plain, weighted = {}, {}
    rows = _run(train_data, test_data, ["craig"], plain)
    rows_w = _run(train_data, test_data, ["craig[weight_power=1]"], weighted)
    m, mw = plain[("craig", 4)], weighted[("craig[weight_power=1]", 4)]
    assert all(torch.equal(m.sources(c), mw.sources(c)) for c in m.classes())
    assert [r["accuracy"] for r in rows] != [r["accuracy"] for r in rows_w]
    with pytest.raises(ValueError, match="weight_power applies to selection"):
        _run(train_data, test_data, ["dm[weight_power=1]"])


@pytest.mark.slow
def test_continual_benchmark_skips_finished_cells(tmp_path, monkeypatch):
    import benchmarks.continual as bench

    calls = []
    real = bench.memory_only_run

    def spy(*args, **kwargs):
        calls.append((kwargs["n_experiences"], kwargs["seed"], list(kwargs["policies"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "memory_only_run", spy)
    argv = [
        "--preset",
        "smoke",
        "--seeds",
        "0",
        "--experiences",
        "5",
        "2",
        "--out-dir",
        str(tmp_path),
        "--policies",
        "uniform",
        "herding",
    ]
    bench.main(argv)
    path = tmp_path / "continual_smoke.csv"
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 * (5 + 2)  # 2 policies x (5 + 2 experiences)
    assert len(calls) == 2
    calls.clear()
    bench.main(argv)  # everything done: nothing runs, nothing is appended
    assert calls == [] and len(list(csv.DictReader(path.open()))) == len(rows)
    # drop herding's cell of the 2-experience shape: only that cell runs again
    keep = [r for r in rows if not (r["policy"].startswith("herding") and r["experiences"] == "2")]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    bench.main(argv)
    assert calls == [(2, 0, ["herding[stats=running]"])]
    again = list(csv.DictReader(path.open()))
    assert len(again) == len(rows)
    assert (tmp_path / "continual_smoke.md").is_file()


def test_training_stops_when_on_epoch_says_so():
    x, y = torch.randn(12, 1, 2, 2), torch.arange(12) % 3
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    train(model, x, y, epochs=10, progress=False, on_epoch=lambda e, m: seen.append(e) or e == 2)
    assert seen == [0, 1, 2]


def test_selection_model_early_stopping_keeps_the_best_held_out_epoch(digits):
    from replay_lcmat.training import predict, pretrain_selection_model

    data, _ = digits
    # lr 2 makes the held-out loss go up and down, so the best epoch is not the last
    common = SelectionModelConfig("mlp", {"hidden": (16,)}, epochs=8, lr=2.0)
    best = pretrain_selection_model(
        data, replace(common, early_stop=0.3, patience=8), seed=4, progress=False
    )
    fit, held = holdout_split(data.labels, 0.3, 4)
    x, y = data.normalized(), data.labels

    def held_loss(model):
        return float(nn.functional.cross_entropy(predict(model, x[held]), y[held]))

    # the same run without restoring: the last epoch's weights (same data, seed, schedule)
    last = pretrain_selection_model(data.subset(fit), common, seed=4, progress=False)
    assert held_loss(best) < held_loss(last)
    # patience 0: stops after the first epoch, the same weights as one epoch of the same run
    first = pretrain_selection_model(
        data, replace(common, early_stop=0.3, patience=0), seed=4, progress=False
    )
    one = train_one_epoch_like(data.subset(fit), common)
    for a, b in zip(first.parameters(), one.parameters(), strict=True):
        assert torch.equal(a, b)


def train_one_epoch_like(data, common):
    """The selection model of ``common`` stopped after its first epoch by ``on_epoch``."""
    from replay_lcmat.models import make_model

    with seeded(4):
        net = make_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=(16,))
    return train(
        net,
        data.normalized(),
        data.labels,
        epochs=common.epochs,
        lr=common.lr,
        batch_size=common.batch_size,
        seed=4,
        progress=False,
        on_epoch=lambda e, m: True,
    )


def test_validation_accuracy_is_measured_on_the_validation_images(digits):
    train_data, test_data = digits
    common = dict(
        policies=["uniform"],
        per_class=3,
        n_experiences=2,
        seed=1,
        model="mlp",
        model_options={"hidden": (8,)},
        retrain=TrainConfig(epochs=5, batch_size=32, lr=0.05, augment="none"),
        progress=False,
    )
    # the test images again as validation: the same accuracy
    rows = memory_only_run(train_data, test_data, val_data=test_data, **common)
    assert all(r["val_accuracy"] == r["accuracy"] for r in rows)
    without = memory_only_run(train_data, test_data, **common)
    assert "val_accuracy" not in without[0]
    assert [r["accuracy"] for r in without] == [r["accuracy"] for r in rows]


def test_lcmat_memory_defaults_apply_only_without_selector_options(digits):
    from replay_lcmat.memory import MEMORY_DEFAULTS
    from replay_lcmat.strategies.selector_strategy import SelectorExemplarsStrategy

    data, _ = digits
    with seeded(0):
        outputs = extract_outputs(MLP(64, 10, hidden=(16,)), data)
    x, y = data.normalized(), data.labels

    def picks(options=None):
        memory = build_memory("lcmat-s", x, y, per_class=5, outputs=outputs, options=options)
        return torch.cat([memory.sources(c) for c in memory.classes()])

    chosen = MEMORY_DEFAULTS["lcmat-s"]
    assert chosen["objective"] != "facility"
    assert torch.equal(picks(), picks(chosen))
    assert not torch.equal(picks(), picks({"eps": 0.01}))  # any option: the paper's selector
    assert SelectorExemplarsStrategy("lcmat-s")._selector.get_params() == {
        **SelectorExemplarsStrategy("lcmat-s", options=chosen)._selector.get_params()
    }
    assert (
        SelectorExemplarsStrategy("lcmat-s", options={"eps": 0.01})._selector.objective
        == "facility"
    )
