"""Selection statistics of extract_outputs: running vs. class-batch vs. class-center."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from replay_lcmat.models import ConvNet, make_model
from replay_lcmat.selection import SelectionModelConfig, extract_outputs
from replay_lcmat.selection.extract import STATS, class_batches, has_batch_statistics


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ConvNet(3, 4, image_size=8, width=6, depth=2, norm="batch")
    # give the running statistics values far from any batch's, so the modes differ clearly
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _data(n: int = 23, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def test_class_batches_hold_one_class_in_index_order():
    y = torch.tensor([1, 0, 1, 1, 0, 2, 1, 1, 0, 1])
    batches = class_batches(y, batch_size=2)
    got = [b.tolist() for b in batches]
    # class 0: [1, 4], [8]: the single trailing sample joins the run before it
    # class 1: [0, 2], [3, 6], [7, 9]; class 2: [5]
    assert got == [[1, 4, 8], [0, 2], [3, 6], [7, 9], [5]]
    assert sorted(torch.cat(batches).tolist()) == list(range(len(y)))


def test_class_batch_equals_a_manual_per_class_train_mode_forward():
    model = _bn_model()
    x, y = _data()
    out = extract_outputs(model, x, y, stats="class-batch", batch_size=4)
    expected_feats = torch.empty_like(out.features)
    expected_logits = torch.empty_like(out.logits)
    for idx in class_batches(y, 4):
        net = copy.deepcopy(model).train()  # fresh copy: BN normalises with this batch only
        with torch.no_grad():
            h = net.features(x[idx])
            expected_feats[idx] = h
            expected_logits[idx] = net.classifier(h)
    torch.testing.assert_close(out.features, expected_feats)
    torch.testing.assert_close(out.logits, expected_logits)
    # and it differs from the running statistics (else the test above proves nothing)
    running = extract_outputs(model, x, y, stats="running")
    assert (running.logits - out.logits).abs().max() > 1e-2


def test_class_batch_statistics_by_hand_for_one_bn_layer():
    """Tiny model whose BN output can be written out: the class mean is removed per batch."""
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3)
            self.classifier = nn.Linear(3, 2)

        def features(self, x):
            return self.bn(x)

        def forward(self, x):
            return self.classifier(self.features(x))

    model = Tiny()
    x = torch.randn(6, 3) * 3 + 5
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    out = extract_outputs(model, x, y, stats="class-batch")
    for c in (0, 1):
        block = x[y == c]
        mean, var = block.mean(0), block.var(0, unbiased=False)
        manual = (block - mean) / torch.sqrt(var + model.bn.eps)  # weight 1, bias 0 at init
        torch.testing.assert_close(out.features[y == c], manual)


@pytest.mark.parametrize("stats", ["class-batch", "running", "class-center"])
def test_callers_model_is_untouched(stats):
    model = _bn_model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, y = _data()
    extract_outputs(model, x, y, stats=stats, batch_size=5)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    model.eval()
    extract_outputs(model, x, y, stats=stats)
    assert not model.training


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_models_without_batch_statistics_get_identical_outputs(norm):
    torch.manual_seed(0)
    model = make_model("convnet", in_channels=3, num_classes=4, image_size=8, width=5, norm=norm)
    assert not has_batch_statistics(model)
    x, y = _data()
    running = extract_outputs(model, x, y, stats="running")
    batch = extract_outputs(model, x, y, stats="class-batch", batch_size=4)
    assert torch.equal(running.labels, batch.labels)
    torch.testing.assert_close(running.features, batch.features, rtol=0, atol=1e-6)
    torch.testing.assert_close(running.logits, batch.logits, rtol=0, atol=1e-6)


def test_class_batch_is_deterministic_and_keeps_input_order():
    model = _bn_model()
    x, y = _data()
    a = extract_outputs(model, x, y, stats="class-batch")
    b = extract_outputs(model, x, y, stats="class-batch")
    assert torch.equal(a.features, b.features) and torch.equal(a.logits, b.logits)
    assert torch.equal(a.labels, y)


def test_class_center_moves_each_class_mean_to_the_overall_mean():
    model = make_model("mlp", in_channels=1, num_classes=3, image_size=4, hidden=(7,))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 4, 4, generator=gen)
    y = torch.arange(30) % 3
    running = extract_outputs(model, x, y, stats="running")
    centred = extract_outputs(model, x, y, stats="class-center")
    assert torch.equal(running.features, centred.features)
    h = running.features.double()
    shifted = h.clone()
    for c in range(3):
        shifted[y == c] += h.mean(0) - h[y == c].mean(0)
    w, b = model.classifier.weight.double(), model.classifier.bias.double()
    torch.testing.assert_close(centred.logits.double(), shifted @ w.T + b, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="several classes"):
        extract_outputs(model, x[y == 0], y[y == 0], stats="class-center")


def test_bad_stats_and_batch_size_name_the_fix():
    model = _bn_model()
    x, y = _data()
    with pytest.raises(ValueError, match="unknown stats 'train'.*class-batch"):
        extract_outputs(model, x, y, stats="train")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        extract_outputs(model, x, y, stats="class-batch", batch_size=0)
    assert set(STATS) >= {"running", "class-batch"}


# ------------------------------------------------------------------ wiring of the option
def _digits_bn_model():
    torch.manual_seed(0)
    return ConvNet(1, 10, image_size=8, width=4, depth=2, norm="batch")


def test_build_memory_takes_a_model_and_its_stats():
    from replay_lcmat.data import load_digits
    from replay_lcmat.memory import build_memory

    train, _ = load_digits()
    x, y = train.normalized()[:300], train.labels[:300]
    model = _digits_bn_model()
    for stats in ("running", "class-batch"):
        direct = build_memory("craig", x, y, per_class=3, model=model, stats=stats)
        out = extract_outputs(model, x, y, stats=stats)
        via_outputs = build_memory("craig", x, y, per_class=3, outputs=out)
        for c in direct.classes():
            assert torch.equal(direct.sources(c), via_outputs.sources(c))
    running = build_memory("craig", x, y, per_class=3, model=model, stats="running")
    batch = build_memory("craig", x, y, per_class=3, model=model, stats="class-batch")
    assert any(not torch.equal(running.sources(c), batch.sources(c)) for c in running.classes())
    with pytest.raises(ValueError, match="either outputs=.*or model="):
        build_memory("craig", x, y, per_class=3, outputs=out, model=model)
    with pytest.raises(ValueError, match="condensation policy.*stats= do not apply"):
        build_memory("dm", x, y, per_class=3, stats="class-batch")


def test_memory_only_run_extracts_once_per_stats_mode(monkeypatch):
    import replay_lcmat.continual as continual
    from replay_lcmat.continual import memory_only_run
    from replay_lcmat.data import load_digits
    from replay_lcmat.training import TrainConfig

    calls = []
    real = continual.extract_outputs

    def spy(*args, **kwargs):
        calls.append(kwargs["stats"])
        return real(*args, **kwargs)

    monkeypatch.setattr(continual, "extract_outputs", spy)
    train, test = load_digits()
    common = dict(
        per_class=2,
        model="convnet",
        model_options={"width": 4, "depth": 2, "norm": "batch"},
        n_experiences=5,
        retrain=TrainConfig(epochs=1, batch_size=64, lr=0.05, augment="none"),
        progress=False,
    )
    chosen = SelectionModelConfig(
        "convnet",
        {"width": 4, "depth": 2, "norm": "batch"},
        epochs=1,
        lr=0.05,
        augment=False,
        stats="class-batch",
    )
    specs = ["uniform", "herding[stats=class-batch]", "herding[stats=running]", "craig"]
    rows = memory_only_run(train, test, policies=specs, selection_model=chosen, **common)
    assert sorted(calls) == sorted(["class-batch", "running"] * 5)  # one per mode and experience
    assert {r["policy"] for r in rows} == set(specs)
    calls.clear()
    same = memory_only_run(train, test, policies=["herding"], selection_model=chosen, **common)
    assert set(calls) == {"class-batch"}
    pinned = [r["accuracy"] for r in rows if r["policy"] == "herding[stats=class-batch]"]
    assert pinned == [r["accuracy"] for r in same]
    with pytest.raises(ValueError, match="unknown stats"):
        memory_only_run(train, test, policies=["herding[stats=eval]"], **common)
    with pytest.raises(ValueError, match="stats applies to selection policies"):
        memory_only_run(train, test, policies=["uniform[stats=running]"], **common)


def test_policy_specs_parse_and_format():
    from replay_lcmat.specs import format_policy, parse_options, parse_policy

    assert parse_policy("lcmat-s") == ("lcmat-s", {})
    name, options = parse_policy("lcmat-s[eps=0.05, stats=class-batch]")
    assert (name, options) == ("lcmat-s", {"eps": 0.05, "stats": "class-batch"})
    assert format_policy(name, options) == "lcmat-s[eps=0.05,stats=class-batch]"
    assert parse_policy(format_policy("craig", {"k-dims": 3})) == ("craig", {"k_dims": 3})
    assert parse_options(["greedy=lazy", "weights=true"]) == {"greedy": "lazy", "weights": True}
    with pytest.raises(ValueError, match="NAME\\[KEY=VALUE"):
        parse_policy("lcmat-s[eps=0.05")
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_policy("lcmat-s[eps]")


def test_benchmarks_expand_every_model_based_method_per_stats_mode():
    from replay_lcmat.benchmarks.coreset import method_runs
    from replay_lcmat.specs import expand_stats

    runs = method_runs(
        ["uniform", "lcmat-s[eps=0.1]", "craig[stats=running]"], ["running", "class-batch"]
    )
    assert [(label, stats) for label, _, _, stats, _ in runs] == [
        ("uniform", "-"),
        ("lcmat-s[eps=0.1]", "running"),
        ("lcmat-s[eps=0.1]", "class-batch"),
        ("craig", "running"),
    ]
    assert runs[1][2] == {"eps": 0.1}
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_runs(["nope"], ["running"])
    assert expand_stats(
        ["uniform", "herding", "craig[stats=running]"], ["running", "class-batch"]
    ) == [
        "uniform",
        "herding[stats=running]",
        "herding[stats=class-batch]",
        "craig[stats=running]",
    ]


def test_class_batch_single_sample_class_falls_back_to_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(7, 4)
    y = torch.tensor([0, 0, 0, 1, 2, 2, 2])  # class 1 has one sample
    batch = extract_outputs(model, x, y, stats="class-batch")
    running = extract_outputs(model, x, y, stats="running")
    torch.testing.assert_close(batch.logits[3], running.logits[3])
    assert (batch.logits[y != 1] - running.logits[y != 1]).abs().max() > 1e-3


# ------------------------------------------------------------------ review cases: bad inputs
def _nan_model():
    model = _bn_model()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")  # what training on a NaN pixel leaves
    return model


def test_extraction_refuses_non_finite_and_channels_last_inputs():
    x, y = _data()
    x[4, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"data contain NaN or inf in 1 of 23 samples"):
        extract_outputs(_bn_model(), x, y)
    with pytest.raises(ValueError, match=r"data look channels-last \[N, H, W, C\]; permute"):
        extract_outputs(_bn_model(), torch.zeros(23, 8, 8, 3), y)


@pytest.mark.parametrize("stats", ["running", "class-batch"])
def test_a_nan_model_is_named_as_the_problem_not_the_split(stats):
    from replay_lcmat.memory import build_memory

    x, y = _data()
    with pytest.raises(ValueError, match=r"NaN or inf on finite inputs: its parameters.*classifier\.weight.*Retrain or reload") as err:  # fmt: skip
        extract_outputs(_nan_model(), x, y, stats=stats)
    assert "softmax" not in str(err.value)
    with pytest.raises(ValueError, match="classifier.weight") as err:
        build_memory("herding", x, y, per_class=2, model=_nan_model(), stats=stats)
    assert "softmax" not in str(err.value)
