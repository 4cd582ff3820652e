"""Avalanche users' setups: task-incremental benchmarks whose tasks reuse class labels
(``nc_benchmark(task_labels=True, class_ids_from_zero_in_each_exp=True)`` with Avalanche's
``MTSimpleMLP``), Avalanche's fixed-total sizing (``mem_size``), and stacked replay plugins."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark  # noqa: E402
from avalanche.models import MTSimpleMLP  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

from replay_lcmat.seeding import seeded  # noqa: E402
from replay_lcmat.strategies import (  # noqa: E402
    LCMatReplayPlugin,
    SelectionBuffer,
    dataset_tensors,
    tensor_dataset,
)

N_TASKS, CLASSES, PER_CLASS = 3, 6, 12
MOMENTUM = 0.9


def _data(per_class: int, seed: int):
    """float [n, 1, 8, 8]: a fixed pattern per class plus noise, labels 0..5."""
    protos = torch.randn(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    noise = torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return tensor_dataset(protos[y] + 0.5 * noise, y)


def _task_bench(class_ids_from_zero=True):
    return nc_benchmark(
        _data(PER_CLASS, 0),
        _data(4, 1),
        n_experiences=N_TASKS,
        task_labels=True,
        class_ids_from_zero_in_each_exp=class_ids_from_zero,
        fixed_class_order=list(range(CLASSES)),
    )


def _naive(model, plugins):
    return Naive(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=16,
        train_epochs=1,
        eval_mb_size=64,
        plugins=plugins,
        evaluator=None,
    )


def _run(plugin, bench, n=N_TASKS):
    with seeded(0):
        model = MTSimpleMLP(input_size=64, hidden_size=16)
    strategy = _naive(model, [plugin])
    for exp in bench.train_stream[:n]:
        strategy.train(exp)
    return strategy


# -------------------------------------------------------------- task-aware memories
def test_tasks_that_reuse_class_labels_keep_one_memory_per_task():
    bench = _task_bench()
    assert bench.train_stream[2].classes_in_this_experience == [0, 1]  # labels are reused
    plugin = LCMatReplayPlugin(per_class=3, policy="uniform")
    _run(plugin, bench)
    _, y, t = dataset_tensors(plugin.storage_policy.buffer)
    assert len(y) == N_TASKS * 2 * 3 == 18
    pairs = sorted(zip(t.tolist(), y.tolist(), strict=True))
    assert pairs == sorted((task, c) for task in range(N_TASKS) for c in (0, 1) for _ in range(3))
    assert sorted(plugin.storage_policy.buffer_groups) == [
        (task, c) for task in range(N_TASKS) for c in (0, 1)
    ]
    assert plugin.mem_size == 18
    # each exemplar is a sample of its own task's experience
    for (task, c), sources in plugin.storage_policy.exemplar_sources().items():
        assert (sources[:, 0] == task).all()
        exp_targets = bench.train_stream[task].dataset.targets
        assert all(int(exp_targets[i]) == c for i in sources[:, 1].tolist())


def test_class_incremental_memory_stays_keyed_by_class():
    bench = _task_bench()
    buffer = SelectionBuffer(2, "uniform")
    strategy = _naive(MTSimpleMLP(input_size=64, hidden_size=16), [])
    buffer.post_adapt(strategy, bench.train_stream[0])  # task 0 only: nothing to tell apart
    assert not buffer.task_aware and sorted(buffer.buffer_groups) == [0, 1]
    buffer.post_adapt(strategy, bench.train_stream[1])
    assert buffer.task_aware and sorted(buffer.buffer_groups) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_task_aware_memory_restores_with_its_keys_and_refuses_another_task_layout():
    bench = _task_bench()
    plugin = LCMatReplayPlugin(per_class=3, policy="uniform")
    _run(plugin, bench, n=2)
    state = plugin.state_dict()
    assert state["storage"]["task_aware"] and state["storage"]["tasks"] == [0, 0, 1, 1]
    restored = LCMatReplayPlugin(per_class=3, policy="uniform")
    restored.load_state_dict(state, bench.train_stream)
    assert (
        restored.storage_policy.buffer_groups.keys() == plugin.storage_policy.buffer_groups.keys()
    )
    assert restored.mem_size == 12
    x0, y0, t0 = dataset_tensors(plugin.storage_policy.buffer)
    x1, y1, t1 = dataset_tensors(restored.storage_policy.buffer)
    assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(t0, t1)
    # a task key that does not match the stream's task labels is refused
    storage = dict(state["storage"], tasks=[0, 0, 2, 2])
    with pytest.raises(ValueError, match=r"task 2's class 0 has an exemplar .* task label 1"):
        LCMatReplayPlugin(per_class=3, policy="uniform").load_state_dict(
            dict(state, storage=storage), bench.train_stream
        )


# ------------------------------------------------------------ Avalanche's sizing
def _class_bench():
    return nc_benchmark(
        _data(PER_CLASS, 0),
        _data(4, 1),
        n_experiences=N_TASKS,
        task_labels=False,
        fixed_class_order=list(range(CLASSES)),
    )


def _mlp_strategy(plugins):
    with seeded(0):
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6)
        )
    return _naive(model, plugins)


def test_mem_size_is_a_fixed_total_split_over_the_classes_each_shrunk_to_its_prefix():
    bench = _class_bench()
    plugin = LCMatReplayPlugin(mem_size=10, policy="lcmat-s")
    assert plugin.mem_size == 10 and plugin.storage_policy.max_size == 10
    strategy = _mlp_strategy([plugin])
    expected = {1: [5, 5], 2: [3, 3, 2, 2], 3: [2, 2, 2, 2, 1, 1]}  # classes in order seen
    before = {}
    for k, exp in enumerate(bench.train_stream, start=1):
        strategy.train(exp)
        sources = plugin.storage_policy.exemplar_sources()
        assert list(sources) == list(range(2 * k))
        assert [len(s) for s in sources.values()] == expected[k]
        _, y, _ = dataset_tensors(plugin.storage_policy.buffer)
        assert len(y) == 10 and plugin.mem_size == 10 and plugin.storage_policy.max_size == 10
        for c, old in before.items():  # an older class keeps the prefix of its ranking
            assert torch.equal(sources[c], old[: len(sources[c])])
        before = sources
    # a growing memory of the same policy ranks the same way: its prefixes are these memories
    grown = LCMatReplayPlugin(per_class=5, policy="lcmat-s")
    other = _mlp_strategy([grown])
    other.train(bench.train_stream[0])
    first = grown.storage_policy.exemplar_sources()
    for c in (0, 1):
        assert torch.equal(before[c], first[c][: len(before[c])])


def test_mem_size_works_with_avalanches_replay_plugin_and_restores():
    from avalanche.training.plugins import ReplayPlugin

    bench = _class_bench()
    buffer = SelectionBuffer(mem_size=8, selection_strategy="herding")
    plugin = ReplayPlugin(mem_size=8, storage_policy=buffer)  # Avalanche's own check passes
    strategy = _mlp_strategy([plugin])
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    assert [len(s) for s in buffer.exemplar_sources().values()] == [2, 2, 2, 2]
    restored = SelectionBuffer(mem_size=8, selection_strategy="herding")
    restored.load_state_dict(buffer.state_dict(), bench.train_stream)
    assert restored.max_size == 8
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            restored.exemplar_sources().values(), buffer.exemplar_sources().values(), strict=True
        )
    )
    with pytest.raises(ValueError, match=r"built with mem_size=8, this buffer with per_class=2"):
        SelectionBuffer(2, "herding").load_state_dict(buffer.state_dict(), bench.train_stream)


@pytest.mark.parametrize("kwargs", [{}, {"per_class": 3, "mem_size": 10}], ids=["neither", "both"])
def test_sizing_needs_exactly_one_of_per_class_and_mem_size(kwargs):
    for build in (LCMatReplayPlugin, SelectionBuffer):
        with pytest.raises(ValueError, match=r"give per_class= or mem_size=, not (both|neither)"):
            build(**kwargs)
    with pytest.raises(ValueError, match=r"give per_class= or mem_size="):
        LCMatReplayPlugin(policy="dm", options={"iterations": 1}, **kwargs)


def test_condensed_memory_with_mem_size_shares_the_total():
    bench = _class_bench()
    plugin = LCMatReplayPlugin(
        mem_size=6,
        policy="dm",
        options={"iterations": 1, "network_options": {"width": 4, "depth": 1}},
        progress=False,
    )
    strategy = _mlp_strategy([plugin])
    strategy.train(bench.train_stream[0])
    _, y, _ = dataset_tensors(plugin.storage_policy.buffer)
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1] and plugin.mem_size == 6
    strategy.train(bench.train_stream[1])
    _, y, _ = dataset_tensors(plugin.storage_policy.buffer)
    assert sorted(y.tolist()) == [0, 1, 2, 3] and plugin.storage_policy.per_class == 1


def test_a_second_replay_plugin_on_the_strategy_is_warned_about():
    from avalanche.training.plugins import ReplayPlugin

    bench = _class_bench()
    alone = _mlp_strategy([LCMatReplayPlugin(2, "uniform")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alone.train(bench.train_stream[0])
    assert not [w for w in caught if "another replay plugin" in str(w.message)]
    both = _mlp_strategy([ReplayPlugin(mem_size=20), LCMatReplayPlugin(2, "uniform")])
    with pytest.warns(
        UserWarning, match=r"another replay plugin is on this strategy \(ReplayPlugin\)"
    ):
        both.train(bench.train_stream[0])


def test_the_stacked_replay_warning_is_given_once_per_plugin():
    from avalanche.training.plugins import ReplayPlugin

    bench = _class_bench()
    both = _mlp_strategy([ReplayPlugin(mem_size=20), LCMatReplayPlugin(2, "uniform")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for exp in bench.train_stream[:2]:
            both.train(exp)
    assert len([w for w in caught if "another replay plugin" in str(w.message)]) == 1


# ------------------------------------------------------------ layer_name
def test_layer_name_ranks_by_the_named_layers_output():
    from replay_lcmat.selection import make_selector

    bench = _class_bench()
    plugin = LCMatReplayPlugin(3, "herding", layer_name="1")  # the first Linear, before ReLU
    strategy = _mlp_strategy([plugin])
    strategy.model[2].inplace = True  # the ReLU after the layer overwrites its output
    strategy.model.train()
    exp = bench.train_stream[0]
    strategy.train(exp)
    assert strategy.model.training  # the mode is left as it was
    x, y, _ = dataset_tensors(exp.dataset)
    with torch.no_grad():
        h = strategy.model[1](x.flatten(1))
    for c, sources in plugin.storage_policy.exemplar_sources().items():
        rows = torch.nonzero(y == c).flatten()
        picks = (
            make_selector("herding").select(features=h[rows], labels=y[rows], per_class=3).indices
        )
        assert torch.equal(sources[:, 1], rows[picks])
    with pytest.raises(ValueError, match=r"layer_name applies to selectors that rank by features"):
        LCMatReplayPlugin(3, "lcmat-s", layer_name="1")
    with pytest.raises(ValueError, match=r"layer_name applies to selection policies"):
        LCMatReplayPlugin(3, "dm", options={"iterations": 1}, layer_name="1")
    wrong = _mlp_strategy([LCMatReplayPlugin(3, "herding", layer_name="nope")])
    with pytest.raises(ValueError, match=r"layer_name 'nope' is not a module of Sequential"):
        wrong.train(exp)


# ------------------------------------------------------------ resuming a stopped run
def _resumable(seed):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with seeded(seed):
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6)
        )
    plugin = LCMatReplayPlugin(mem_size=8, policy="herding")
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=MOMENTUM),
        train_mb_size=8,
        train_epochs=2,
        eval_mb_size=64,
        plugins=[plugin],
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    return strategy, plugin


def test_a_run_stopped_after_experience_2_resumes_as_if_never_stopped(tmp_path):
    from replay_lcmat.strategies import load_run, save_run, stream_accuracy

    bench = _class_bench()
    torch.manual_seed(1)
    strategy, plugin = _resumable(0)
    accuracies = []
    for exp in bench.train_stream:
        strategy.train(exp)
        accuracies.append(stream_accuracy(strategy.eval(bench.test_stream)))

    torch.manual_seed(1)
    first, _ = _resumable(0)
    stopped = []
    for exp in bench.train_stream[:2]:
        first.train(exp)
        stopped.append(stream_accuracy(first.eval(bench.test_stream)))
    save_run(tmp_path / "run.pt", first, next_experience=2)
    del first

    torch.manual_seed(99)  # another process: other random state, another initial model
    second, resumed = _resumable(5)
    start = load_run(tmp_path / "run.pt", second, bench.train_stream)
    assert start == 2 and second.clock.train_exp_counter == 2
    for exp in bench.train_stream[start:]:
        second.train(exp)
        stopped.append(stream_accuracy(second.eval(bench.test_stream)))
    assert stopped == accuracies
    for a, b in zip(strategy.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    mine, theirs = (
        plugin.storage_policy.exemplar_sources(),
        resumed.storage_policy.exemplar_sources(),
    )
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="holds 1 LCMat memories, this strategy has 0"):
        load_run(tmp_path / "run.pt", _mlp_strategy([]), bench.train_stream)
