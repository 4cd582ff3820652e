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


def test_condensation_speed_quick_times_every_part_and_counts_the_reference_loops(tmp_path):
    from replay_lcmat.benchmarks.condensation_speed import QUICK, forward_images
    from replay_lcmat.benchmarks.condensation_speed import main as speed_main

    assert speed_main(["--quick", "--repeats", "1", "--out-dir", str(tmp_path)]) == 0
    with (tmp_path / "condensation_speed_quick.csv").open() as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"dc", "dsa", "dm", "lcmat-c"}
    for method, row in rows.items():
        assert not row.get("note"), row  # a failed run or a count off the loops' formula
        # images through the first layer, counted by a hook, against the loops of the
        # reference code: 10 classes x (real + synthetic) per matching, inner-loop batches
        assert int(row["images forwarded"]) == forward_images(method, QUICK)
        matching, training = map(int, row["of which matching / training"].split(" / "))
        assert matching + training == int(row["images forwarded"])
        parts = sum(
            float(row[f"{p} s"]) for p in ("network training", "matching", "augmentation", "other")
        )
        assert abs(parts - float(row["outer iteration s"])) <= 0.03
    assert (
        float(rows["dc"]["augmentation s"]) == 0.0
        and float(rows["dm"]["network training s"]) == 0.0
    )
    # hand count: 2 matchings x 10 classes x (8 real + 2 synthetic) + 1 x 2 inner steps x 20
    assert forward_images("dsa", QUICK) == 2 * 10 * (8 + 2) + 2 * 20
    assert forward_images("lcmat-c", QUICK) == 2 * 10 * (8 + 2) + 2 * 240
    text = (tmp_path / "condensation_speed_quick.md").read_text()
    assert "python -m benchmarks.condensation_speed --quick" in text and "load average" in text
