"""``replay-lcmat select`` end to end on digits (tiny MLP, one pretraining epoch)."""

from __future__ import annotations

import json

import pytest

from replay_lcmat.cli import main
from replay_lcmat.data import load_dataset


def run_select(tmp_path, name, *extra):
    out = tmp_path / name
    argv = ["select", "--data", "digits", "--model", "mlp", "--pretrain-epochs", "1"]
    argv += ["--out", str(out), "--no-progress", "--device", "cpu", *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_select_writes_indices_by_class_options_and_seed(tmp_path):
    record = run_select(
        tmp_path,
        "a.json",
        "--method",
        "lcmat-s",
        "--per-class",
        "3",
        "--option",
        "eps=0.05",
        "--seed",
        "4",
    )
    train, _ = load_dataset("digits")
    assert record["method"] == "lcmat-s" and record["seed"] == 4
    assert record["options"]["eps"] == 0.05 and record["options"]["k_dims"] == 100
    assert [entry["label"] for entry in record["by_class"]] == list(range(10))
    for entry in record["by_class"]:
        assert len(entry["indices"]) == 3
        assert all(int(train.labels[i]) == entry["label"] for i in entry["indices"])
    again = run_select(
        tmp_path,
        "b.json",
        "--method",
        "lcmat-s",
        "--per-class",
        "3",
        "--option",
        "eps=0.05",
        "--seed",
        "4",
    )
    assert again["by_class"] == record["by_class"]


def test_select_by_fraction_with_weights(tmp_path):
    record = run_select(tmp_path, "c.json", "--method", "craig", "--fraction", "0.02")
    train, _ = load_dataset("digits")
    counts = train.labels.bincount().tolist()
    for entry in record["by_class"]:
        assert len(entry["indices"]) == max(1, int(0.02 * counts[entry["label"]] + 0.5))
        assert sum(entry["weights"]) == counts[entry["label"]]


def test_select_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["select", "--data", "digits", "--method", "nope", "--fraction", "0.1", "--out", "x"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_select_keeps_a_class_below_the_budget_whole_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="class 0 has only 133 sample.*fewer than the 500"):
        record = run_select(tmp_path, "d.json", "--method", "herding", "--per-class", "500")
    train, _ = load_dataset("digits")
    assert record["num_selected"] == len(train)
    assert "take_all" not in record


def test_select_records_stats_and_pretraining_augmentation(tmp_path):
    record = run_select(
        tmp_path,
        "s.json",
        "--method",
        "craig",
        "--per-class",
        "2",
        "--stats",
        "class-batch",
        "--no-pretrain-augment",
    )
    assert record["stats"] == "class-batch" and record["pretrain"]["augment"] is False
    with pytest.raises(SystemExit):
        run_select(tmp_path, "t.json", "--method", "craig", "--per-class", "2", "--stats", "eval")
