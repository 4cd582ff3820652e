"""torch.distributed execution: 2 gloo processes on the CPU give the single-process results.

Two processes are spawned once for the module (``two_ranks``): they join a gloo group through a
file store in a temporary folder and run every scenario of :data:`SCENARIOS` in turn (one
spawn, so torch is imported once per process); each test compares a scenario's result on both
ranks with the same function run here without a group. The spawn fails (instead of hanging)
when the processes do not finish within ``SPAWN_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from replay_lcmat import distributed
from replay_lcmat.condensation import DistributionMatchingCondenser, make_condenser
from replay_lcmat.models import ConvNet
from replay_lcmat.selection import SELECTORS, extract_outputs, make_selector
from replay_lcmat.selection.base import ClassInputs, Selector

pytestmark = pytest.mark.slow  # spawns processes

SPAWN_TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ the harness
def _entry(
    rank: int, fn, store: str, ranks: int, out: str, args: tuple, settle: bool = True
) -> None:
    """Rank ``rank`` of a gloo group: ``fn(*args)``, its result (or error) saved to ``out``.

    ``settle``: wait for every rank before tearing the group down, so that no rank destroys
    its gloo context while another still talks to it (the fault scenarios, where a rank dies
    or hangs on purpose, skip it)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=ranks,
        timeout=timedelta(seconds=SPAWN_TIMEOUT_S),
    )
    try:
        try:
            result = fn(*args)
        except Exception as err:  # the test inspects what each rank raised
            result = {"raised": type(err).__name__, "message": str(err)}
        torch.save(result, Path(out) / f"rank{rank}.pt")
        if settle:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(fn, tmp_path: Path, *args, ranks: int = 2) -> list:
    """``fn(*args)`` in ``ranks`` gloo processes; their results in rank order."""
    context = mp.start_processes(
        _entry,
        args=(fn, str(tmp_path / "store"), ranks, str(tmp_path), args),
        nprocs=ranks,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {ranks} processes did not finish in {SPAWN_TIMEOUT_S} s (a hang)")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


# ------------------------------------------------------------- extraction + selection
METHODS = tuple(SELECTORS)  # every registered selector, seeded ones with a seed


def _extract_and_select() -> dict:
    """A BatchNorm ConvNet on 4 digits-like classes of uneven size; class-batch statistics in
    batches of 8 (several per class, a trailing single sample joined), then four selectors."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((21, 17, 30, 9))])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    images = torch.randn(len(labels), 1, 8, 8, generator=gen) + labels.view(-1, 1, 1, 1) * 0.3
    torch.manual_seed(0)
    model = ConvNet(1, 4, image_size=8, width=6, depth=2, norm="batch")
    out = extract_outputs(model, images, labels, stats="class-batch", batch_size=8)
    result = {"features": out.features, "logits": out.logits, "labels": out.labels}
    for stats in ("running", "class-center"):  # plain batches of 16 in index order
        other = extract_outputs(model, images, labels, stats=stats, batch_size=16)
        result[stats] = (other.features, other.logits)
    for method in METHODS:
        seed = {"seed": 4} if SELECTORS.entry(method).accepts("seed") else {}
        selected = make_selector(method, **seed).select(
            features=out.features, logits=out.logits, labels=out.labels, per_class=4
        )
        result[method] = (selected.indices, selected.weights)

    def one_class(label: int) -> torch.Tensor:  # the memory package's per-class loop
        members = torch.nonzero(out.labels == label).flatten()
        picks = make_selector("lcmat-s").select(
            features=out.features[members],
            logits=out.logits[members],
            labels=out.labels[members],
            per_class=4,
        )
        return members[picks.indices]

    result["nested"] = torch.cat(distributed.map_classes(one_class, [0, 1, 2, 3]))
    from replay_lcmat.memory import select_exemplars

    for policy in ("lcmat-s", "uniform"):  # the memory's per-class loop, sharded by class
        result[f"memory {policy}"] = select_exemplars(
            policy, features=out.features, logits=out.logits, labels=out.labels, per_class=4, seed=2
        )
    result["threads"] = torch.get_num_threads()  # the rank's share, after the compiled kernels
    return result


def _extract_select_and_record() -> dict:
    return _extract_and_select() | {"recorded": _owned_classes()}


def test_extraction_and_selection_equal_one_process(two_ranks, one_thread):
    """Outputs bit for bit, picks and their order for every registered selector; and each class
    was selected by one rank only, seeded selectors included (the work is shared, not
    repeated: each class draws from its own seed)."""
    expected = _extract_and_select()
    ranks = [got["select"] for got in two_ranks]
    (seen0, indices0), (seen1, indices1) = (got["recorded"] for got in ranks)
    assert sorted(seen0 + seen1) == list(range(6)) and seen0 and seen1
    _, recorded = _owned_classes()
    assert torch.equal(indices0, recorded) and torch.equal(indices1, recorded)
    for got in ranks:
        assert "raised" not in got, got
        assert got["threads"] == 1  # each rank's one thread (the harness's) stayed one
        for key in ("features", "logits", "labels"):
            assert torch.equal(got[key], expected[key]), key
        for stats in ("running", "class-center"):
            assert all(map(torch.equal, got[stats], expected[stats])), stats
        # a selector called inside map_classes (on one rank) works alone: no nested sharding
        assert torch.equal(got["nested"], expected["nested"])
        assert torch.equal(got["nested"], expected["lcmat-s"][0])
        for policy in ("lcmat-s", "uniform"):
            assert torch.equal(got[f"memory {policy}"], expected[f"memory {policy}"]), policy
        for method in METHODS:
            indices, weights = got[method]
            assert torch.equal(indices, expected[method][0]), method  # same picks, same order
            if weights is None:
                assert expected[method][1] is None
            else:
                assert torch.equal(weights, expected[method][1]), method


def _owned_classes() -> list[int]:
    """Which classes this rank's selector visited (via a seeded recording selector)."""
    seen: list[int] = []

    class Recording(Selector):
        name = "recording"

        def __init__(self, *, seed: int = 0) -> None:
            self.seed = seed

        def start_class(self, seed: int) -> None:
            self._generator = torch.Generator().manual_seed(seed)

        def select_class(self, inputs: ClassInputs, budget: int):
            seen.append(inputs.label)
            return torch.randperm(len(inputs.labels), generator=self._generator)[:budget], None

    labels = torch.arange(6).repeat_interleave(3)
    result = Recording(seed=1).select(labels=labels, per_class=2)
    return [seen, result.indices]


# ----------------------------------------------------------------------- condensation
def _condense(method: str) -> dict:
    """3 classes of 6 noisy 8x8 images; a small ConvNet; DSA augmentation (its draws must stay
    aligned across ranks); 3 iterations, with inner network steps for gradient matching."""
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(3).repeat_interleave(6)
    images = torch.randn(len(labels), 1, 8, 8, generator=gen) + labels.view(-1, 1, 1, 1)
    options = {"network_options": {"width": 8, "depth": 1}, "batch_real": 4, "progress": False}
    if method != "dm":
        options |= {"outer_loop": 2, "inner_loop": 2, "batch_train": 8}
    condenser = make_condenser(method, iterations=3, seed=1, augment=True, **options)
    result = condenser.condense(images, labels, per_class=2)
    return {"images": result.images, "labels": result.labels, "losses": result.losses}


CONDENSERS = ("lcmat-c", "dm")


def _condense_each() -> dict:
    return {method: _condense(method) for method in CONDENSERS}


def test_condensation_equals_one_process(two_ranks, one_thread):
    """LCMat-C (gradient matching with inner network steps) and DM, both class-sharded."""
    expected = _condense_each()
    for got in (ranks["condense"] for ranks in two_ranks):
        assert "raised" not in got, got
        for method in CONDENSERS:
            mine, theirs = got[method], expected[method]
            assert torch.equal(mine["labels"], theirs["labels"])
            torch.testing.assert_close(mine["images"], theirs["images"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                torch.tensor(mine["losses"]), torch.tensor(theirs["losses"]), rtol=1e-5, atol=1e-6
            )


# ------------------------------------------------------------------------------ errors
class _FailsOnRankOne(Selector):
    name = "fails-on-rank-one"

    def select_class(self, inputs: ClassInputs, budget: int):
        if dist.get_rank() == 1:  # distributed.rank() is 0 inside map_classes (local work)
            raise ValueError(f"class {inputs.label} cannot be selected on this rank")
        return torch.arange(budget), None


def _select_failing() -> dict:
    labels = torch.arange(4).repeat_interleave(3)
    _FailsOnRankOne().select(labels=labels, per_class=1)
    return {"raised": None}


class _FailsOnRankOneDM(DistributionMatchingCondenser):
    def matching_loss(self, syn, task, features, classes=None):
        if dist.get_rank() == 1:
            raise FloatingPointError("the embedding of rank 1 overflowed")
        return super().matching_loss(syn, task, features, classes)


def _condense_failing() -> dict:
    labels = torch.arange(2).repeat_interleave(3)
    condenser = _FailsOnRankOneDM(
        iterations=2, method="dm", network_options={"width": 4, "depth": 1}, progress=False
    )
    condenser.condense(torch.randn(6, 1, 8, 8), labels, per_class=1)
    return {"raised": None}


def _run_scenarios() -> dict:
    """Every scenario in turn on this rank; a failing one records what it raised."""
    results = {}
    for name, scenario in SCENARIOS.items():
        try:
            results[name] = scenario()
        except Exception as err:  # the test inspects what each rank raised
            results[name] = {"raised": type(err).__name__, "message": str(err)}
    return results


SCENARIOS = {
    "select": _extract_select_and_record,
    "condense": _condense_each,
    "error": _select_failing,
    "condense error": _condense_failing,
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """The results of :func:`_run_scenarios` on rank 0 and rank 1."""
    return _spawn(_run_scenarios, tmp_path_factory.mktemp("two_ranks"))


@pytest.mark.parametrize(
    ("scenario", "error", "message"),
    [
        ("error", "ValueError", "cannot be selected on this rank"),
        ("condense error", "FloatingPointError", "the embedding of rank 1 overflowed"),
    ],
)
def test_an_error_on_one_rank_stops_both_with_its_message(two_ranks, scenario, error, message):
    """Rank 1 fails in its share (selection; a condensation step); both ranks raise (no hang),
    rank 1 its own error, rank 0 one that names rank 1 and its message."""
    got = [ranks[scenario] for ranks in two_ranks]
    assert got[1]["raised"] == error
    assert message in got[1]["message"]
    assert got[0]["raised"] == "DistributedError"
    assert "rank 1" in got[0]["message"] and message in got[0]["message"]


# ------------------------------------------------------------------------ the CLI
SELECT = ["select", "--data", "digits", "--method", "lcmat-s", "--per-class", "5"]
SELECT += ["--pretrain-epochs", "1", "--no-progress", "--out"]
CONDENSE = ["condense", "--data", "digits", "--method", "dm", "--per-class", "2"]
CONDENSE += ["--iterations", "2", "--option", 'network_options={"width": 8, "depth": 2}']
CONDENSE += ["--option", "batch_real=16", "--no-progress", "--out"]
# both subcommands in one torchrun (each main() joins and leaves the group): one start-up
TORCHRUN_SCRIPT = """
import sys
from replay_lcmat.cli import main
select, condense = {select!r}, {condense!r}
sys.exit(max(main(select), main(condense)))
"""


def test_cli_under_torchrun_writes_what_one_process_writes(tmp_path, one_thread):
    from replay_lcmat.cli import main
    from replay_lcmat.condensation import load_synthetic

    assert main([*SELECT, str(tmp_path / "one.json")]) == 0
    assert main([*CONDENSE, str(tmp_path / "one.pt")]) == 0
    script = tmp_path / "both.py"
    script.write_text(
        TORCHRUN_SCRIPT.format(
            select=[*SELECT, str(tmp_path / "two.json")],
            condense=[*CONDENSE, str(tmp_path / "two.pt")],
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + [str(script)],
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=SPAWN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("written to") == 1  # rank 0 reports (and writes) once
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    one.pop("seconds"), two.pop("seconds")
    assert one == two and one["num_selected"] == 50
    one, two = (load_synthetic(tmp_path / f"{n}.pt") for n in ("one", "two"))
    assert torch.equal(one.labels, two.labels)
    torch.testing.assert_close(one.images, two.images, rtol=1e-5, atol=1e-6)
    assert {k for k in one.options if one.options[k] != two.options[k]} == {"checkpoint"}


def test_one_process_subcommands_refuse_torchrun(monkeypatch, capsys):
    from replay_lcmat.cli import main

    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    assert main(["data", "--data", "digits"]) == 2
    assert "run it without torchrun" in capsys.readouterr().err


# ------------------------------------------------------------------ single process
def test_owners_balance_the_load_deterministically():
    assert distributed.owners([1, 1, 1, 1, 1], ranks=2) == [0, 1, 0, 1, 0]
    # heaviest first to the least loaded rank: 9 -> 0; 5 -> 1; 4 -> 1 (5 < 9); 1 -> 0 (tie)
    assert distributed.owners([1, 9, 4, 5], ranks=2) == [0, 0, 1, 1]
    assert distributed.owners([3, 2], ranks=4) == [0, 1]


def test_without_a_group_everything_is_local():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_writer()) == (0, 1, True)
    assert distributed.shard(["a", "b", "c"]) == ["a", "b", "c"]
    assert distributed.gather_objects({"x": 1}) == [{"x": 1}]
    assert distributed.map_classes(lambda k: k * 10, [3, 1, 2]) == [30, 10, 20]
    with pytest.raises(KeyError):
        with distributed.phase("work"):
            raise KeyError("not swallowed")


# ------------------------------------------------------------------------ faults
FAULT_TIMEOUT_S = 5  # REPLAY_LCMAT_DIST_TIMEOUT of the fault tests' processes


class _DiesOnRankOne(Selector):
    name = "dies-on-rank-one"

    def select_class(self, inputs: ClassInputs, budget: int):
        if dist.get_rank() == 1:
            os._exit(9)  # as kill -9 would: no exception, no message to the other rank
        return torch.arange(budget), None


def _select_with_a_killed_rank() -> dict:
    labels = torch.arange(4).repeat_interleave(3)
    _DiesOnRankOne().select(labels=labels, per_class=1)
    return {"raised": None}


class _HangsOnRankOne(torch.nn.Module):
    """A classifier whose forward never returns on rank 1 (a stuck data loader, a deadlock)."""

    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Linear(64, 2)

    def features(self, x):
        if dist.get_rank() == 1:
            time.sleep(600)
        return x.flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def _extract_with_a_hung_rank() -> dict:
    labels = torch.arange(2).repeat_interleave(8)
    extract_outputs(_HangsOnRankOne(), torch.randn(16, 1, 8, 8), labels, batch_size=4)
    return {"raised": None}


def _spawn_with_a_fault(fn, tmp_path: Path, args: tuple = ()) -> tuple[dict, float]:
    """Rank 0's result of ``fn(*args)`` while rank 1 dies or hangs, and the seconds rank 0
    took; the ranks that are left are killed once rank 0 has answered."""
    context = mp.start_processes(
        _entry,
        args=(fn, str(tmp_path / "store"), 2, str(tmp_path), args, False),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    start = time.monotonic()
    result = tmp_path / "rank0.pt"
    try:
        while not result.exists() or context.processes[0].is_alive():
            if time.monotonic() - start > SPAWN_TIMEOUT_S:
                pytest.fail(f"rank 0 did not stop within {SPAWN_TIMEOUT_S} s (a hang)")
            time.sleep(0.2)
        seconds = time.monotonic() - start
        exit_code = context.processes[0].exitcode
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
    assert exit_code == 0, f"rank 0 ended with {exit_code} (an abort?)"
    return torch.load(result, weights_only=False), seconds


@pytest.mark.parametrize(
    ("scenario", "work"),
    [
        (_select_with_a_killed_rank, "dies-on-rank-one selection"),
        (_extract_with_a_hung_rank, "feature extraction"),
    ],
)
def test_a_dead_or_hung_rank_stops_the_other_naming_it(scenario, work, tmp_path, monkeypatch):
    """Rank 1 is killed mid-selection, or hangs mid-extraction: rank 0 stops within about the
    timeout with a DistributedError naming rank 1 and the work, and exits normally."""
    monkeypatch.setenv(distributed.TIMEOUT_ENV, str(FAULT_TIMEOUT_S))  # inherited by the spawn
    got, seconds = _spawn_with_a_fault(scenario, tmp_path)
    assert got["raised"] == "DistributedError", got
    assert got["message"].startswith(f"{work}: rank 1 did not reach it within 5 s"), got
    assert f"raise {distributed.TIMEOUT_ENV}" in got["message"]
    assert seconds < SPAWN_TIMEOUT_S


def test_the_default_timeout_is_minutes(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert 60 <= distributed._timeout().total_seconds() <= 900
    with distributed.phase("work"):  # without a group: no barrier, nothing waits
        distributed.check_peers("nothing")


# ------------------------------------------- a rank killed mid-run: no output, rerun identical
FAULT_SELECT = ["select", "--data", "digits", "--method", "lcmat-s", "--per-class", "3"]
FAULT_SELECT += ["--pretrain-epochs", "0", "--no-progress", "--out"]


def _cli(argv: list[str], die_on_rank_one: str | None = None) -> dict:
    """``replay-lcmat`` with ``argv`` on this rank: its exit code and what it printed to stderr.
    ``die_on_rank_one``: rank 1 is killed (``os._exit``, as kill -9) in its first class of
    LCMat-S (``"selection"``), once its share is done, before the final barrier (``"end"``),
    or in iteration 3 of a DM condensation (``"condensation"``).
    """
    import contextlib
    import io

    from replay_lcmat.cli import main
    from replay_lcmat.selection.facility_selectors import LCMatS

    def die(*args, **kwargs):
        if dist.get_rank() == 1:
            os._exit(9)

    if die_on_rank_one == "selection":
        select_class = LCMatS.select_class

        def dying(self, inputs, budget):
            die()
            return select_class(self, inputs, budget)

        LCMatS.select_class = dying
    elif die_on_rank_one == "condensation":  # in iteration 3, after the checkpoint of 2
        step = DistributionMatchingCondenser._step
        steps = []

        def dying_step(self, syn, optimizer, task):
            steps.append(1)
            if len(steps) == 3:
                die()
            return step(self, syn, optimizer, task)

        DistributionMatchingCondenser._step = dying_step
    elif die_on_rank_one == "end":
        check_peers = distributed.check_peers

        def dying_at_the_end(what: str) -> None:
            if what.startswith("the end of select"):
                die()
            check_peers(what)

        distributed.check_peers = dying_at_the_end
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return {"rc": rc, "stderr": err.getvalue()}


@pytest.mark.parametrize(("when", "work"), [("selection", "lcmat-s"), ("end", "the end of select")])
def test_a_rank_killed_mid_selection_leaves_no_output_and_a_rerun_is_identical(
    when, work, tmp_path, monkeypatch, one_thread
):
    """``select`` under 2 ranks: rank 1 dies while selecting, or after its share but before the
    final barrier; rank 0 stops naming it and the work, and no file
    at --out (nor a temporary) is left for a reader to take as the selection. The rerun on the
    same --out writes the file an uninterrupted single-process run writes, picks bit for bit."""
    from replay_lcmat import load_selection
    from replay_lcmat.cli import main

    monkeypatch.setenv(distributed.TIMEOUT_ENV, str(FAULT_TIMEOUT_S))  # inherited by the spawn
    out = tmp_path / "out" / "sel.json"
    out.parent.mkdir()
    faulted = tmp_path / "faulted"
    faulted.mkdir()
    got, _ = _spawn_with_a_fault(_cli, faulted, ([*FAULT_SELECT, str(out)], when))
    assert got["rc"] == 1, got
    assert "rank 1 did not reach it" in got["stderr"] and work in got["stderr"], got
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] in ([], ["sel.json.lock"])  # no temporary
    with pytest.raises(FileNotFoundError):
        load_selection(out)
    (tmp_path / "rerun").mkdir()
    rerun = _spawn(_cli, tmp_path / "rerun", [*FAULT_SELECT, str(out)])
    assert [r["rc"] for r in rerun] == [0, 0], rerun
    assert main([*FAULT_SELECT, str(tmp_path / "one.json")]) == 0
    one, two = (json.loads(p.read_text()) for p in (tmp_path / "one.json", out))
    one.pop("seconds"), two.pop("seconds")
    assert two == one and one["num_selected"] == 30
    assert torch.equal(load_selection(out).indices, load_selection(tmp_path / "one.json").indices)


def test_a_peer_whose_connection_closed_is_named(monkeypatch):
    """A rank killed at a barrier closes its connection before the timeout; gloo names only its
    address, so with two ranks the other one is named."""

    def closed(**kwargs):
        raise RuntimeError(
            "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:15268. "
            "This is typically caused by a remote worker crashing."
        )

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "_object_group", lambda: None)
    monkeypatch.setattr(dist, "monitored_barrier", closed)
    for me, other, size in ((0, "rank 1", 2), (1, "rank 0", 2), (0, "another rank", 3)):
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        monkeypatch.setattr(distributed, "world_size", lambda size=size: size)
        with pytest.raises(distributed.DistributedError) as err:
            distributed.check_peers("the end of select")
        assert str(err.value).startswith(
            f"the end of select: {other} did not reach it (its connection closed: it died), "
            f"so rank {me} stops here"
        ), err.value


FAULT_CONDENSE = ["condense", "--data", "digits", "--method", "dm", "--per-class", "2"]
FAULT_CONDENSE += ["--iterations", "4", "--checkpoint-every", "2", "--no-progress"]
FAULT_CONDENSE += ["--option", 'network_options={"width": 8, "depth": 2}']
FAULT_CONDENSE += ["--option", "batch_real=16", "--out"]


def test_a_rank_killed_mid_condensation_leaves_an_unfinished_checkpoint_and_resumes(
    tmp_path, monkeypatch, one_thread
):
    """``condense`` under 2 ranks, rank 1 killed in iteration 3 of 4: no --out, only OUT.ckpt
    marked unfinished (iteration 2), which readers warn about; resumed under 2 ranks it gives
    the uninterrupted single-process run's set (up to the float rounding of summed gradients)."""
    from replay_lcmat.cli import main
    from replay_lcmat.condensation import load_synthetic

    monkeypatch.setenv(distributed.TIMEOUT_ENV, str(FAULT_TIMEOUT_S))  # inherited by the spawn
    out = tmp_path / "out" / "syn.pt"
    checkpoint = out.with_name("syn.pt.ckpt")
    out.parent.mkdir()
    (tmp_path / "faulted").mkdir()
    argv = [*FAULT_CONDENSE, str(out)]
    got, _ = _spawn_with_a_fault(_cli, tmp_path / "faulted", (argv, "condensation"))
    assert got["rc"] == 1 and "rank 1 did not reach it" in got["stderr"], got
    assert not out.exists()
    with pytest.warns(UserWarning, match="unfinished condensation"):
        saved = load_synthetic(checkpoint)
    assert saved.complete is False and saved.iteration == 2
    (tmp_path / "rerun").mkdir()
    rerun = _spawn(_cli, tmp_path / "rerun", [*argv, "--resume", str(checkpoint)])
    assert [r["rc"] for r in rerun] == [0, 0], rerun
    assert main([*FAULT_CONDENSE, str(tmp_path / "one.pt")]) == 0
    one, two = load_synthetic(tmp_path / "one.pt"), load_synthetic(out)
    assert two.complete and two.iteration == 4 and not checkpoint.exists()
    assert torch.equal(one.labels, two.labels)
    torch.testing.assert_close(one.images, two.images, rtol=1e-5, atol=1e-6)
    losses = [torch.tensor(s.state["losses"]) for s in (one, two)]
    torch.testing.assert_close(*losses, rtol=1e-5, atol=1e-6)
