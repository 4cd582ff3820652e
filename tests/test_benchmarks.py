"""The coreset benchmark end to end on digits: tables, plot and bound terms are written."""

from __future__ import annotations

import csv

import pytest

from replay_lcmat.benchmarks.coreset import main


@pytest.mark.slow
def test_coreset_benchmark_writes_results_per_stats_mode_and_bound_terms(tmp_path):
    argv = ["--preset", "cpu-bn", "--data", "digits", "--methods", "uniform", "craig"]
    argv += ["--fractions", "0.05", "--seeds", "0", "--out-dir", str(tmp_path)]
    argv += ["--name", "run", "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    with (tmp_path / "run.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["stats"]) for r in rows} == {
        ("uniform", "-"),
        ("craig", "running"),
        ("craig", "class-batch"),
    }
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert "| craig | class-batch |" in (tmp_path / "run.md").read_text()
    assert (tmp_path / "run.png").stat().st_size > 1000
    for stats in ("running", "class-batch"):
        table = (tmp_path / f"run_bounds_{stats}.md").read_text()
        assert "uniform" in table and "craig" in table and "python -m benchmarks.coreset" in table
        assert (tmp_path / f"run_bounds_{stats}.png").stat().st_size > 1000


def test_coreset_benchmark_trains_weighted_methods_with_their_cluster_sizes(tmp_path):
    argv = ["--preset", "cpu-evidence", "--data", "digits", "--fractions", "0.01", "0.05"]
    argv += ["--methods", "craig", "craig[weight_power=1]", "lcmat-s[objective=bound]"]
    argv += ["--seeds", "0", "--out-dir", str(tmp_path), "--name", "w", "--no-progress"]
    assert main(argv) == 0
    with (tmp_path / "w.csv").open() as handle:
        rows = {
            (r["method"], r["fraction"]): float(r["test_accuracy"]) for r in csv.DictReader(handle)
        }
    assert set(rows) == {
        (m, f)
        for m in ("craig", "craig[weight_power=1]", "lcmat-s[objective=bound]")
        for f in ("0.01", "0.05")
    }
    # same picks, weighted loss: a different model
    assert rows["craig", "0.05"] != rows["craig[weight_power=1]", "0.05"]
    bounds = (tmp_path / "w_bounds_class-batch.md").read_text()
    assert "| craig[weight_power=1] | " in bounds and "| yes |" in bounds
    assert "| lcmat-s[objective=bound] |" in bounds


def test_class_mean_one_scales_each_class_to_mean_one():
    import torch

    from replay_lcmat.memory.store import class_mean_one

    w = torch.tensor([1.0, 3.0, 4.0, 4.0, 1.0])
    labels = torch.tensor([0, 0, 1, 1, 1])
    out = class_mean_one(w, labels, 1.0)
    assert torch.allclose(out, torch.tensor([0.5, 1.5, 4 / 3, 4 / 3, 1 / 3]))
    assert torch.allclose(class_mean_one(w, labels, 0.0), torch.ones(5))
