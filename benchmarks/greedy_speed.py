"""Selection kernels side by side: our greedy vs apricot's, ``lcmat_s`` in Gram-product units.

Run from the repository root (apricot comes with the ``bench`` extra: ``pip install -e .[bench]``):

    python -m benchmarks.greedy_speed                   # n = 5,000 and 10,000; writes results/
    python -m benchmarks.greedy_speed --baseline REV    # also lcmat_s of commit REV, alternated
    python -m benchmarks.greedy_speed --quick           # n = 1,000 and 2,000, one round, prints

What is compared, on one class of synthetic post-ReLU features (c = 10, d = 512, float32 unless
said otherwise; ``make_inputs`` of ``selection_speed``):

- The facility-location greedy on one similarity ``s = max d - d`` of LCMat-S: ours
  (``maximize``, lazy and naive) vs apricot's ``FacilityLocationSelection(metric="precomputed")``.
  apricot works in float64 (it converts anything else), so it gets float64 input and ours runs on
  float64 as well as on float32. apricot compiles its numba kernels inside every ``fit``: its
  ``_initialize`` (the compile) and its optimiser's ``select`` (the loop) are timed by wrapping
  them, and a first tiny fit is timed on its own (the cold compile).
- ``lcmat_s`` end to end and its stages (Gram, L1, greedy) with one float32 ``h @ h.T`` of the
  same features as the unit (the target: at most 3.0 at n = 5,000); with ``--baseline REV`` also
  ``lcmat_s`` of an older commit, run from a temporary ``git worktree`` of it (its own
  ``benchmarks.greedy_speed`` worker answers the same request), alternated with ours.

Every measurement runs in its own subprocess with one thread for every library (torch,
MKL/OpenMP, numba; our compiled kernels follow torch's one thread), contenders interleaved, three rounds, medians reported. Peak extra memory is
measured on resident memory (not tracemalloc, which sees neither torch nor numpy): the
high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` just before the call and read
after it, minus the resident memory before it; a small warm-up call runs first (code pages are
not the call's memory) and what it freed is handed back to the system (``malloc_trim``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ._common import RESULTS, command_line, command_markdown, markdown_table, write_markdown
from .selection_speed import make_inputs

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
ROUNDS = 3
WARM_UP = 300  # samples of the warm-up call before a measured one


# ----------------------------------------------------------------------------- worker side
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource  # fallback: the peak since the process started

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_free_memory() -> None:
    """Hand memory freed by the warm-up back to the system (glibc keeps it otherwise), so that
    the measured call's reuse of it counts as growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measured(fn, *args) -> tuple[object, dict]:
    """Run ``fn(*args)``: its result, seconds and peak extra resident bytes."""
    _release_free_memory()
    before = _rss_bytes()
    reset = _reset_peak()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    return result, {"seconds": seconds, "peak_extra": _peak_bytes(reset) - before}


def greedy_worker(spec: dict) -> dict:
    sim = np.load(spec["path"])
    k, optimizer = spec["budget"], spec["optimizer"]
    if spec["impl"] == "apricot":
        return apricot_worker(sim, k, optimizer)
    sim = torch.from_numpy(sim)
    small = sim[:WARM_UP, :WARM_UP].clone()
    from replay_lcmat.greedy import maximize
    from replay_lcmat.submodular import FacilityLocation

    def run(matrix, budget):  # the matrix is finite by construction: no check
        fn = FacilityLocation(matrix, check_finite=False)
        return maximize(fn, budget, optimizer=optimizer).ranking.tolist()

    run(small, 5)  # warm-up: code pages and first-call caches are not the greedy's memory
    picks, out = measured(run, sim, k)
    out["picks"] = picks
    return out


def apricot_worker(sim: np.ndarray, k: int, optimizer: str) -> dict:
    import apricot
    import apricot.optimizers

    timings = {}

    def timed(cls, name: str, key: str) -> None:
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            result = original(self, *args, **kwargs)
            timings[key] = time.perf_counter() - start
            return result

        setattr(cls, name, wrapper)

    start = time.perf_counter()  # cold: numba's first compile in this process (and a warm-up)
    apricot.FacilityLocationSelection(5, metric="precomputed", optimizer=optimizer).fit(
        np.ascontiguousarray(sim[:WARM_UP, :WARM_UP])
    )
    first_tiny_fit = time.perf_counter() - start
    timed(apricot.FacilityLocationSelection, "_initialize", "compile")
    timed(apricot.optimizers.OPTIMIZERS[optimizer], "select", "loop")
    selector = apricot.FacilityLocationSelection(k, metric="precomputed", optimizer=optimizer)
    _, out = measured(selector.fit, sim)
    out.update(
        first_tiny_fit=first_tiny_fit,
        compile=timings["compile"],
        loop=timings["loop"],
        picks=[int(j) for j in selector.ranking],
    )
    return out


