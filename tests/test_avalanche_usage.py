"""Avalanche usage as a new user writes it: Avalanche's own models (SimpleMLP, SimpleCNN,
IncrementalClassifier, MTSimpleMLP on a task-incremental benchmark), Avalanche's ReplayPlugin,
save/restore with mismatched streams, option typos and the cost of condensation."""

from __future__ import annotations

import pytest
import torch
import torchvision

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios import split_online_stream  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.models import (  # noqa: E402
    IncrementalClassifier,
    MTSimpleMLP,
    SimpleCNN,
    SimpleMLP,
)
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

from replay_lcmat.data import ImageData  # noqa: E402
from replay_lcmat.data.digits import load_digits  # noqa: E402
from replay_lcmat.models import split_head  # noqa: E402
from replay_lcmat.seeding import seeded  # noqa: E402
from replay_lcmat.selection import extract_outputs, lcmat_s  # noqa: E402
from replay_lcmat.strategies import (  # noqa: E402
    CondensedClassBuffer,
    LCMatReplayPlugin,
    MemoryOnlyRetrainPlugin,
    SelectionBuffer,
    SelectorExemplarsStrategy,
    dataset_tensors,
    tensor_benchmark,
)

MEM = 2
HIDDEN = 16


def _per_class(data: ImageData, n: int) -> ImageData:
    keep = torch.cat([torch.nonzero(data.labels == c).flatten()[:n] for c in range(10)])
    return data.subset(keep.sort().values)


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits()
    return _per_class(train, 24), _per_class(test, 6)


@pytest.fixture(scope="module")
def bench(digits):
    return tensor_benchmark(*digits, n_experiences=5, seed=0)


def _strategy(model, plugins, epochs=1):
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=epochs,
        eval_mb_size=64,
        plugins=plugins,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )


def _simple_mlp(classifier=None):
    with seeded(0):
        model = SimpleMLP(num_classes=10, input_size=64, hidden_size=HIDDEN)
        if classifier is not None:
            model.classifier = classifier
    return model


def _class_images(exp, c):
    x, y, _ = dataset_tensors(exp.dataset)
    return x[y == c]


def _memory(plugin):
    return dataset_tensors(plugin.storage_policy.buffer)


# ------------------------------------------------------------------ 1. split_head / extract
def _foreign(name):
    """(model in eval mode, example batch) of a model whose .features/.classifier mislead."""
    with seeded(0):
        if name == "simple-mlp":  # flattens in forward; features(x) expects flat input
            return _simple_mlp().eval(), torch.randn(6, 1, 8, 8)
        if name == "densenet":  # ReLU + pooling after .features: wrong logits at 32x32
            # densenet121's forward on a small DenseNet (same class; densenet121 takes seconds),
            # at a size where .features ends at 1x1 as densenet121's does at 32x32
            net = torchvision.models.DenseNet(8, (2, 2), 16, num_classes=10)
            return net.eval(), torch.randn(2, 3, 8, 8)
        head = IncrementalClassifier(HIDDEN, initial_out_features=4)
        head.active_units[:2] = 1  # classes 0, 1 seen: 2, 3 masked to -1000
        return _simple_mlp(head).eval(), torch.randn(6, 1, 8, 8)


@pytest.mark.parametrize("name", ["simple-mlp", "densenet", "incremental-classifier"])
def test_split_reproduces_the_output_of_avalanche_and_torchvision_models(name):
    model, x = _foreign(name)
    with torch.no_grad():
        expected = model(x)
        if name == "densenet":  # the trap: trusting .features gives logits of the right shape
            naive = model.classifier(model.features(x).flatten(1))
            assert naive.shape == expected.shape and not torch.allclose(naive, expected)
        features, head = split_head(model, example=x)
        torch.testing.assert_close(head(features(x).flatten(1)), expected)
        out = extract_outputs(
            model, x, labels=torch.zeros(len(x), dtype=torch.int64), stats="running"
        )
    torch.testing.assert_close(out.logits, expected)
    if name == "incremental-classifier":  # the head keeps the masking: part of the logits
        assert type(head).__name__ == "OutputHead" and out.features.shape == (len(x), HIDDEN)
        assert (out.logits[:, 2:] == -1000).all() and (out.logits[:, :2] != -1000).all()
    else:
        assert head is model.classifier and out.features.shape == (len(x), head.in_features)
    if name == "simple-mlp":
        torch.testing.assert_close(out.features, model.get_features(x))


