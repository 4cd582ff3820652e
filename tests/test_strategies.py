"""Avalanche adapters on a tiny 10-class tensor benchmark with 5 experiences (no download)."""

from __future__ import annotations

import importlib.util
import runpy
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin  # noqa: E402
from avalanche.training.storage_policy import ParametricBuffer  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

from replay_lcmat.condensation import DSA  # noqa: E402
from replay_lcmat.continual import memory_only_run  # noqa: E402
from replay_lcmat.data import ImageData  # noqa: E402
from replay_lcmat.models import MLP  # noqa: E402
from replay_lcmat.seeding import (
    derive_seed,  # noqa: E402
    seeded,  # noqa: E402
)
from replay_lcmat.selection import lcmat_s  # noqa: E402
from replay_lcmat.strategies import (  # noqa: E402
    CondensedClassBuffer,
    LCMatReplayPlugin,
    MemoryOnlyRetrainPlugin,
    SelectionBuffer,
    SelectorExemplarsStrategy,
    dataset_tensors,
    run_continual,
    tensor_benchmark,
)
from replay_lcmat.training import (
    TrainConfig,  # noqa: E402
    train,  # noqa: E402
)

MEM = 3
# Tiny settings of the condensation policy: one outer iteration of a one-block ConvNet.
LCMAT_C = dict(iterations=1, network_options={"width": 4, "depth": 1}, batch_real=8)


