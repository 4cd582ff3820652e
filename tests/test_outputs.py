"""Outputs are never silently replaced or half-written.

Every output goes through a unique temporary file and one rename; a run holds ``OUT.lock``
while it works, so a second run on the same path stops with an error naming the first (the
other run is a real second process here); ``select`` refuses an existing ``--out`` unless
``--overwrite``; a condensation keeps its checkpoints in ``OUT.ckpt`` (marked unfinished) and
writes ``OUT`` only when it completes, so a killed run leaves nothing a reader takes for done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from replay_lcmat.cli import main
from replay_lcmat.condensation import load_synthetic, make_condenser
from replay_lcmat.files import (
    OutputInUseError,
    atomic_write,
    atomic_write_text,
    exclusive_output,
    lock_path,
)
from replay_lcmat.memory import ClassMemory

CONDENSE = [
    "condense",
    "--data",
    "digits",
    "--method",
    "dm",
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
SELECT = ["select", "--data", "digits", "--model", "mlp", "--pretrain-epochs", "1"]
SELECT += ["--method", "uniform", "--per-class", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ atomic writes
def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    atomic_write_text(path, "old\n")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_every_writer_goes_through_a_unique_temporary(tmp_path, monkeypatch):
    """Two writers of one path never share a temporary (the old fixed ``OUT.tmp`` did)."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    memory = ClassMemory()
    memory.put(0, torch.zeros(2, 1, 4, 4))
    memory.save(tmp_path / "m.pt")
    memory.save(tmp_path / "m.pt")
    syn = make_condenser("dm", iterations=0, network_options={"width": 4, "depth": 1})
    images = torch.randn(8, 1, 8, 8)
    syn.condense(images, torch.arange(8) % 2, per_class=1).synthetic.save(tmp_path / "s.pt")
    from replay_lcmat.reporting import write_csv, write_markdown

    write_csv(tmp_path / "t.csv", [{"a": 1}])
    write_markdown(tmp_path / "t.md", "x")
    targets = [dst for _, dst in seen]
    assert targets == ["m.pt", "m.pt", "s.pt", "t.csv", "t.md"]
    temporaries = [src for src, _ in seen]
    assert len(set(temporaries)) == len(temporaries)
    assert all(src.startswith(f".{dst}.") and src.endswith(".tmp") for src, dst in seen)


# ------------------------------------------------------------------ one run per output
def hold_lock(path):
    """A second process that holds ``path``'s lock until killed; returns it once it holds it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from replay_lcmat.files import exclusive_output
        with exclusive_output({str(path)!r}):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "condense", "--seed", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_locked_output_stops_naming_the_first(tmp_path, capsys):
    out = tmp_path / "s.pt"
    first = hold_lock(out)
    try:
        with pytest.raises(OutputInUseError, match=rf"in use by another run \(pid {first.pid} on"):
            with exclusive_output(out):
                pass
        assert main(CONDENSE + ["--iterations", "1", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"{out} is in use by another run (pid {first.pid}" in err
        assert "--seed 0" in err and "another output path" in err
        assert not out.exists()  # nothing written, nothing replaced
        sel = tmp_path / "sel.json"
        first_select = hold_lock(sel)
        try:
            assert main(SELECT + ["--out", str(sel)]) == 1
            assert f"pid {first_select.pid}" in capsys.readouterr().err
        finally:
            first_select.kill()
            first_select.wait()
    finally:
        first.kill()
        first.wait()
    # the holder is gone (killed): the lock went with it
    assert main(CONDENSE + ["--iterations", "1", "--out", str(out)]) == 0
    assert load_synthetic(out).complete
    assert lock_path(out).read_text() == ""  # released, owner line cleared


def test_library_condensation_locks_its_checkpoint(tmp_path):
    ckpt = tmp_path / "c.pt"
    first = hold_lock(ckpt)
    try:
        condenser = make_condenser(
            "dm", iterations=1, checkpoint=ckpt, network_options={"width": 4, "depth": 1}
        )
        with pytest.raises(OutputInUseError, match=r"checkpoint .*c\.pt is in use by another"):
            condenser.condense(torch.randn(8, 1, 8, 8), torch.arange(8) % 2, per_class=1)
    finally:
        first.kill()
        first.wait()
    assert not ckpt.exists()


# ------------------------------------------------------------------ select --out
def test_select_refuses_an_existing_out_unless_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sel.json"
    out.write_text('{"from": "another run"}\n')

    def no_training(*args, **kwargs):
        raise AssertionError("select loaded data although --out would be refused")

    monkeypatch.setattr("replay_lcmat.cli.select.load_dataset", no_training)
    assert main(SELECT + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--out {out} already exists; pass --overwrite" in err
    assert json.loads(out.read_text()) == {"from": "another run"}
    monkeypatch.undo()
    assert main(SELECT + ["--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["method"] == "uniform"


# ------------------------------------------------------------------ a killed condensation
class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (not an Exception, so no handler sees it)."""


def test_a_killed_condensation_leaves_no_file_a_reader_accepts(tmp_path, monkeypatch, capsys):
    dm = type(make_condenser("dm"))
    out = tmp_path / "s.pt"
    ckpt = tmp_path / "s.pt.ckpt"
    full = tmp_path / "full.pt"
    assert main(CONDENSE + ["--iterations", "4", "--out", str(full)]) == 0
    assert not (tmp_path / "full.pt.ckpt").exists()  # removed once the run completed

    real_step, calls = dm._step, []

    def step_then_die(self, *args):
        if len(calls) == 2:
            raise Killed
        calls.append(1)
        return real_step(self, *args)

    monkeypatch.setattr(dm, "_step", step_then_die)
    with pytest.raises(Killed):
        main(CONDENSE + ["--iterations", "4", "--out", str(out)])
    monkeypatch.undo()
    assert not out.exists()  # the final file appears only when the run completes
    with pytest.warns(UserWarning, match=r"unfinished condensation \(iteration 2 of 4\).*--resume"):
        partial = load_synthetic(ckpt)
    assert not partial.complete
    capsys.readouterr()
    grid = str(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="unfinished condensation"):
        assert (
            main(["inspect", "grid", "--condensed", str(ckpt), "--data", "digits", "--out", grid])
            == 0
        )
    # resuming gives the uninterrupted result, in OUT, and the checkpoint goes away
    assert main(CONDENSE + ["--iterations", "4", "--out", str(out), "--resume", str(ckpt)]) == 0
    assert torch.equal(load_synthetic(out).images, load_synthetic(full).images)
    assert load_synthetic(out).complete and not ckpt.exists()
