"""``replay-lcmat demo`` and the result writers it shares with the benchmark and examples."""

from __future__ import annotations

import csv
import statistics

import pytest

from replay_lcmat.cli import main
from replay_lcmat.reporting import (
    comparison_text,
    paired_difference,
    results_markdown,
    summarize,
    write_results,
)


def _rows():
    rows = []
    for seed, accs in ((0, (0.9, 0.5)), (1, (0.7, 0.4)), (2, (0.8, 0.6))):
        for e, acc in enumerate(accs, start=1):
            rows.append(
                {
                    "seed": seed,
                    "policy": "lcmat-s",
                    "per_class": 10,
                    "experience": e,
                    "classes_seen": 2 * e,
                    "memory_size": 20 * e,
                    "accuracy": acc,
                }
            )
    rows.append(
        {
            "seed": 0,
            "policy": "uniform",
            "per_class": 10,
            "experience": 1,
            "classes_seen": 2,
            "memory_size": 20,
            "accuracy": 0.25,
        }
    )
    return rows


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarize(_rows())
    (m1, s1, n1), (m2, s2, n2) = summary["lcmat-s", 10]
    assert n1 == n2 == 3
    assert m1 == pytest.approx(0.8) and s1 == pytest.approx(statistics.stdev([0.9, 0.7, 0.8]))
    assert m2 == pytest.approx(0.5) and s2 == pytest.approx(statistics.stdev([0.5, 0.4, 0.6]))
    assert summary["uniform", 10] == [(0.25, 0.0, 1)]
    table = results_markdown(_rows())
    assert "| lcmat-s | 80.00 ± 10.00 | 50.00 ± 10.00 |" in table
    assert "| uniform | 25.00 |" in table
    assert "exp 2 (4 cl.)" in table


def test_paired_difference_pairs_by_seed_and_states_the_verdict():
    rows = []
    for seed, (a, b) in enumerate([((0.5, 0.4), (0.3, 0.6)), ((0.7, 0.2), (0.4, 0.3))]):
        for policy, accs in (("lcmat-s", a), ("uniform", b)):
            for e, acc in enumerate(accs, start=1):
                rows.append(
                    {
                        "seed": seed,
                        "policy": policy,
                        "per_class": 10,
                        "experience": e,
                        "classes_seen": 2 * e,
                        "memory_size": 20 * e,
                        "accuracy": acc,
                    }
                )
    diff = paired_difference(rows, "lcmat-s", "uniform")[10]
    assert diff[0][0] == pytest.approx(((0.5 - 0.3) + (0.7 - 0.4)) / 2)
    assert diff[0][1] == pytest.approx(statistics.stdev([0.2, 0.3]))
    assert diff[1][0] == pytest.approx(((0.4 - 0.6) + (0.2 - 0.3)) / 2) and diff[1][2] == 2
    text = comparison_text(rows, "lcmat-s", "uniform")
    assert "+25.0 ± 7.1, -15.0 ± 7.1" in text and "after 1 of 2 experiences" in text
    second = [r for r in rows if r["experience"] == 2]  # lcmat-s is behind there
    assert "is NOT above uniform after any experience" in comparison_text(
        second, "lcmat-s", "uniform"
    )
    assert "above lcmat-s after every experience" in comparison_text(second, "uniform", "lcmat-s")
    with pytest.raises(ValueError, match="run both policies"):
        paired_difference(rows, "lcmat-s", "herding")


def test_write_results_files(tmp_path):
    paths = write_results(_rows(), tmp_path, "run", title="t", command="python x.py --a 1")
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and rows[0]["policy"] == "lcmat-s" and float(rows[0]["accuracy"]) == 0.9
    text = paths["md"].read_text()
    assert "python x.py --a 1" in text and "| lcmat-s |" in text
    assert paths["png"].stat().st_size > 1000


@pytest.mark.slow
def test_demo_runs_offline_on_digits(tmp_path, capsys):
    code = main(
        [
            "demo",
            "--data",
            "digits",
            "--seeds",
            "0",
            "--epochs",
            "20",
            "--train-per-class",
            "40",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| lcmat-s |" in out and "| uniform |" in out and "exp 5 (10 cl.)" in out
    assert "| herding |" in out
    md = (tmp_path / "demo.md").read_text()
    for text in ("lcmat-s minus uniform", "lcmat-s minus herding", "Verdict: lcmat-s beats"):
        assert text in out and text in md
    # the verdict names the data and sizes of this run, not fixed text
    assert "Setting: digits, 10 classes in 5 experiences, 40 training images per class" in out
    with (tmp_path / "demo.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15
    assert {r["policy"] for r in rows} == {"lcmat-s", "herding", "uniform"}
    assert [int(r["memory_size"]) for r in rows if r["policy"] == "uniform"] == [
        20,
        40,
        60,
        80,
        100,
    ]
    # 10 digits per class, trained from scratch: well above the 10% chance level
    assert all(float(r["accuracy"]) > 0.5 for r in rows)
    assert (tmp_path / "demo.png").is_file() and (tmp_path / "demo.md").is_file()
    assert (tmp_path / "demo_memory.png").stat().st_size > 1000


def test_demo_verdict_comes_from_the_numbers():
    from replay_lcmat.cli.demo import verdict_text

    def rows(acc):  # {policy: [accuracy per experience]}, one seed
        return [
            {"seed": 0, "policy": p, "per_class": 10, "experience": e + 1, "accuracy": a}
            for p, values in acc.items()
            for e, a in enumerate(values)
        ]

    policies = ["lcmat-s[eps=0.1]", "herding", "uniform"]
    mixed = rows({"lcmat-s[eps=0.1]": [0.8, 0.5], "herding": [0.7, 0.6], "uniform": [0.6, 0.4]})
    text = verdict_text(mixed, policies, "Setting: x.")
    assert text.startswith("Setting: x.")
    assert "lcmat-s[eps=0.1] beats uniform but NOT herding" in text
    assert "-10.0 points vs herding, +10.0 vs uniform" in text
    ahead = rows({"lcmat-s[eps=0.1]": [0.8, 0.7], "herding": [0.7, 0.6], "uniform": [0.6, 0.4]})
    assert "beats both herding and uniform" in verdict_text(ahead, policies, "")
    behind = rows({"lcmat-s[eps=0.1]": [0.5, 0.3], "herding": [0.7, 0.6], "uniform": [0.6, 0.4]})
    assert "beats neither herding nor uniform" in verdict_text(behind, policies, "")


def test_demo_names_a_missing_data_path(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nope"), "--out-dir", str(tmp_path)]) == 1
    assert "no such file or folder" in capsys.readouterr().err