def test_split_names_the_fix_for_a_model_that_needs_task_labels():
    with seeded(0):
        model = MTSimpleMLP(input_size=64, hidden_size=HIDDEN).eval()
    with pytest.raises(ValueError, match="missing.*task_labels.*model\\(x, task_label\\)"):
        split_head(model, example=torch.randn(2, 1, 8, 8))


def test_replay_with_simple_mlp_and_an_incremental_classifier_ranks_masked_logits(bench):
    model = _simple_mlp(IncrementalClassifier(HIDDEN, initial_out_features=1))
    plugin = LCMatReplayPlugin(
        MEM, "lcmat-s", options={"eps": 0.01}
    )  # the paper's LCMat-S, as lcmat_s below
    strategy = _strategy(model, [plugin])
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    _, y, _ = _memory(plugin)
    seen = bench.train_stream[0].classes_in_this_experience + exp.classes_in_this_experience
    assert sorted(y.tolist()) == sorted(seen * MEM)
    x_mem, y_mem, _ = _memory(plugin)
    model.eval()
    for c in exp.classes_in_this_experience:  # independent: LCMat-S on model(x) itself
        xc = _class_images(exp, c)
        with torch.no_grad():
            h, z = model.get_features(xc), model(xc)
        assert (z == -1000).any()  # unseen classes are masked in the model's output
        picks = lcmat_s(h, z, torch.full((len(xc),), c), per_class=MEM)
        assert torch.equal(xc[picks], x_mem[y_mem == c])


@pytest.mark.slow
def test_replay_with_simple_cnn(digits):
    def rgb16(data):  # SimpleCNN needs 3 channels and at least 16 pixels
        x = data.images.repeat_interleave(2, -1).repeat_interleave(2, -2).expand(-1, 3, -1, -1)
        return ImageData(x.contiguous(), data.labels, data.classes, data.mean * 3, data.std * 3)

    benchmark = tensor_benchmark(*(rgb16(d) for d in digits), n_experiences=5, seed=0)
    with seeded(0):
        model = SimpleCNN(num_classes=10)
    plugin = LCMatReplayPlugin(MEM, "herding")
    strategy = _strategy(model, [plugin])
    for exp in benchmark.train_stream[:2]:
        strategy.train(exp)
    x, y, _ = _memory(plugin)
    assert x.shape[1:] == (3, 16, 16) and len(y) == 4 * MEM


# ---------------------------------------------------------------- 2. multi-task models
@pytest.fixture(scope="module")
def task_bench(digits):
    return tensor_benchmark(*digits, n_experiences=5, seed=0, task_labels=True)


@pytest.mark.slow
def test_multi_task_model_is_ranked_through_its_task_head(task_bench):
    with seeded(0):
        model = MTSimpleMLP(input_size=64, hidden_size=HIDDEN)
    plugin = LCMatReplayPlugin(
        MEM, "lcmat-s", options={"eps": 0.01}
    )  # the paper's LCMat-S, as lcmat_s below
    strategy = _strategy(model, [plugin])
    task_of = {}
    for exp in task_bench.train_stream[:3]:
        strategy.train(exp)
        (task,) = exp.task_labels
        task_of |= {c: task for c in exp.classes_in_this_experience}
        _, y, t = _memory(plugin)
        assert sorted(y.tolist()) == sorted(list(task_of) * MEM)
        assert [task_of[int(c)] for c in y] == t.tolist()
    assert task == 2
    x_mem, y_mem, _ = _memory(plugin)
    model.eval()
    for c in exp.classes_in_this_experience:  # independent: task 2's head, with its masking
        xc = _class_images(exp, c)
        with torch.no_grad():
            h, z = model.features(xc.flatten(1)), model(xc, task)
        picks = lcmat_s(h, z, torch.full((len(xc),), c), per_class=MEM)
        assert torch.equal(xc[picks], x_mem[y_mem == c])
    # a group that mixes tasks (Avalanche's own buffers may pass one): one pick list, balanced
    mixed = task_bench.train_stream[0].dataset.concat(task_bench.train_stream[1].dataset)
    picks = SelectorExemplarsStrategy("lcmat-s", options={"eps": 0.01}).make_sorted_indices(
        strategy, mixed, total=8
    )
    assert sorted(int(mixed.targets[i]) for i in picks) == sorted(
        (
            task_bench.train_stream[0].classes_in_this_experience
            + task_bench.train_stream[1].classes_in_this_experience
        )
        * 2
    )