def stages_worker(spec: dict) -> dict:
    from replay_lcmat import kernels
    from replay_lcmat.curvature import diag_hessian_columns, top_variance_coordinates
    from replay_lcmat.selection.distances import l1_distances, lcmat_dissimilarity

    h, z, y = make_inputs(10, spec["n"], spec["d"], one_class=True)
    lam = diag_hessian_columns(h, z, top_variance_coordinates(h, z, spec["k_dims"]))
    lcmat_dissimilarity(h[:WARM_UP], z[:WARM_UP], y[:WARM_UP], eps=0.01, k_dims=5)  # compile
    out = {}

    def stage(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        out[name] = time.perf_counter() - start
        return result

    stage("h @ h.T", torch.mm, h, h.T)
    ours = stage("Gram", lambda: lcmat_dissimilarity(h, z, y, eps=0, k_dims=1))
    stage("check (aminmax)", torch.aminmax, ours)
    del ours
    l1 = stage("L1", l1_distances, lam)
    small = lam[: min(len(lam), 1500)]
    out["L1 == torch.cdist p=1 (bit-identical)"] = bool(
        torch.equal(l1_distances(small), torch.cdist(small, small, p=1))
    )
    compiled = kernels._compiled
    kernels._compiled = None  # the torch passes, for the same entries
    try:
        out["L1 compiled == torch passes (bit-identical)"] = bool(
            torch.equal(l1_distances(small), l1[: len(small), : len(small)])
        )
    finally:
        kernels._compiled = compiled
    return out


def lcmat_worker(spec: dict) -> dict:
    from replay_lcmat.selection import lcmat_s

    h, z, y = make_inputs(10, spec["n"], spec["d"], one_class=True)
    if spec.get("float64"):
        h, z = h.double(), z.double()
    eps, k_dims = spec["eps"], spec["k_dims"]

    def run(h, z, y, budget):
        return lcmat_s(h, z, y, budget, eps=eps, k_dims=k_dims).tolist()

    run(h[:WARM_UP], z[:WARM_UP], y[:WARM_UP], 5)  # warm-up, as for the greedy
    units = []
    for _ in range(3):  # the unit in this very process, just before: the machine's speed cancels
        start = time.perf_counter()
        torch.mm(h, h.T)
        units.append(time.perf_counter() - start)
    picks, out = measured(run, h, z, y, spec["budget"])
    out["picks"] = picks
    out["unit"] = statistics.median(units)
    return out


WORKERS = {"greedy": greedy_worker, "stages": stages_worker, "lcmat": lcmat_worker}


def worker(spec: dict) -> dict:
    torch.set_num_threads(1)
    import replay_lcmat.selection  # noqa: F401  (imports outside the timed region)

    return WORKERS[spec["kind"]](spec)


# ----------------------------------------------------------------------------- main side
def measure(spec: dict, tree: str | None = None) -> dict:
    """``worker(spec)`` in a fresh process with one thread: of this checkout, or of ``tree`` (a
    worktree of an older commit, whose ``benchmarks.greedy_speed`` worker answers the same
    ``lcmat`` spec with that commit's ``lcmat_s``)."""
    if tree is None:
        cmd = [sys.executable, "-m", __spec__.name, "--worker", json.dumps(spec)]
        env, cwd = dict(os.environ, **ONE_THREAD), Path(__file__).parents[1]
    else:  # the older tree's packages first on the path, before the installed checkout
        cmd = [sys.executable, "-m", "benchmarks.greedy_speed", "--worker", json.dumps(spec)]
        env, cwd = dict(os.environ, **ONE_THREAD, PYTHONPATH=tree), Path(tree)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str, folder: str) -> str:
    """A detached worktree of ``rev`` in ``folder`` (its path)."""
    tree = str(Path(folder) / f"baseline-{rev}")
    subprocess.run(
        ["git", "worktree", "add", "--detach", tree, rev],
        check=True,
        capture_output=True,
        cwd=Path(__file__).parents[1],
    )
    return tree


