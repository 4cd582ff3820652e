"""The memory budget of facility-location selection: every limit that applies.

``available_memory_bytes`` is the smallest of the host's free memory, what the memory cgroup
still allows (v2 ``memory.max - memory.current``, v1 ``limit_in_bytes - usage_in_bytes``, the
inactive page cache counted as free) and what ``RLIMIT_AS`` / ``RLIMIT_DATA`` still allow;
``REPLAY_LCMAT_MEMORY_LIMIT`` replaces it. ``similarity="auto"`` streams when dense would not fit
that budget, falls back to streamed when the dense allocation fails, and an explicit ``"dense"``
that cannot fit is refused before allocating. Fake cgroup trees keep these tests independent of
the machine; one subprocess runs under a real address-space limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from replay_lcmat import resources, submodular
from replay_lcmat.condensation import make_condenser
from replay_lcmat.resources import NotEnoughMemoryError
from replay_lcmat.selection import extract_outputs, lcmat_s, make_selector

ENV = resources.MEMORY_LIMIT_ENV


def toy(n=400, d=6, c=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=gen).relu()
    logits = torch.randn(n, c, generator=gen) * 2
    return features, logits, torch.zeros(n, dtype=torch.long)


@pytest.fixture
def no_limits(monkeypatch, tmp_path):
    """No cgroup, no ulimit, a known amount of free host memory: each test adds its own limit."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(resources, "PROC_CGROUP", str(tmp_path / "no-cgroup"))
    monkeypatch.setattr(resources, "rlimit_available_bytes", lambda: None)
    monkeypatch.setattr(resources, "_host_available_bytes", lambda: 10**12)
    return tmp_path


def cgroup_tree(root, proc_line, files):
    (root / "proc-cgroup").write_text(proc_line + "\n")
    for rel, text in files.items():
        path = root / "cg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_limit_minus_usage_and_the_tightest_ancestor(no_limits, monkeypatch):
    root = no_limits
    cgroup_tree(
        root,
        "0::/job/step",
        {
            "job/step/memory.max": "1000000\n",
            "job/step/memory.current": "400000\n",
            "job/step/memory.stat": "anon 300000\ninactive_file 100000\n",
            "job/memory.max": "max\n",  # no limit on the parent
            "job/memory.current": "400000\n",
        },
    )
    monkeypatch.setattr(resources, "PROC_CGROUP", str(root / "proc-cgroup"))
    monkeypatch.setattr(resources, "CGROUP_ROOT", str(root / "cg"))
    # usage 400,000 of which 100,000 reclaimable page cache: 700,000 left
    assert resources.cgroup_available_bytes() == 700_000
    assert resources.available_memory_bytes("cpu") == 700_000
    (root / "cg/job/memory.max").write_text("500000\n")  # a tighter parent wins
    assert resources.available_memory_bytes("cpu") == 100_000
    assert "cgroup" in resources.budget_note("cpu")