def test_memory_only_protocol_refuses_a_multi_task_model_before_training(task_bench):
    with seeded(0):
        model = MTSimpleMLP(input_size=64, hidden_size=HIDDEN)
    strategy = _strategy(model, [MemoryOnlyRetrainPlugin(MEM, "uniform")])
    with pytest.raises(ValueError, match="multi-task model.*LCMatReplayPlugin"):
        strategy.train(task_bench.train_stream[0])


def test_condensed_memory_refuses_a_class_label_reused_by_another_task(bench):
    buffer = CondensedClassBuffer(MEM, "dm", options={"iterations": 1}, progress=False)
    buffer.task_labels[bench.train_stream[0].classes_in_this_experience[0]] = 7
    with pytest.raises(ValueError, match=r"class \d+ comes with task labels \[0, 7\]"):
        buffer.post_adapt(_strategy(_simple_mlp(), []), bench.train_stream[0])


# ------------------------------------------------- 3. the buffers with Avalanche's ReplayPlugin
def test_avalanches_replay_plugin_with_a_per_class_buffer(bench):
    for buffer in (SelectionBuffer(10), CondensedClassBuffer(10, "dm", options={"iterations": 1})):
        assert buffer.max_size == 0 and isinstance(buffer.max_size, int)
        with pytest.raises(AssertionError):  # Avalanche's own check: pass buffer.max_size
            ReplayPlugin(mem_size=100, storage_policy=buffer)
    buffer = SelectionBuffer(MEM, "herding")
    plugin = ReplayPlugin(mem_size=buffer.max_size, storage_policy=buffer)
    strategy = _strategy(_simple_mlp(), [plugin])
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    assert buffer.max_size == len(buffer.buffer) == 4 * MEM


# ------------------------------------------------------------------ 4. save / restore
@pytest.fixture(scope="module")
def saved(bench):
    plugin = LCMatReplayPlugin(MEM, "uniform")
    strategy = _strategy(_simple_mlp(), [plugin], epochs=0)
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    return plugin.state_dict()


def test_restore_checks_labels_and_images_of_the_stream(bench, digits, saved):
    storage = saved["storage"]
    assert [sorted(set(lab.tolist())) for lab in storage["labels"]] == [
        [c] for c in storage["classes"]
    ]
    assert all(f.shape == (MEM, 2) for f in storage["fingerprints"])
    restored = LCMatReplayPlugin(MEM, "uniform")
    restored.load_state_dict(saved, stream=bench.train_stream)
    assert restored.mem_size == 4 * MEM
    train, test = digits
    other_order = tensor_benchmark(train, test, n_experiences=5, seed=1)
    fewer = tensor_benchmark(train, test, n_experiences=2, seed=0)
    inverted = ImageData(255 - train.images, train.labels, train.classes, train.mean, train.std)
    other_pixels = tensor_benchmark(inverted, test, n_experiences=5, seed=0)
    for stream, match in [
        (other_order.train_stream, "stream does not match the memory.*is a sample of class"),
        (fewer.train_stream, "stream does not match the memory"),
        (other_pixels.train_stream, "another image than when the memory was saved"),
        (bench.test_stream, "built from the 'train' stream, this is the 'test' stream"),
        (split_online_stream(bench.train_stream, 10), "this is the 'train_online' stream"),
    ]:
        plugin = LCMatReplayPlugin(MEM, "uniform")
        with pytest.raises(ValueError, match=match):
            plugin.load_state_dict(saved, stream=stream)
        assert len(plugin.storage_policy.buffer) == 0  # left unchanged


