"""The one-GPU suite (benchmarks/gpu_suite.py) without a GPU: its smoke run end to end with
Avalanche and BackPACK blocked, its clean stop at the time limit, its clock, its float32
selection context, and the README's time plan."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from replay_lcmat.benchmarks import gpu_suite
from replay_lcmat.benchmarks.gpu_suite import (
    FULL,
    METHODS,
    PLAN_STEPS,
    Clock,
    OutOfTime,
    exact_float32,
)

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("avalanche", "backpack")

# Installed first thing by every interpreter started with this folder on PYTHONPATH (child
# processes too): an import of a blocked package fails, and every attempt is recorded.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import sys

    BLOCKED = {blocked!r}


    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                with open(os.environ["IMPORT_ATTEMPTS"], "a") as log:
                    log.write(name + "\\n")
                raise ModuleNotFoundError(f"{{name}} is blocked in this test", name=name)
            return None


    sys.meta_path.insert(0, _Block())
    """
).format(blocked=BLOCKED)


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO)])
    env["IMPORT_ATTEMPTS"] = str(tmp_path / "attempts.txt")
    env["OMP_NUM_THREADS"] = "2"
    return env


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_smoke_run_writes_every_part_without_avalanche_or_backpack(tmp_path):
    env = _blocked_env(tmp_path)
    attempts = Path(env["IMPORT_ATTEMPTS"])
    # The hook works: the Avalanche adapters cannot be imported under it.
    control = subprocess.run(
        [sys.executable, "-c", "import replay_lcmat.strategies"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert control.returncode != 0 and "blocked in this test" in control.stderr
    assert "avalanche" in attempts.read_text()
    attempts.unlink()

    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.gpu_suite", "--smoke", "--device", "cpu"]
    command += ["--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # neither package was even tried, by the suite or by its subprocess
    assert not attempts.exists(), attempts.read_text()

    report = (out / "gpu_suite_smoke.md").read_text()
    for part in ("data", "selection model", "speed"):
        assert f"| {part} | done |" in report
    assert "| table1 | done: 10 runs |" in report
    assert "| table1-5pct | done: 10 runs |" in report
    assert "| continual | done: 2 seed(s) |" in report
    assert "python -m benchmarks.gpu_suite --smoke" in report
    assert "[" in done.stdout and "s left]" in done.stdout  # the time budget as it goes

    table1 = _rows(out / "gpu_suite_smoke_table1.csv")
    assert {(r["method"], float(r["fraction"]), int(r["seed"])) for r in table1} == {
        (m, f, s) for m in METHODS for f in (0.01, 0.05) for s in (0, 1)
    }
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in table1)
    assert all(int(r["n_selected"]) == 10 for r in table1)  # one per class of 12

    subsets = json.loads((out / "gpu_suite_smoke_subsets.json").read_text())
    labels = [i // 12 for i in range(120)]  # the generated archive: 12 per class, in order
    for method in METHODS:
        for picks in subsets[method]["0.01"].values():
            assert sorted(labels[i] for i in picks) == list(range(10)), method

    speed = _rows(out / "gpu_suite_smoke_speed.csv")
    cases = [r["case"] for r in speed]
    assert cases[0].startswith("extraction") and "one synthetic class of 300" in cases[-1]
    assert [r["fraction"] for r in speed[1:]] == ["1%", "10%", "1%"]
    assert all(float(r["seconds"]) >= 0 for r in speed)  # numbers, not errors
    assert speed[1]["paper s (Table D.2)"] == "about 430"
    assert speed[-1]["path"].startswith("dense")

    continual = _rows(out / "gpu_suite_smoke_continual.csv")
    assert {(r["policy"], int(r["seed"]), int(r["experience"])) for r in continual} == {
        (p, s, e) for p in ("uniform", "herding", "lcmat-s") for s in (0, 1) for e in range(1, 6)
    }
    assert all(int(r["memory_size"]) == 4 * int(r["experience"]) for r in continual)


def test_suite_stops_at_the_time_limit_and_writes_what_it_has(tmp_path, capsys):
    # A limit of 0.06 s is long gone: the alarm rings at once, and every deadline has passed.
    argv = ["--smoke", "--device", "cpu", "--max-minutes", "0.001", "--out-dir", str(tmp_path)]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    started = time.monotonic()
    assert gpu_suite.main(argv) == 0  # a stop at the limit is no failure
    assert time.monotonic() - started < 30
    report = (tmp_path / "gpu_suite_smoke.md").read_text()
    statuses = dict(re.findall(r"^\| ([a-z0-9 -]+) \| (.+) \|$", report, flags=re.MULTILINE))
    # each part stopped by the alarm, or not started for lack of time (wherever the ring fell)
    assert all("time" in statuses[part] for part in gpu_suite.PARTS), statuses
    assert "s left]" in capsys.readouterr().out
    assert not (tmp_path / "gpu_suite_smoke_table1.csv").exists()
    assert not (tmp_path / "gpu_suite_smoke_continual.csv").exists()


def test_clock_alarm_interrupts_work_and_is_disarmed_after():
    clock = Clock(100.0)
    started = time.monotonic()
    with pytest.raises(OutOfTime), clock.alarm(clock.elapsed() + 0.2):
        time.sleep(5)
    assert time.monotonic() - started < 3
    with clock.alarm(clock.elapsed() + 0.2):
        pass
    time.sleep(0.4)  # a disarmed alarm does not ring later

    clock = Clock(10.0, started=time.monotonic() - 4.0)
    assert clock.fits(5.0, deadline=10.0)
    assert not clock.fits(7.0, deadline=10.0)
    assert 5.9 < clock.left() <= 6.0


class _SlowFinalizer:
    def __del__(self):
        time.sleep(0.5)  # the alarm rings in here, where Python drops the exception


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_clock_alarm_rings_again_when_a_finalizer_swallowed_the_first_ring():
    clock = Clock(100.0)
    started = time.monotonic()
    with pytest.raises(OutOfTime), clock.alarm(clock.elapsed() + 0.1):
        _SlowFinalizer()  # collected at once: its __del__ runs through the first ring
        time.sleep(10)
    assert time.monotonic() - started < 5


def test_exact_float32_keeps_selection_outputs_out_of_mixed_precision():
    from replay_lcmat.models import make_model
    from replay_lcmat.seeding import seeded
    from replay_lcmat.selection import extract_outputs

    with seeded(0):
        model = make_model(
            "convnet", in_channels=3, num_classes=4, image_size=8, width=8, norm="batch"
        )
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4).repeat_interleave(10)

    def outputs():
        out = extract_outputs(model, x, labels=y, stats="class-batch")
        return out.features, out.logits

    plain = outputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = outputs()
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        with exact_float32("cpu"):
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
            exact = outputs()
        assert torch.backends.cudnn.allow_tf32  # restored
        torch.backends.cudnn.allow_tf32 = previous
    assert not torch.equal(mixed[0], plain[0])  # autocast does reach the extraction ...
    assert all(torch.equal(a, b) for a, b in zip(exact, plain, strict=True))  # ... not in here


def test_readme_time_plan_is_the_suites_and_fits_eight_minutes():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- gpu suite time plan")
    table = text[start:].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (.+) \| (\d+) \|$", table, flags=re.MULTILINE)
    listed = {step: int(seconds) for step, seconds in rows}
    assert listed.pop("total") == sum(FULL.plan.values()) <= 8 * 60
    assert listed == {PLAN_STEPS[key]: FULL.plan[key] for key in PLAN_STEPS}
    assert "PYTHONPATH=. python3 -m benchmarks.gpu_suite --data local_data/" in text
    assert "cp ../shared/data/cifar10-jpeg.tar.gz local_data/" in text
