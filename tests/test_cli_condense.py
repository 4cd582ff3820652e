"""``replay-lcmat condense`` on digits: output file, resume equivalence, bad options."""

import pytest
import torch

from replay_lcmat.cli import main
from replay_lcmat.condensation import load_synthetic

BASE = [
    "condense",
    "--data",
    "digits",
    "--per-class",
    "2",
    "--option",
    'network_options={"width": 8}',
    "--option",
    "batch_real=8",
    "--device",
    "cpu",
    "--no-progress",
    "--checkpoint-every",
    "1",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


@pytest.mark.parametrize("method", ["dm", "lcmat-c"])
def test_condense_writes_a_set_and_resumes_to_the_same_result(method, tmp_path, capsys):
    extra = ["--method", method] + (
        ["--option", "outer_loop=1", "--option", "inner_loop=1"] if method != "dm" else []
    )
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    assert main(BASE + extra + ["--iterations", "3", "--out", str(full)]) == 0
    assert (
        f"20 synthetic images (1, 8, 8) (10 classes x 2) saved to {full}" in capsys.readouterr().out
    )
    assert main(BASE + extra + ["--iterations", "2", "--out", str(part)]) == 0
    assert (
        main(BASE + extra + ["--iterations", "3", "--out", str(part), "--resume", str(part)]) == 0
    )
    a, b = load_synthetic(full), load_synthetic(part)
    assert a.iteration == b.iteration == 3 and a.method == method
    assert torch.equal(a.images, b.images)
    assert a.labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_condense_rejects_options_of_other_methods(tmp_path, capsys):
    args = BASE + ["--method", "dm", "--iterations", "1", "--out", str(tmp_path / "x.pt")]
    assert main(args + ["--option", "rho=0.1"]) == 1
    assert "unknown option(s) ['rho'] for condenser 'dm'" in capsys.readouterr().err
    assert main(args + ["--option", "rho"]) == 1
    assert "--option 'rho' is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(BASE + ["--method", "nope", "--iterations", "1", "--out", str(tmp_path / "x.pt")])
    assert (
        main(
            BASE
            + [
                "--method",
                "dm",
                "--iterations",
                "1",
                "--per-class",
                "0",
                "--out",
                str(tmp_path / "x.pt"),
            ]
        )
        == 1
    )
    assert "per_class must be an int >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dm", "lcmat-c"])
def test_condense_says_its_cost_before_the_long_step(method, tmp_path, capsys):
    outer, inner, iterations = 2, 3, 1
    extra = ["--method", method, "--iterations", str(iterations), "--out", str(tmp_path / "a.pt")]
    if method != "dm":
        extra += ["--option", f"outer_loop={outer}", "--option", f"inner_loop={inner}"]
    assert main(BASE + extra) == 0
    out = capsys.readouterr().out
    cost = out.split("\n")[0]
    assert out.index(cost) < out.index("saved to")  # printed first
    if method == "dm":
        assert f"= {iterations * 10} steps" in cost
    else:
        steps = iterations * outer
        assert f"= {steps} matching and {steps * inner} network steps" in cost
        assert "--option outer_loop" in cost
    assert "--iterations N" in cost and "--resume" in cost


def test_condense_refuses_images_over_the_memory_budget(tmp_path, capsys, monkeypatch):
    """digits (its 1347 training images of 1x8x8) as float32, plus a temporary of the normalisation: over a
    budget one byte smaller, an error naming the estimate, the limit and the fix, and no file;
    at the estimate the run goes on."""
    from replay_lcmat import resources

    needed = 2 * 4 * 1347 * 64
    out = tmp_path / "syn.pt"
    argv = BASE + ["--method", "dm", "--iterations", "0", "--out", str(out)]
    monkeypatch.setenv(resources.MEMORY_LIMIT_ENV, str(needed - 1))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the 1347 training images as normalised float32 [1347, 1, 8, 8]" in err
    assert f"set by {resources.MEMORY_LIMIT_ENV}" in err and "smaller dataset" in err
    assert not out.exists()
    monkeypatch.setenv(resources.MEMORY_LIMIT_ENV, str(needed))
    assert main(argv) == 0 and out.exists()