def test_restore_of_an_online_memory_with_another_online_split(bench):
    buffer = SelectionBuffer(MEM, "uniform")
    strategy = _strategy(_simple_mlp(), [], epochs=0)
    for k, exp in enumerate(split_online_stream(bench.train_stream, 12, seed=0)):
        buffer.post_adapt(strategy, exp)
        if k == 3:
            break
    state = buffer.state_dict()
    assert state["stream"] == "train_online"
    SelectionBuffer(MEM, "uniform").load_state_dict(
        state, split_online_stream(bench.train_stream, 12, seed=0)
    )
    with pytest.raises(ValueError, match="stream does not match the memory"):
        SelectionBuffer(MEM, "uniform").load_state_dict(
            state, split_online_stream(bench.train_stream, 12, seed=1)
        )


@pytest.mark.slow
def test_restore_into_another_per_class_is_refused(bench, saved):
    with pytest.raises(ValueError, match="built with per_class=2, this buffer with per_class=5"):
        LCMatReplayPlugin(5, "uniform").load_state_dict(saved, stream=bench.train_stream)
    plugin = LCMatReplayPlugin(MEM, "dm", options={"iterations": 1}, progress=False)
    plugin.after_training_exp(_fake_strategy(bench.train_stream[0]))
    with pytest.raises(ValueError, match="keeps 2 images per class, this buffer 3"):
        LCMatReplayPlugin(3, "dm", options={"iterations": 1}).load_state_dict(plugin.state_dict())


def _fake_strategy(exp):
    class Strategy:
        device = torch.device("cpu")
        experience = exp

    return Strategy()


# --------------------------------------------------------------- 5. options checked early
def test_option_typos_fail_at_construction():
    with pytest.raises(ValueError, match="epss"):
        LCMatReplayPlugin(5, "lcmat-s", options={"epss": 0.1})
    with pytest.raises((TypeError, ValueError), match="epss"):
        LCMatReplayPlugin(5, "lcmat-c", options={"epss": 0.1})
    with pytest.raises(ValueError, match="epss"):
        MemoryOnlyRetrainPlugin(5, "craig", options={"epss": 0.1})
    with pytest.raises(ValueError, match="batch_size_mem must be None or an integer"):
        LCMatReplayPlugin(5, "lcmat-s", batch_size_mem=0)
    with pytest.raises(TypeError, match="eps"):  # selector options travel in options=
        LCMatReplayPlugin(5, "lcmat-s", eps=0.1)
    # device: where the model's outputs are taken (None: the strategy's device)
    assert LCMatReplayPlugin(5, "lcmat-s", device="cpu").storage_policy.selection_strategy.device == "cpu"  # fmt: skip


# ------------------------------------------------------------- 6. condensation cost shown
@pytest.mark.slow
def test_condensation_shows_progress_with_time_left_by_default(bench, capsys):
    plugin = LCMatReplayPlugin(MEM, "dm", options={"iterations": 2})
    assert plugin.storage_policy.progress
    assert not LCMatReplayPlugin(MEM, "dm", progress=False).storage_policy.progress
    assert not MemoryOnlyRetrainPlugin(MEM, "dm").progress  # the retraining's bar stays off
    assert MemoryOnlyRetrainPlugin(MEM, "dm").storage_policy.progress
    plugin.after_training_exp(_fake_strategy(bench.train_stream[0]))
    err = capsys.readouterr().err
    assert "dm" in err and "2/2" in err and "<" in err  # tqdm: elapsed<remaining


def test_paper_settings_on_a_cpu_warn_before_condensing(bench, monkeypatch):
    from replay_lcmat.memory import CondensationPolicy

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(CondensationPolicy, "build", stop)
    plugin = LCMatReplayPlugin(MEM, "lcmat-c")
    with pytest.warns(UserWarning, match="paper settings.*1000 iterations.*options=.'iterations'"):
        with pytest.raises(Stop):
            plugin.after_training_exp(_fake_strategy(bench.train_stream[0]))
