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
