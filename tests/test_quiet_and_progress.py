"""Logs stay readable: one-line reprs of the public containers, and a progress bar over classes
for the long greedy selection of ``replay-lcmat select``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from replay_lcmat.cli import main
from replay_lcmat.data import ImageData
from replay_lcmat.data.digits import load_digits
from replay_lcmat.memory import ClassMemory
from replay_lcmat.selection import make_selector
from replay_lcmat.selection.engine import class_progress


def test_image_data_repr_is_one_short_line_with_shapes_dtype_and_classes():
    train, _ = load_digits()
    text = repr(train)
    assert "\n" not in text and len(text) < 120
    n = len(train.labels)
    assert text.startswith(f"ImageData(images {n}x1x8x8 uint8, 10 classes, mean=(")
    big = ImageData(
        torch.zeros(500, 3, 32, 32),
        torch.arange(500) % 100,
        tuple(str(c) for c in range(100)),
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )
    text = repr(big)
    assert text == (
        "ImageData(images 500x3x32x32 float32, 100 classes, mean=(0.5, 0.5, 0.5), "
        "std=(0.25, 0.25, 0.25))"
    )


def test_class_memory_repr_stays_one_line_for_many_classes():
    memory = ClassMemory()
    assert repr(memory) == "ClassMemory(empty)"
    for c in range(100):
        memory.put(c, torch.zeros(10 if c else 7, 3, 32, 32))
    assert repr(memory) == "ClassMemory(100 classes, 7-10 per class, 997 images 3x32x32 float32)"


def _select(per_class=2):
    labels = torch.arange(40) % 4
    features = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    return make_selector("herding").select(labels=labels, features=features, per_class=per_class)


def test_greedy_selection_shows_a_bar_over_classes_only_when_asked(capsys):
    quiet = _select()
    assert capsys.readouterr().err == ""
    with class_progress():
        shown = _select()
    err = capsys.readouterr().err
    assert "herding selection" in err and "4/4" in err and "class" in err
    assert torch.equal(quiet.indices, shown.indices)  # the bar changes nothing
    with class_progress(False):
        _select()
    assert capsys.readouterr().err == ""


def test_select_command_shows_the_bar_over_classes(tmp_path, capsys):
    def argv(name, *extra):
        return [
            *("select", "--data", "digits", "--model", "mlp", "--pretrain-epochs", "1"),
            *("--device", "cpu", "--method", "herding", "--per-class", "2"),
            *("--out", str(tmp_path / name), *extra),
        ]

    assert main(argv("s.json")) == 0
    err = capsys.readouterr().err
    assert "herding selection" in err and "10/10" in err
    assert json.loads((tmp_path / "s.json").read_text())["num_selected"] == 20
    assert main(argv("q.json", "--no-progress")) == 0
    assert "herding selection" not in capsys.readouterr().err


def _split_example():
    spec = importlib.util.spec_from_file_location(
        "split_example",
        Path(__file__).resolve().parents[1] / "examples" / "split_cifar100_5tasks.py",
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_cifar100_example_takes_the_readmes_policy_specs(tmp_path, capsys):
    example = _split_example()
    base = ["--data", "digits", "--model", "mlp", "--protocol", "replay", "--train-epochs", "1"]
    base += ["--per-class", "2", "--out-dir", str(tmp_path)]
    assert example.parse_args(["--policy", "lcmat-s[eps=0.05]"]).policy == ["lcmat-s[eps=0.05]"]
    with pytest.raises(SystemExit):
        example.parse_args(["--policy", "nope[eps=1]"])
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert example.main([*base, "--policy", "herding[stats=running]"]) == 0
    assert "| herding[stats=running] |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="eps"):  # the spec's options reach the selector
        example.main([*base, "--policy", "lcmat-s[eps=-1]"])


def test_lcmat_s_takes_a_fraction_like_the_selector():
    from replay_lcmat.selection import lcmat_s

    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(30), torch.ones(50)]).long()
    features, logits = torch.randn(80, 6, generator=gen), torch.randn(80, 2, generator=gen)
    picks = lcmat_s(features, logits, labels, fraction=0.1)
    assert labels[picks].bincount().tolist() == [3, 5]
    expected = make_selector("lcmat-s").select(
        features=features, logits=logits, labels=labels, fraction=0.1
    )
    assert torch.equal(picks, expected.indices)
    assert torch.equal(
        lcmat_s(features, logits, labels, fraction=0.1),
        lcmat_s(features, logits, labels, {0: 3, 1: 5}),
    )
    with pytest.raises(ValueError, match="exactly one of per_class"):
        lcmat_s(features, logits, labels, 3, fraction=0.1)