def _images(per_class, seed):
    """uint8 [n, 1, 8, 8]: a fixed pattern per class plus noise (learnable, not trivial)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(99))
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    noise = torch.randint(0, 256, (len(labels), 1, 8, 8), generator=gen)
    return (0.7 * protos[labels] + 0.3 * noise).to(torch.uint8), labels


def _benchmark(train_per_class=(20,) * 10):
    x, y = _images(train_per_class, 0)
    xt, yt = _images((5,) * 10, 1)
    names = tuple(str(c) for c in range(10))
    train_set = ImageData(x, y, names, (0.5,), (0.25,))
    test_set = ImageData(xt, yt, names, (0.5,), (0.25,))
    return tensor_benchmark(train_set, test_set, n_experiences=5, seed=0), train_set, test_set


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


def _model():
    with seeded(0):
        return MLP(64, 10, hidden=(16,))


def _strategy(model, plugins, epochs=0, evaluator=None):
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=16,
        train_epochs=epochs,
        eval_mb_size=64,
        plugins=plugins,
        evaluator=evaluator or EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )


def _memory(plugin):
    x, y, t = dataset_tensors(plugin.storage_policy.buffer)
    return x, y, t


def _check_memory_after_each_experience(bench, plugin, epochs=0):
    """Memory holds exactly MEM items of every seen class, none of unseen ones."""
    benchmark, train_set, _ = bench
    strategy = _strategy(_model(), [plugin], epochs)
    seen = set()
    for exp in benchmark.train_stream:
        strategy.train(exp)
        seen |= set(exp.classes_in_this_experience)
        x, y, t = _memory(plugin)
        counts = {c: int((y == c).sum()) for c in range(10)}
        assert counts == {c: (MEM if c in seen else 0) for c in range(10)}
        assert torch.equal(t, torch.zeros_like(t))
        assert x.shape[1:] == (1, 8, 8)
    return strategy


def test_selection_policy_keeps_real_exemplars_of_the_right_class(bench):
    plugin = LCMatReplayPlugin(
        MEM, "lcmat-s", options={"eps": 0.01}
    )  # the paper's LCMat-S, as lcmat_s below
    strategy = _check_memory_after_each_experience(bench, plugin)
    benchmark, train_set, _ = bench
    x, y, _ = _memory(plugin)
    data = train_set.normalized()
    for c, sources in plugin.storage_policy.exemplar_sources().items():
        for e, i in sources.tolist():
            item = benchmark.train_stream[e].dataset[i]
            assert item[1] == c
        # each exemplar is a real training image of class c
        mine = x[y == c]
        for img in mine:
            match = (data == img).flatten(1).all(1)
            assert match.any() and set(train_set.labels[match].tolist()) == {c}
    # the picks are LCMat-S's on the final model's features (independent extraction)
    model = strategy.model.eval()
    for c in benchmark.train_stream[4].classes_in_this_experience:
        xc = data[train_set.labels == c]
        with torch.no_grad():
            h = model.features(xc)
            z = model.classifier(h)
        picks = lcmat_s(h, z, torch.full((len(xc),), c), per_class=MEM)
        assert torch.equal(xc[picks], x[y == c])


def test_condensation_policy_stores_synthetic_tensors_with_labels(bench):
    plugin = LCMatReplayPlugin(MEM, "lcmat-c", options=LCMAT_C)
    _check_memory_after_each_experience(bench, plugin)
    _, train_set, _ = bench
    x, y, _ = _memory(plugin)
    assert x.dtype == torch.float32 and not x.requires_grad
    data = train_set.normalized()
    # synthetic (noise-initialised, optimised) images, not copies of real ones
    assert not any((data == img).flatten(1).all(1).any() for img in x)
    assert isinstance(plugin.storage_policy, CondensedClassBuffer)
    assert plugin.storage_policy.max_size == plugin.mem_size == 10 * MEM


class _BatchRecorder(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.batches = []

    def before_forward(self, strategy, **kwargs):
        self.batches.append(
            (strategy.experience.current_experience, strategy.mb_x.clone(), strategy.mb_y.clone())
        )


@pytest.mark.parametrize("policy,options", [("uniform", {}), ("lcmat-c", LCMAT_C)])
def test_replay_minibatches_contain_memory_samples(bench, policy, options):
    benchmark, _, _ = bench
    plugin, recorder = LCMatReplayPlugin(MEM, policy, options=options), _BatchRecorder()
    strategy = _strategy(_model(), [plugin, recorder], epochs=1)
    strategy.train(benchmark.train_stream[0])
    memory_x, memory_y, _ = _memory(plugin)
    strategy.train(benchmark.train_stream[1])
    old = set(benchmark.train_stream[0].classes_in_this_experience)
    replayed = [
        (x, y)
        for e, xb, yb in recorder.batches
        if e == 1
        for x, y in zip(xb, yb, strict=True)
        if int(y) in old
    ]
    assert len(replayed) >= len(memory_y)  # every batch carries memory samples
    for x, y in replayed:
        same = (memory_x == x).flatten(1).all(1)
        assert same.any() and int(memory_y[same][0]) == int(y)
    assert all(any(int(y) in old for y in yb) for e, _, yb in recorder.batches if e == 1)


def test_memory_only_protocol_trains_a_fresh_model_on_memory_only(bench):
    benchmark, train_set, test_set = bench
    retrain = TrainConfig(epochs=4, lr=0.05, batch_size=8, augment="dsa")
    plugin = MemoryOnlyRetrainPlugin(MEM, "uniform", retrain=retrain, seed=5)
    strategy = _strategy(_model(), [plugin])
    accuracies = []
    for exp in benchmark.train_stream:
        strategy.train(exp)
        k = exp.current_experience
        # independent: re-initialise a brand-new model the same way, train on the memory alone
        x, y, _ = _memory(plugin)
        order = torch.sort(y, stable=True).indices
        with seeded(derive_seed(5, k, 3, 0)):
            expected = MLP(64, 10, hidden=(16,))
        train(
            expected,
            x[order],
            y[order],
            epochs=4,
            lr=0.05,
            weight_decay=5e-4,
            batch_size=8,
            schedule="step",
            augment=DSA(),
            seed=derive_seed(5, k, 4, 0),
            progress=False,
        )
        for p, q in zip(strategy.model.parameters(), expected.parameters(), strict=True):
            torch.testing.assert_close(p.detach().cpu(), q.detach())
        metrics = strategy.eval(benchmark.test_stream[: k + 1])
        accuracies.append(metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"])
    assert plugin.retrained_experiences == [0, 1, 2, 3, 4]
    # the Avalanche protocol and the library's own loop agree experience by experience
    rows = memory_only_run(
        train_set,
        test_set,
        policies=["uniform"],
        per_class=MEM,
        seed=0,
        retrain=retrain,
        model="mlp",
        model_options={"hidden": (16,)},
        progress=False,
    )
    assert plugin.seed == 5  # different seed than the loop below: rerun with the loop's seed
    plugin0 = MemoryOnlyRetrainPlugin(MEM, "uniform", retrain=retrain, seed=0)
    strategy0 = _strategy(_model(), [plugin0])
    for exp, row in zip(benchmark.train_stream, rows, strict=True):
        strategy0.train(exp)
        metrics = strategy0.eval(benchmark.test_stream[: exp.current_experience + 1])
        got = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
        assert got == pytest.approx(row["accuracy"], abs=1e-6)
        assert len(plugin0.storage_policy.buffer) == row["memory_size"]
    assert len({round(r["accuracy"], 4) for r in rows}) >= 3  # an informative comparison


def test_metrics_and_forgetting_are_produced(bench):
    benchmark, _, _ = bench
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True),
        loggers=[],
    )
    strategy = _strategy(_model(), [LCMatReplayPlugin(MEM, "herding")], 1, evaluator)
    for k, exp in enumerate(benchmark.train_stream[:2]):
        strategy.train(exp)
        metrics = strategy.eval(benchmark.test_stream[: k + 1])
    assert 0.0 <= metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] <= 1.0
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in metrics
    forgetting = metrics["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"]
    first = metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"]
    assert -1.0 <= forgetting <= 1.0 and 0.0 <= first <= 1.0


def test_run_continual_reports_each_experience(bench):
    benchmark, _, _ = bench
    rows = run_continual(
        benchmark,
        policy="craig",
        protocol="replay",
        per_class=2,
        train_epochs=1,
        model="mlp",
        model_options={"hidden": (16,)},
        seed=1,
    )
    assert [r["experience"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["classes_seen"] for r in rows] == [2, 4, 6, 8, 10]
    assert [r["memory_size"] for r in rows] == [4, 8, 12, 16, 20]
    again = run_continual(
        benchmark,
        policy="craig",
        protocol="replay",
        per_class=2,
        train_epochs=1,
        model="mlp",
        model_options={"hidden": (16,)},
        seed=1,
    )
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in again]


@pytest.mark.parametrize("policy,options", [("kcenter", {}), ("lcmat-c", LCMAT_C)])
def test_small_class_is_stored_whole_with_a_warning(policy, options):
    sizes = [20] * 10
    sizes[7] = 2
    benchmark, _, _ = _benchmark(tuple(sizes))
    plugin = LCMatReplayPlugin(MEM, policy, options=options)
    strategy = _strategy(_model(), [plugin])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for exp in benchmark.train_stream:
            strategy.train(exp)
    assert any("class 7 has only 2 sample(s)" in str(w.message) for w in caught)
    _, y, _ = _memory(plugin)
    assert int((y == 7).sum()) == 2
    assert all(int((y == c).sum()) == MEM for c in range(10) if c != 7)


@pytest.mark.parametrize("policy,options", [("lcmat-s", {}), ("dm", LCMAT_C)])
def test_memory_round_trip_resumes_with_the_same_memory(bench, tmp_path, policy, options):
    benchmark, _, _ = bench
    plugin = LCMatReplayPlugin(MEM, policy, options=options)
    strategy = _strategy(_model(), [plugin])
    for exp in benchmark.train_stream[:2]:
        strategy.train(exp)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": strategy.model.state_dict(), "memory": plugin.state_dict()}, path)

    state = torch.load(path, weights_only=True)
    restored = LCMatReplayPlugin(MEM, policy, options=options)
    model = _model()
    model.load_state_dict(state["model"])
    restored.load_state_dict(state["memory"], stream=benchmark.train_stream)
    resumed = _strategy(model, [restored])
    for a, b in zip(_memory(plugin), _memory(restored), strict=True):
        assert torch.equal(a, b)
    assert restored.mem_size == plugin.mem_size == 4 * MEM
    for exp in benchmark.train_stream[2:]:
        strategy.train(exp)
        resumed.train(exp)
        for a, b in zip(_memory(plugin), _memory(restored), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="policy"):
        LCMatReplayPlugin(MEM, "uniform").load_state_dict(state["memory"], benchmark.train_stream)


def test_selector_strategy_inside_avalanches_own_parametric_buffer(bench):
    benchmark, _, _ = bench
    selector = SelectorExemplarsStrategy("lcmat-s")
    buffer = ParametricBuffer(20, groupby="class", selection_strategy=selector)
    model = _model()
    strategy = _strategy(model, [])
    strategy.train(benchmark.train_stream[0])
    buffer.post_adapt(strategy, benchmark.train_stream[0])  # Avalanche ranks whole groups
    assert len(buffer.buffer) == 20
    data = benchmark.train_stream[0].dataset
    assert selector.make_sorted_indices(strategy, data.subset([])) == []
    full = selector.make_sorted_indices(strategy, data)
    assert sorted(full) == list(range(len(data)))
    # a budget gives the greedy prefix of the full ranking (classes interleaved by rank)
    assert selector.make_sorted_indices(strategy, data, total=6) == full[:6]
    classes = set(benchmark.train_stream[0].classes_in_this_experience)
    labels = [int(data.targets[i]) for i in full[:6]]
    assert all(set(labels[i : i + 2]) == classes for i in (0, 2, 4))


def test_budget_is_filled_when_a_class_is_smaller_than_its_share(bench):
    benchmark, _, _ = bench
    data = benchmark.train_stream[0].dataset
    a, b = benchmark.train_stream[0].classes_in_this_experience
    targets = torch.as_tensor(list(data.targets))
    small = torch.nonzero(targets == a).flatten()[:2]
    large = torch.nonzero(targets == b).flatten()[:10]
    group = data.subset(torch.cat([small, large]).tolist())  # classes of 2 and 10 samples
    strategy = _strategy(_model(), [])
    for name in ("lcmat-s", "uniform"):
        picks = SelectorExemplarsStrategy(name).make_sorted_indices(strategy, group, total=10)
        assert len(picks) == 10 and len(set(picks)) == 10
        labels = [int(group.targets[i]) for i in picks]
        assert labels.count(a) == 2 and labels.count(b) == 8


def test_parametric_buffer_stays_class_balanced_across_experiences(bench):
    # Avalanche 0.6.0's ClassBalancedBuffer is reservoir sampling and takes no selection
    # strategy; ParametricBuffer(groupby="class") is its class-balanced selection buffer.
    benchmark, _, _ = bench
    selector = SelectorExemplarsStrategy("lcmat-s")
    buffer = ParametricBuffer(20, groupby="class", selection_strategy=selector)
    strategy = _strategy(_model(), [])
    for k in range(2):
        strategy.train(benchmark.train_stream[k])
        buffer.post_adapt(strategy, benchmark.train_stream[k])
        seen = [
            c for e in range(k + 1) for c in benchmark.train_stream[e].classes_in_this_experience
        ]
        labels = [int(y) for y in buffer.buffer.targets]
        assert len(labels) == 20
        assert sorted(set(labels)) == sorted(seen)
        assert all(labels.count(c) == 20 // len(seen) for c in seen)


def test_extraction_uses_eval_transforms_and_restores_the_model_mode(bench):
    _, train_set, test_set = bench

    def noisy(x):  # a random train-time augmentation
        return x + torch.randn_like(x)

    benchmark = tensor_benchmark(
        train_set, test_set, n_experiences=5, seed=0, train_transform=noisy
    )
    data = benchmark.train_stream[0].dataset
    model = _model().train()
    strategy = _strategy(model, [])
    selector = SelectorExemplarsStrategy("herding")
    first = selector.make_sorted_indices(strategy, data, total=4)
    assert model.training
    assert selector.make_sorted_indices(strategy, data, total=4) == first
    clean = tensor_benchmark(train_set, test_set, n_experiences=5, seed=0)
    assert selector.make_sorted_indices(strategy, clean.train_stream[0].dataset, total=4) == first


def test_bad_inputs_name_the_problem(bench):
    with pytest.raises(ValueError, match="unknown memory policy 'nope'.*lcmat-s.*lcmat-c"):
        LCMatReplayPlugin(MEM, "nope")
    with pytest.raises(ValueError, match="per_class"):
        SelectionBuffer(0)
    with pytest.raises(ValueError, match="selection policy"):
        CondensedClassBuffer(MEM, "lcmat-s")
    with pytest.raises(ValueError, match="iterations"):
        LCMatReplayPlugin(MEM, "lcmat-s", options={"iterations": 3})
    with pytest.raises(TypeError, match="iterations"):  # a condenser option, not the plugin's
        LCMatReplayPlugin(MEM, "dm", iterations=3)
    plugin = LCMatReplayPlugin(MEM, "uniform")
    strategy = _strategy(_model(), [plugin])
    strategy.train(bench[0].train_stream[0])
    with pytest.raises(ValueError, match="stream="):
        LCMatReplayPlugin(MEM, "uniform").load_state_dict(plugin.state_dict())


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_examples_run_offline_on_digits(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "split_example", REPO / "examples" / "split_cifar100_5tasks.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [
        "--data",
        "digits",
        "--model",
        "mlp",
        "--policy",
        "uniform",
        "dm",
        "--iterations",
        "1",
        "--retrain-epochs",
        "3",
        "--train-epochs",
        "1",
        "--out-dir",
        str(tmp_path),
    ]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "| uniform |" in out and "| dm |" in out
    assert (tmp_path / "split_digits_paper.csv").is_file()
    assert example.main(["--data-root", str(tmp_path / "none")]) == 1  # CIFAR-100 offline
    assert "download" in capsys.readouterr().err

    runpy.run_path(str(REPO / "examples" / "quickstart.py"), run_name="__main__")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("after experience")]
    assert len(lines) == 5 and float(lines[-1].split()[-1]) > 0.5


@pytest.mark.parametrize("policy,options", [("lcmat-s", {}), ("lcmat-c", LCMAT_C)])
def test_shrinking_the_memory_keeps_each_class_prefix(bench, policy, options):
    benchmark, _, _ = bench
    plugin = LCMatReplayPlugin(MEM, policy, options=options)
    strategy = _strategy(_model(), [plugin])
    strategy.train(benchmark.train_stream[0])
    x, y, _ = _memory(plugin)
    plugin.storage_policy.resize(strategy, 4)  # Avalanche semantics: total over 2 classes
    x2, y2, _ = _memory(plugin)
    assert plugin.storage_policy.max_size == 4 and plugin.per_class == 2
    for c in benchmark.train_stream[0].classes_in_this_experience:
        assert torch.equal(x2[y2 == c], x[y == c][:2])
    with pytest.raises(ValueError, match="cannot hold one"):
        plugin.storage_policy.resize(strategy, 1)


def test_growing_a_condensed_memory_warns_and_reports_what_it_holds(bench):
    benchmark, _, _ = bench
    plugin = LCMatReplayPlugin(MEM, "dm", options={"iterations": 2})
    strategy = _strategy(_model(), [plugin])
    strategy.train(benchmark.train_stream[0])
    with pytest.warns(UserWarning, match="keep their 3"):
        plugin.storage_policy.resize(strategy, 10)  # 5 per class for the 2 stored classes
    assert plugin.per_class == 5
    assert plugin.storage_policy.max_size == len(plugin.storage_policy.buffer) == 2 * MEM


def test_selector_strategy_takes_class_batch_statistics(bench):
    from replay_lcmat.memory import select_exemplars
    from replay_lcmat.models import ConvNet
    from replay_lcmat.selection import extract_outputs

    benchmark, _, _ = bench
    data = benchmark.train_stream[0].dataset
    with seeded(0):
        model = ConvNet(1, 10, image_size=8, width=4, depth=2, norm="batch")
    strategy = _strategy(model, [])
    x, y, _ = dataset_tensors(data)
    orders = {}
    for stats in ("running", "class-batch"):
        selector = SelectorExemplarsStrategy("craig", stats=stats)
        got = selector.make_sorted_indices(strategy, data, total=2 * len(y.unique()))
        out = extract_outputs(model, x, labels=y, stats=stats)
        picks = select_exemplars(
            "craig", labels=y, features=out.features, logits=out.logits, per_class=2
        )
        assert sorted(got) == sorted(picks.tolist())
        orders[stats] = got
    assert orders["running"] != orders["class-batch"]
    plugin = LCMatReplayPlugin(MEM, "lcmat-s", stats="class-batch")
    assert plugin.storage_policy.selection_strategy.stats == "class-batch"
    with pytest.raises(ValueError, match="stats applies to selection policies"):
        LCMatReplayPlugin(MEM, "dm", stats="class-batch")
    with pytest.raises(ValueError, match="unknown stats"):
        SelectorExemplarsStrategy("craig", stats="train")