def save_similarity(n: int, d: int, eps: float, k_dims: int, folder: str) -> dict[str, str]:
    """``s = max d - d`` of LCMat-S on one class, saved as float32 and float64 ``.npy``."""
    from replay_lcmat.selection.distances import lcmat_dissimilarity

    torch.set_num_threads(os.cpu_count() or 1)  # preparation, not measured
    h, z, y = make_inputs(10, n, d, one_class=True)
    dist = lcmat_dissimilarity(h, z, y, eps=eps, k_dims=k_dims)
    c = dist.max()
    sim = dist.neg_().add_(c).numpy()
    paths = {"float32": f"{folder}/sim{n}_f32.npy", "float64": f"{folder}/sim{n}_f64.npy"}
    np.save(paths["float32"], sim)
    np.save(paths["float64"], sim.astype(np.float64))
    return paths


def machine_state() -> dict:
    ps = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "busiest processes": [line.strip() for line in ps[:6]],
    }


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run_size(n: int, k: int, args, folder: str, naive: bool) -> dict:
    paths = save_similarity(n, args.d, args.eps, args.k_dims, folder)
    greedy = {
        "ours lazy float32": dict(impl="ours", optimizer="lazy", path=paths["float32"]),
        "ours lazy float64": dict(impl="ours", optimizer="lazy", path=paths["float64"]),
        "apricot lazy float64": dict(impl="apricot", optimizer="lazy", path=paths["float64"]),
    }
    if naive:
        greedy["ours naive float64"] = dict(impl="ours", optimizer="naive", path=paths["float64"])
        greedy["apricot naive float64"] = dict(
            impl="apricot", optimizer="naive", path=paths["float64"]
        )
    common = dict(n=n, d=args.d, eps=args.eps, k_dims=args.k_dims, budget=k, impl="ours")
    trees = {"ours": None} | ({"baseline": args.baseline_tree} if args.baseline_tree else {})
    runs = {name: [] for name in [*greedy, "stages", *(f"lcmat_s {x}" for x in trees)]}
    runs["craig"] = []  # lcmat_s with eps = 0: Craig's selection exactly
    for round_ in range(args.rounds):  # contenders interleaved inside each round
        for name, spec in greedy.items():
            runs[name].append(measure(dict(spec, kind="greedy", budget=k)))
        runs["stages"].append(measure(dict(common, kind="stages")))
        for name, tree in trees.items():
            runs[f"lcmat_s {name}"].append(measure(dict(common, kind="lcmat"), tree))
        runs["craig"].append(measure(dict(common, kind="lcmat", eps=0.0)))
        print(f"n={n}: round {round_ + 1} of {args.rounds} done", flush=True)
    for path in paths.values():
        os.remove(path)
    agreement = {}
    if args.baseline_tree and naive:  # the first size only
        ours64 = measure(dict(common, kind="lcmat", float64=True))
        base64 = measure(dict(common, kind="lcmat", float64=True), args.baseline_tree)
        agreement["lcmat_s picks ours == baseline, float64 inputs"] = _same(ours64, base64)
    return {"n": n, "k": k, "runs": runs, "agreement": agreement}


def _same(a: dict, b: dict) -> str:
    if a["picks"] == b["picks"]:
        return "yes"
    shared = len(set(a["picks"]) & set(b["picks"])) / len(a["picks"])
    return f"no ({shared:.0%} shared)"


