"""Avalanche users' setups: task-incremental benchmarks whose tasks reuse class labels
(``nc_benchmark(task_labels=True, class_ids_from_zero_in_each_exp=True)`` with Avalanche's
``MTSimpleMLP``), Avalanche's fixed-total sizing (``mem_size``), and stacked replay plugins."""

from __future__ import annotations

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