def test_cgroup_v1_limit_and_unlimited(no_limits, monkeypatch):
    root = no_limits
    cgroup_tree(
        root,
        "4:memory:/docker/abc",
        {
            "memory/docker/abc/memory.limit_in_bytes": "2000000\n",
            "memory/docker/abc/memory.usage_in_bytes": "500000\n",
            "memory/docker/abc/memory.stat": "total_inactive_file 0\n",
        },
    )
    monkeypatch.setattr(resources, "PROC_CGROUP", str(root / "proc-cgroup"))
    monkeypatch.setattr(resources, "CGROUP_ROOT", str(root / "cg"))
    assert resources.available_memory_bytes("cpu") == 1_500_000
    # v1 writes "no limit" as a number near 2**63
    (root / "cg/memory/docker/abc/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert resources.cgroup_available_bytes() is None
    assert resources.available_memory_bytes("cpu") == 10**12


def test_override_replaces_detection_and_bad_values_are_named(no_limits, monkeypatch):
    monkeypatch.setenv(ENV, "1000")
    assert resources.available_memory_bytes("cpu") == 1000
    assert resources.available_memory_bytes("meta") == 1000
    monkeypatch.setenv(ENV, "1.5G")
    assert resources.available_memory_bytes("cpu") == 3 * 2**29
    monkeypatch.setenv(ENV, "512MiB")
    assert resources.available_memory_bytes("cpu") == 512 * 2**20
    for bad in ("lots", "-5", "0", "12 GB please"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=f"{ENV}=.* is not a memory size.*unset it"):
            resources.available_memory_bytes("cpu")


def test_auto_streams_under_a_small_override_with_the_same_picks(no_limits, monkeypatch):
    n, d, c = 1000, 6, 4
    features, logits, labels = toy(n=n)
    expected = lcmat_s(features, logits, labels, 8)
    selector = make_selector("lcmat-s")
    dense = selector.peak_bytes(n, d, c, 4)
    monkeypatch.setattr(submodular, "STREAM_CACHE_BYTES", 1 << 12)
    streamed = selector.streamed_peak_bytes(n, d, c, 4)
    assert streamed < dense
    monkeypatch.setenv(ENV, str((streamed + dense) // 2))

    def never(inputs):
        raise AssertionError("auto built the n x n matrix although it does not fit the limit")

    monkeypatch.setattr(selector, "dissimilarity", never)
    got = selector.select(features=features, logits=logits, labels=labels, per_class=8)
    assert torch.equal(got.indices, expected)
    with pytest.raises(NotEnoughMemoryError, match=f"needs about .*set by {ENV}"):
        lcmat_s(features, logits, labels, 8, similarity="dense")


def allocation_failure(inputs):
    raise RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 14400000000 bytes. Error code 12 (Cannot allocate memory)"
    )


def test_a_failed_dense_allocation_falls_back_to_streamed_with_a_warning(no_limits, monkeypatch):
    features, logits, labels = toy(seed=1)
    expected = lcmat_s(features, logits, labels, 5)
    auto = make_selector("lcmat-s")
    monkeypatch.setattr(auto, "dissimilarity", allocation_failure)
    with pytest.warns(UserWarning, match="could not be allocated .* streamed similarity instead"):
        got = auto.select(features=features, logits=logits, labels=labels, per_class=5)
    assert torch.equal(got.indices, expected)
    dense = make_selector("lcmat-s", similarity="dense")  # asked for dense: no quiet fallback
    monkeypatch.setattr(dense, "dissimilarity", allocation_failure)
    with pytest.raises(RuntimeError, match="can't allocate"):
        dense.select(features=features, logits=logits, labels=labels, per_class=5)

    def other_error(inputs):  # not an allocation failure: never hidden
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(auto, "dissimilarity", other_error)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        auto.select(features=features, logits=logits, labels=labels, per_class=5)


def test_the_streamed_path_shows_progress(no_limits, monkeypatch, capsys):
    features, logits, labels = toy(n=120, seed=2)
    monkeypatch.setattr(submodular, "STREAM_PROGRESS_MIN_POINTS", 100)
    lcmat_s(features, logits, labels, 4, similarity="streamed")
    err = capsys.readouterr().err
    assert "lcmat-s class 0, streamed: offset pass" in err
    assert "streamed: greedy" in err
    # with C = max d the offset pass also bounds the first gains: no pass of its own
    assert "streamed: first gains" not in err
    lcmat_s(features, logits, labels, 4, similarity="streamed", offset=100.0)
    err = capsys.readouterr().err  # a given C: bounds of the first gains from half the matrix
    assert "streamed: gain bounds" in err and "streamed: first gains" not in err
    monkeypatch.setattr(submodular, "STREAM_PROGRESS_MIN_POINTS", 1000)  # small class: quiet
    lcmat_s(features, logits, labels, 4, similarity="streamed")
    assert "streamed" not in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_under_an_address_space_limit_auto_streams_and_dense_is_refused():
    """The review's case at a small scale: with ``ulimit -v`` set 320 MiB above what the process
    already maps, the host still reports gigabytes free; n = 9,000 needs about 390 MB dense and
    about 60 MB streamed. One thread and one malloc arena: every thread's arena reserves
    address space that RLIMIT_AS counts."""
    script = textwrap.dedent(
        f"""
        import os, resource, torch
        os.environ.pop("{ENV}", None)
        from replay_lcmat import resources
        from replay_lcmat.selection import lcmat_s
        from replay_lcmat.resources import NotEnoughMemoryError
        gen = torch.Generator().manual_seed(0)
        torch.set_num_threads(1)
        n = 9000
        features = torch.randn(n, 8, generator=gen).relu()
        logits = torch.randn(n, 3, generator=gen)
        labels = torch.zeros(n, dtype=torch.long)
        torch.zeros(1).sum()
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (320 << 20), resource.RLIM_INFINITY))
        left = resources.available_memory_bytes("cpu")
        assert left <= 320 << 20, left
        try:
            lcmat_s(features, logits, labels, 3, similarity="dense")
        except NotEnoughMemoryError as err:
            assert "ulimit" in str(err), err
            print("dense refused")
        idx = lcmat_s(features, logits, labels, 3)
        print("auto picked", len(idx))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dense refused" in done.stdout
    assert "auto picked 3" in done.stdout


# ------------------------------------------- per-dataset tensors of extraction and condensation
def _head_model(d_in, d, c):
    """A model that splits into features [n, d] (flatten, linear, relu) and a linear head."""
    features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d_in, d), torch.nn.ReLU())
    model = torch.nn.Module()
    model.features, model.classifier = features, torch.nn.Linear(d, c)
    model.forward = lambda x: model.classifier(model.features(x))
    return model


@pytest.mark.parametrize("stats", ["running", "class-center"])
def test_extract_outputs_refuses_outputs_over_the_budget_before_allocating(
    no_limits, monkeypatch, stats
):
    n, d, c = 60, 16, 3
    gen = torch.Generator().manual_seed(0)
    data, labels = torch.randn(n, 1, 2, 2, generator=gen), torch.arange(n) % c
    torch.manual_seed(0)
    model = _head_model(4, d, c)
    copies = 2 if stats == "class-center" else 1  # class-center holds a centred copy of h
    needed = 4 * n * (copies * d + c)  # float32 features [n, d] and logits [n, c]
    monkeypatch.setenv(ENV, str(needed))
    got = extract_outputs(model, data, labels, stats=stats, batch_size=7)
    assert got.features.shape == (n, d) and got.logits.shape == (n, c)
    monkeypatch.setenv(ENV, str(needed - 1))
    zeros = torch.zeros

    def no_outputs(*shape, **kw):  # the [n, d] / [n, c] outputs must not be allocated
        assert shape[:1] != (n,), "allocated the outputs before checking the budget"
        return zeros(*shape, **kw)

    monkeypatch.setattr(torch, "zeros", no_outputs)
    with pytest.raises(NotEnoughMemoryError) as err:
        extract_outputs(model, data, labels, stats=stats, batch_size=7)
    message = str(err.value)
    assert f"features [{n}, {d}] and logits [{n}, {c}]" in message
    assert f"set by {ENV}" in message and "in parts" in message


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_condensation_refuses_a_working_set_over_the_budget(no_limits, monkeypatch, method):
    k, per_class, batch_real, shape = 3, 4, 5, (1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(k).repeat_interleave(8)
    images = torch.randn(len(labels), *shape, generator=gen)
    pixels = shape[0] * shape[1] * shape[2] * 4
    # the synthetic set, its gradient and momentum; a real class batch and its augmented copy
    needed = pixels * (3 * k * per_class + 2 * batch_real)
    options = {"network_options": {"width": 4, "depth": 1}, "batch_real": batch_real}
    options |= {"augment": False, "progress": False, "iterations": 0}
    monkeypatch.setenv(ENV, str(needed))
    result = make_condenser(method, **options).condense(images, labels, per_class=per_class)
    assert result.images.shape == (k * per_class, *shape)
    monkeypatch.setenv(ENV, str(needed - 1))

    def no_init(*args, **kwargs):
        raise AssertionError("the synthetic set was allocated before the budget was checked")

    condenser = make_condenser(method, **options)
    monkeypatch.setattr(condenser, "_initialise", no_init)
    with pytest.raises(NotEnoughMemoryError) as err:
        condenser.condense(images, labels, per_class=per_class)
    message = str(err.value)
    assert f"{k} classes x {per_class} images of 1x6x6" in message
    assert f"set by {ENV}" in message and "Lower per_class or batch_real" in message