def summarise(size: dict) -> tuple[list[dict], list[dict], list[dict], list[tuple[str, str]]]:
    n, k, runs = size["n"], size["k"], size["runs"]
    sim_bytes = {"float32": 4 * n * n, "float64": 8 * n * n}
    apricot_loop = {
        opt: median(runs[f"apricot {opt} float64"], "loop")
        for opt in ("lazy", "naive")
        if f"apricot {opt} float64" in runs
    }
    greedy_rows = []
    for name, name_runs in runs.items():
        if name in ("stages", "craig") or name.startswith("lcmat_s"):
            continue
        optimizer, dtype = name.split()[1], name.split()[2]
        row = {"n, k": f"{n}, {k}", "greedy": name}
        if name.startswith("apricot"):
            row["seconds (median)"] = f"{median(name_runs, 'loop'):.3f} (loop)"
            row["apricot fit s"] = f"{median(name_runs, 'seconds'):.3f}"
            row["apricot compile s (per fit / cold first fit)"] = (
                f"{median(name_runs, 'compile'):.2f} / {median(name_runs, 'first_tiny_fit'):.2f}"
            )
        else:
            own = median(name_runs, "seconds")
            row["seconds (median)"] = f"{own:.3f}"
            row["vs apricot loop"] = f"{own / apricot_loop[optimizer]:.2f}x"
        peak = median(name_runs, "peak_extra")
        row["peak extra MiB"] = f"{peak / 2**20:.1f}"
        row["% of similarity"] = f"{100 * peak / sim_bytes[dtype]:.1f}%"
        reference = (
            runs[f"ours {optimizer} float64"] if f"ours {optimizer} float64" in runs else None
        )
        row["same picks as ours float64"] = _same(name_runs[0], reference[0]) if reference else ""
        greedy_rows.append(row)

    stages = runs["stages"]
    hht = median(stages, "h @ h.T")
    greedy_ours = median(runs["ours lazy float32"], "seconds")
    stage_rows = [
        {
            "n": n,
            "stage": stage,
            "s": f"{median(stages, key):.3f}",
            "/ h@h.T": f"{median(stages, key) / hht:.2f}",
        }
        for stage, key in (
            ("Gram (exact products)", "Gram"),
            ("L1 (compiled)", "L1"),
            ("check", "check (aminmax)"),
        )
    ]
    stage_rows.append(
        {
            "n": n,
            "stage": f"greedy (lazy, k={k})",
            "s": f"{greedy_ours:.3f}",
            "/ h@h.T": f"{greedy_ours / hht:.2f}",
        }
    )
    stage_rows.append({"n": n, "stage": "h @ h.T (unit)", "s": f"{hht:.3f}", "/ h@h.T": "1.00"})

    ours = runs["lcmat_s ours"]
    t_ours = median(ours, "seconds")
    own_unit = statistics.median(r["seconds"] / r["unit"] for r in ours)  # per run, then median
    row = {
        "n, k": f"{n}, {k}",
        "ours s": f"{t_ours:.3f}",
        "ours / h@h.T": f"{t_ours / hht:.2f}",
        "ours / h@h.T of its own process": f"{own_unit:.2f}",
        "ours peak extra MiB": f"{median(ours, 'peak_extra') / 2**20:.0f}",
        "ours peak / (n^2 * 4 bytes)": f"{median(ours, 'peak_extra') / (4 * n * n):.2f}",
        "Craig (eps = 0) / h@h.T of its own process": "{:.2f}".format(
            statistics.median(r["seconds"] / r["unit"] for r in runs["craig"])
        ),
    }
    base = runs.get("lcmat_s baseline")
    if base:
        t_base = median(base, "seconds")
        row |= {
            "baseline s": f"{t_base:.3f}",
            "baseline / h@h.T": f"{t_base / hht:.2f}",
            "speed-up": f"{t_base / t_ours:.2f}x",
            "baseline peak extra MiB": f"{median(base, 'peak_extra') / 2**20:.0f}",
            "same picks float32": _same(ours[0], base[0]),
            **size["agreement"],
        }
    lcmat_rows = [row]
    checks = [(key, str(stages[0][key])) for key in stages[0] if "==" in key]
    greedy_f64 = median(runs["ours lazy float64"], "seconds")
    lazy_loop = apricot_loop["lazy"]
    targets = [
        (
            f"n={n}: greedy at most apricot's lazy loop (compile excluded)",
            f"{'met' if max(greedy_ours, greedy_f64) <= lazy_loop else 'NOT met'}: ours "
            f"{greedy_ours:.3f} s float32 ({greedy_ours / lazy_loop:.2f}x), {greedy_f64:.3f} s "
            f"float64 ({greedy_f64 / lazy_loop:.2f}x) vs apricot {lazy_loop:.3f} s float64",
        ),
        (
            f"n={n}: greedy peak extra memory <= 5% of the similarity",
            (lambda p: f"{'met' if p <= 0.05 else 'NOT met'}: {100 * p:.1f}%")(
                median(runs["ours lazy float32"], "peak_extra") / sim_bytes["float32"]
            ),
        ),
    ]
    if n == 5000:
        targets.append(
            (
                f"n={n}, k={k}: lcmat_s at most 3.0 h@h.T (one float32 n x n x d Gram product, "
                "timed in the same process just before)",
                f"{'met' if own_unit <= 3.0 else 'NOT met'}: {own_unit:.2f} h@h.T "
                f"({t_ours / hht:.2f} against the stages' unit)",
            )
        )
    return greedy_rows, stage_rows, lcmat_rows, checks + targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="n = 1,000 and 2,000, one round; prints only"
    )
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--k-dims", type=int, default=100)
    parser.add_argument("--name", default="greedy_speed", help="results file stem")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="also time lcmat_s of this git commit (checked out in a temporary worktree), "
        "alternated with ours in every round",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sizes = [(1000, 20), (2000, 30)] if args.quick else [(5000, 50), (10000, 100)]
    args.rounds = 1 if args.quick else ROUNDS
    args.float64_agreement = True
    before = machine_state()
    quiet = os.path.exists("/tmp/quiet")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        args.baseline_tree = baseline_tree(args.baseline, folder) if args.baseline else None
        try:
            results = [
                run_size(n, k, args, folder, naive=(i == 0)) for i, (n, k) in enumerate(sizes)
            ]
        finally:
            if args.baseline_tree:
                subprocess.run(["git", "worktree", "remove", "--force", args.baseline_tree])
    minutes = (time.perf_counter() - start) / 60
    after = machine_state()
    greedy, stages, lcmat, verdicts = [], [], [], []
    for size in results:
        g, s, lc, v = summarise(size)
        greedy += g
        stages += s
        lcmat += lc
        verdicts += v
    text = "\n\n".join(
        [
            "## Greedy loop: ours vs apricot (one thread each)\n\n" + markdown_table(greedy),
            "## Stages of lcmat_s, in units of one h @ h.T\n\n" + markdown_table(stages),
            "## lcmat_s end to end\n\n" + markdown_table(lcmat),
            "## Checks and targets\n\n" + "\n".join(f"- {key}: {value}" for key, value in verdicts),
        ]
    )
    print(text)
    if args.quick:
        return 0
    header = [
        "# Selection kernels: our greedy vs apricot, lcmat_s in Gram-product units",
        "",
        command_markdown(command_line("greedy_speed", argv), "repository root"),
        "",
        f"Machine: {platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, numpy {np.__version__}, apricot-select "
        f"{_version('apricot-select')}, numba {_version('numba')}; one thread per library "
        f"(torch.set_num_threads(1), {', '.join(f'{k}=1' for k in ONE_THREAD)}); "
        f"{ROUNDS} interleaved rounds, medians; {minutes:.1f} minutes in all.",
        "",
        "What else ran on the machine: "
        + (
            "the run waited for `/tmp/quiet` (the other engineer's jobs had finished). "
            if quiet
            else "**the machine was shared**: `/tmp/quiet` did not exist, another engineer's "
            "jobs may have used the second core. "
        )
        + f"Before: {_state_line(before)}. After: {_state_line(after)}.",
        "",
        "Settings: LCMat-S eps="
        f"{args.eps}, k_dims={args.k_dims}, d={args.d}, c=10, one class; similarity "
        "s = max d - d of that class. Peak extra memory: VmHWM reset before the call minus RSS "
        "before it (resident memory, so torch and numpy allocations count; tracemalloc sees "
        "neither), after a small warm-up call whose freed memory is handed back with "
        "`malloc_trim`. apricot converts "
        "input to float64, so it gets float64; its loop is its optimiser's `select` (timed by "
        "a wrapper), its compile is its `_initialize` (numba compiles in every fit). "
        + (
            f"Baseline = `lcmat_s` of commit {args.baseline} (a temporary git worktree), "
            "alternated with ours in every round."
            if args.baseline
            else "No baseline commit (`--baseline REV` adds one)."
        ),
        "",
        "Stages: Gram = the gradient distances from exact (split float64) products, blocks on "
        "and above the diagonal, mirrored; L1 = the Hessian L1 term alone (`l1_distances`, the "
        "compiled kernel; inside `lcmat_s` it runs in the same row blocks as the distances); "
        "check = the `aminmax` that C = max d needs (also the finiteness check); greedy = lazy, "
        "float32, on the same similarity. `lcmat_s` end to end includes everything (through "
        "the public `lcmat_s`, with its input checks). Unit: one float32 `h @ h.T` of the "
        "class's [n, d] features, timed in the stages' worker, and for `lcmat_s` also in its own "
        "process just before it (median of 3; the ratio of each run, then the median).",
    ]
    write_markdown(RESULTS / f"{args.name}.md", "\n".join(header) + "\n\n" + text)
    print(f"written {RESULTS / args.name}.md")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _state_line(state: dict) -> str:
    busiest = "; ".join(state["busiest processes"][1:4])
    return (
        f"{state['utc']} UTC, load average {state['load average (1, 5, 15 min)']}, "
        f"busiest processes (pid %cpu elapsed command): {busiest}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
