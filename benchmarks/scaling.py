"""Scaling out selection: dense vs streamed similarity, partitioned greedy, processes,
and a projection for ImageNet-1k.

Run from the repository root:

    python -m benchmarks.scaling --note "nothing else running"      # all parts, the full sizes
    python -m benchmarks.scaling --quick --note "..."                # n up to 5,000: a check
    python -m benchmarks.scaling --part streamed --sizes 1000 5000   # one part, chosen sizes

Parts (``--part``, default all):

- ``streamed``: LCMat-S on one class (d = 512, c = 10, synthetic post-ReLU features, float32,
  1% budget) with ``similarity="dense"`` and ``"streamed"`` for n = 1k, 5k, 20k, 50k, 100k. Each
  point runs in a fresh subprocess; its peak memory is the child's resident high-water mark
  (``VmHWM``, everything the process held: torch, inputs, temporaries), and its time the wall
  time of ``select`` alone. Dense is skipped where its estimate
  (``facility_location_peak_bytes``) exceeds the memory available. The log-log slope of the
  streamed times is the time growth exponent.
- ``partitions``: ``partitions = p`` for p = 2, 4, 8 against the exact greedy on real features
  (a ConvNet trained briefly on the CIFAR-10 archive of ``$REPLAY_LCMAT_CIFAR10_ARCHIVE``, which
  must be set for it, README "Data"; else scikit-learn's digits): objective ratio and time.
- ``processes``: 1 vs 2 gloo processes through ``benchmarks.distributed_speed.measure`` when it
  exists (extraction + selection on the CIFAR-10 archive).
- ``projection``: ImageNet-1k (1.28M images, 1,000 classes of about 1,281) on 1, 8 and 64 GPUs
  from the measured per-class selection cost and an assumed extraction throughput: a
  PROJECTION, not a measurement.

Results: ``benchmarks/results/scaling.md`` and ``scaling.json`` (``--quick``:
``scaling_quick.*``), with the command line and ``--note`` (what else was running).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ._common import RESULTS, command_line, command_markdown, markdown_table, write_markdown

SIZES = (1_000, 5_000, 20_000, 50_000, 100_000)
QUICK_SIZES = (1_000, 2_000, 5_000)
D, C, FRACTION = 512, 10, 0.01
PARTITIONS = (2, 4, 8)
# ImageNet-1k and the assumption behind the extraction part of the projection
IMAGENET_IMAGES, IMAGENET_CLASSES = 1_281_167, 1_000
EXTRACT_IMAGES_PER_S_PER_GPU = 2_500  # ASSUMED: ResNet-18 forward, 224 px, one modern GPU
GPUS = (1, 8, 64)


# ------------------------------------------------------------------------------- inputs
def one_class_inputs(n: int, d: int = D, c: int = C, seed: int = 0):
    """Post-ReLU features of one class around its mean, logits of a nearest-mean head over ``c``
    classes, labels 0: ``[n, d]`` float32, ``[n, c]``, ``[n]``; made in chunks (no big temporaries)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=gen)
    centers = (means + 1.5 * torch.randn(c, d, generator=gen)).relu()
    features = torch.empty(n, d)
    for a in range(0, n, 8192):
        m = min(8192, n - a)
        features[a : a + m] = (means[0] + 1.5 * torch.randn(m, d, generator=gen)).relu()
    logits = (features @ centers.T - 0.5 * centers.square().sum(1)) / d**0.5
    return features, logits, torch.zeros(n, dtype=torch.long)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


HEARTBEAT_S = 10.0


def _heartbeat(path: str, started: float) -> None:
    """Every :data:`HEARTBEAT_S`, the elapsed time and VmHWM so far into ``path`` (read by the
    parent when the point is stopped by ``--point-timeout``)."""
    while True:
        status = {
            "elapsed": time.perf_counter() - started,
            "peak_rss_mib": _status_kib("VmHWM") / 1024,
        }
        Path(path).write_text(json.dumps(status))
        time.sleep(HEARTBEAT_S)


def child(spec: dict) -> dict:
    """One point, in this (fresh) process: make the inputs, time ``select``, read VmHWM."""
    import threading

    from replay_lcmat.selection import make_selector
    from replay_lcmat.selection.base import ClassInputs

    if spec.get("status"):
        beat = (spec["status"], time.perf_counter())
        threading.Thread(target=_heartbeat, args=beat, daemon=True).start()
    torch.set_num_threads(spec["threads"])
    h, z, y = one_class_inputs(spec["n"], c=spec.get("c", C))
    before = _status_kib("VmRSS")
    selector = make_selector(
        spec["method"], similarity=spec["similarity"], greedy=spec.get("greedy", "lazy")
    )
    t0 = time.perf_counter()
    result = selector.select(features=h, logits=z, labels=y, fraction=FRACTION)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "rss_before_mib": before / 1024,
        "picks": result.indices[:5].tolist(),
    }
    if spec.get("cost"):  # sum_i min_{j in S} d_ij, from the rows of the picks (after timing)
        distances = selector.distances(ClassInputs(label=0, features=h, logits=z, labels=y))
        nearest = None
        for a in range(0, len(result.indices), 64):
            block = distances.rows(result.indices[a : a + 64]).amin(0)
            nearest = block if nearest is None else torch.minimum(nearest, block)
        out["cost"] = float(nearest.double().sum())
    return out


def run_point(spec: dict, timeout: float | None) -> dict:
    """``child(spec)`` in a fresh interpreter; ``{"error": ...}`` when it fails or times out."""
    with tempfile.TemporaryDirectory() as scratch:
        status = Path(scratch) / "status.json"
        spec = dict(spec, status=str(status))
        command = [sys.executable, "-m", f"{__package__}.scaling", "--child", json.dumps(spec)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=Path.cwd()
            )
        except subprocess.TimeoutExpired:
            last = json.loads(status.read_text()) if status.is_file() else {}
            error = {"error": f"stopped after {timeout:.0f} s (--point-timeout), not finished"}
            if last:
                error["peak_rss_mib_so_far"] = last["peak_rss_mib"]
                error["error"] += (
                    f"; peak RSS until then {last['peak_rss_mib']:.0f} MiB "
                    f"(sampled every {HEARTBEAT_S:.0f} s)"
                )
            return error
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(n)."""
    if len(points) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / sum(
        (x - mx) ** 2 for x in xs
    )


def streamed_targets(rows: list[dict]) -> list[str]:
    """The streamed path's targets, from the table's rows: streamed / dense time where both ran,
    n = 50,000 in at most 240 s, n = 100,000 in at most 900 s and 4 GB (exact greedy)."""
    lines = ["Targets:"]
    by = {(r["n"], r["path"]): r for r in rows if "seconds" in r}
    for (n, path), row in sorted(by.items()):
        if path == "streamed" and (n, "dense") in by:
            ratio = row["seconds"] / by[(n, "dense")]["seconds"]
            lines.append(f"- n={n}: streamed / dense time {ratio:.2f}x (target <= 2x)")
    for n, limit in ((50_000, 240), (100_000, 900)):
        row = by.get((n, "streamed"))
        if row is None:
            lines.append(f"- n={n} streamed: not run or not finished (target <= {limit} s)")
            continue
        met = row["seconds"] <= limit and row["peak RSS MiB"] * 2**20 <= 4e9
        lines.append(
            f"- n={n} streamed: {row['seconds']:.0f} s, peak RSS {row['peak RSS MiB']} MiB "
            f"(target <= {limit} s, <= 4 GB): {'met' if met else 'NOT met'}"
        )
    lines.append(
        "- The stochastic greedy (Mirzasoleiman et al. 2015) gives a (1 - 1/e - epsilon) "
        "approximation of F in expectation, with n / k ln(1 / epsilon) sampled candidates per "
        "step; its rows above give the measured cost ratio against the exact greedy."
    )
    return lines


def part_streamed(sizes, threads: int, timeout: float | None, log, stochastic_sizes=()) -> dict:
    from replay_lcmat import resources
    from replay_lcmat.selection import make_selector

    selector = make_selector("lcmat-s")
    available = resources.available_memory_bytes("cpu")
    rows, streamed_times = [], []
    for n in sizes:
        for path in ("dense", "streamed"):
            estimate = (
                selector.peak_bytes(n, D, C, 4)
                if path == "dense"
                else selector.streamed_peak_bytes(n, D, C, 4)
            )
            row = {"n": n, "budget": max(1, math.floor(FRACTION * n + 0.5)), "path": path}
            row["estimate GB"] = round(estimate / 1e9, 2)
            if path == "dense" and available is not None and estimate > available:
                row["result"] = f"does not fit: estimate {estimate / 1e9:.1f} GB"
                log(f"n={n} dense: {row['result']} (available {available / 1e9:.1f} GB)")
                rows.append(row)
                continue
            spec = {"n": n, "method": "lcmat-s", "similarity": path, "threads": threads}
            got = run_point(spec, timeout)
            if "error" in got:
                row["result"] = got["error"]
                if "peak_rss_mib_so_far" in got:
                    row["peak RSS MiB"] = round(got["peak_rss_mib_so_far"])
                    within = got["peak_rss_mib_so_far"] * 2**20 <= 4e9
                    row["within 4 GB"] = "so far" if within else "no"
            else:
                row.update(
                    seconds=round(got["seconds"], 2),
                    **{"peak RSS MiB": round(got["peak_rss_mib"])},
                    **{"RSS before MiB": round(got["rss_before_mib"])},
                    first_picks=got["picks"],
                )
                row["within 4 GB"] = "yes" if got["peak_rss_mib"] * 2**20 <= 4e9 else "no"
                if path == "streamed":
                    streamed_times.append((n, got["seconds"]))
            log(f"n={n} {path}: {row}")
            rows.append(row)
    for n in stochastic_sizes:  # Mirzasoleiman et al. 2015 against the exact lazy greedy
        costs = {}
        for greedy in ("lazy", "stochastic"):
            spec = {"n": n, "method": "lcmat-s", "similarity": "streamed", "threads": threads}
            got = run_point(dict(spec, greedy=greedy, cost=True), timeout)
            if "error" in got:
                log(f"n={n} streamed {greedy}: {got['error']}")
                break
            costs[greedy] = got
        if len(costs) == 2:
            exact, fast = costs["lazy"], costs["stochastic"]
            row = {
                "n": n,
                "budget": max(1, math.floor(FRACTION * n + 0.5)),
                "path": "streamed, stochastic greedy (epsilon 0.1)",
                "seconds": round(fast["seconds"], 2),
                "peak RSS MiB": round(fast["peak_rss_mib"]),
                "result": f"cost ratio {fast['cost'] / exact['cost']:.4f} (sum of min d; 1 = as "
                f"good as exact, whose run took {exact['seconds']:.1f} s)",
            }
            log(f"n={n} stochastic: {row}")
            rows.append(row)
    same = {}
    for n in sizes:
        picks = [r.get("first_picks") for r in rows if r["n"] == n and "first_picks" in r]
        if len(picks) == 2:
            same[n] = picks[0] == picks[1]
    return {
        "rows": rows,
        "streamed_exponent": growth_exponent(streamed_times),
        "same_first_picks": same,
        "available_bytes": available,
    }


# ------------------------------------------------------------------------------- partitions
def real_outputs(quick: bool, threads: int, log):
    """Features/logits of a small model trained briefly: CIFAR-10 archive, else digits."""
    from replay_lcmat.data import load_dataset, shared_cifar10_archive
    from replay_lcmat.selection import SelectionModelConfig, extract_outputs
    from replay_lcmat.training import pretrain_selection_model

    archive = shared_cifar10_archive()
    if archive is not None:
        source = f"CIFAR-10 archive {archive.name} (ConvNet width 32, 1 epoch, class-batch stats)"
        train, _ = load_dataset(str(archive), progress=False)
        model_options, model = {"width": 32}, "convnet"
    else:
        source = "scikit-learn digits (MLP, 5 epochs): no CIFAR-10 archive"
        train, _ = load_dataset("digits")
        model_options, model = {}, "mlp"
    if quick:  # the first 600 images of each class
        keep = torch.cat(
            [torch.nonzero(train.labels == c).flatten()[:600] for c in range(train.num_classes)]
        )
        train = train.subset(keep.sort().values)
    log(f"partitions: training the selection model on {source}, {len(train.labels)} images")
    config = SelectionModelConfig(
        model, model_options, epochs=1 if archive is not None else 5, lr=0.05, augment=False
    )
    net = pretrain_selection_model(train, config, seed=0, progress=False)
    out = extract_outputs(net, train, stats="class-batch", progress=False)
    return out, source


def part_partitions(quick: bool, threads: int, log) -> dict:
    from replay_lcmat.selection import make_selector
    from replay_lcmat.selection.distances import GradientDistances
    from replay_lcmat.submodular import FacilityLocation

    torch.set_num_threads(threads)
    out, source = real_outputs(quick, threads, log)
    classes = sorted(set(out.labels.tolist()))[: 2 if quick else 3]
    rows = []
    for label in classes:
        keep = out.labels == label
        h, z, y = out.features[keep], out.logits[keep], out.labels[keep]
        budget = max(10, math.floor(FRACTION * len(y) + 0.5))  # 1%, at least 10 picks
        d = GradientDistances(h, z, y, eps=0.01, k_dims=100).dense()
        fn = FacilityLocation(d.max() - d)
        timed = {}
        for p in (1, *PARTITIONS):
            t0 = time.perf_counter()
            picks = make_selector("lcmat-s", partitions=p).select(
                features=h, logits=z, labels=y, per_class=budget
            )
            timed[p] = (time.perf_counter() - t0, picks.indices)
        exact_value = fn.evaluate(timed[1][1])
        exact_cost = float(d[timed[1][1]].min(0).values.sum())
        for p in PARTITIONS:
            seconds, idx = timed[p]
            rows.append(
                {
                    "class": label,
                    "n": len(y),
                    "budget": budget,
                    "p": p,
                    "objective ratio": round(fn.evaluate(idx) / exact_value, 5),
                    "cost ratio (sum of min d)": round(
                        float(d[idx].min(0).values.sum()) / exact_cost, 4
                    ),
                    "same picks": bool(torch.equal(idx, timed[1][1])),
                    "seconds": round(seconds, 2),
                    "exact seconds": round(timed[1][0], 2),
                }
            )
            log(f"partitions: {rows[-1]}")
    return {"rows": rows, "source": source}


# ------------------------------------------------------------------------------- processes
def part_processes(quick: bool, threads: int, log) -> dict:
    try:
        from .distributed_speed import measure
    except ImportError as err:
        log(f"processes: skipped: not available ({err})")
        return {"skipped": f"skipped: not available ({err})"}
    rows = []
    for processes in (1, 2):
        try:
            rows.append(
                measure(
                    processes,
                    per_class=50 if not quick else 5,
                    threads=threads,
                    limit_per_class=100 if quick else None,
                )
            )
        except (FileNotFoundError, RuntimeError, TimeoutError) as err:
            log(f"processes: skipped: {err}")
            return {"skipped": f"skipped: {err}", "rows": rows}
        log(f"processes: {rows[-1]}")
    return {"rows": rows}


# ------------------------------------------------------------------------------- projection
def part_projection(threads: int, timeout: float | None, log) -> dict:
    """ImageNet-1k from one measured class of 1,281 samples (d = 512, c = 1,000, 1% budget)."""
    n = IMAGENET_IMAGES // IMAGENET_CLASSES
    spec = {"n": n, "method": "lcmat-s", "similarity": "auto", "threads": threads}
    got = run_point(dict(spec, c=1000), timeout)
    if "error" in got:
        return {"skipped": got["error"]}
    per_class = got["seconds"]
    rows = []
    for gpus in GPUS:
        extract = IMAGENET_IMAGES / (EXTRACT_IMAGES_PER_S_PER_GPU * gpus)
        select = math.ceil(IMAGENET_CLASSES / gpus) * per_class
        rows.append(
            {
                "GPUs": gpus,
                "extraction s (assumed rate)": round(extract),
                "selection s (measured per class x classes per rank)": round(select),
                "total s": round(extract + select),
                "total h": round((extract + select) / 3600, 2),
            }
        )
    log(f"projection: per class {per_class:.2f} s; {rows}")
    return {
        "per_class_seconds": per_class,
        "per_class_peak_rss_mib": got["peak_rss_mib"],
        "rows": rows,
    }


# ------------------------------------------------------------------------------- report
def report(results: dict, args, command: str) -> list[str]:
    lines = [
        "# Scaling out selection",
        "",
        command_markdown(command, "repository root"),
        "",
        f"What else was running (--note): {args.note or 'not stated'}",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} torch thread(s) per process.",
    ]
    if "streamed" in results:
        r = results["streamed"]
        lines += [
            "",
            "## Dense vs streamed similarity (LCMat-S, one class, d=512, c=10, float32, 1%)",
            "",
            "Peak RSS: the child process's resident high-water mark (VmHWM: torch, inputs and "
            "everything else it held); RSS before: resident memory just before `select`.",
            "",
            markdown_table(
                [{k: v for k, v in row.items() if k != "first_picks"} for row in r["rows"]]
            ),
            "",
            f"Streamed time growth exponent (log-log slope over the sizes run): "
            f"{r['streamed_exponent'] if r['streamed_exponent'] is None else round(r['streamed_exponent'], 2)}",
            f"Dense and streamed first picks equal where both ran: {r['same_first_picks']}",
            "",
            *streamed_targets(r["rows"]),
        ]
    if "partitions" in results:
        r = results["partitions"]
        lines += [
            "",
            "## Partitioned greedy (GreeDi, approximate) vs exact",
            "",
            f"Features: {r['source']}. Objective F(S) = sum_i max_j (C - d_ij) with C = max d "
            "(it includes n C, so ratios sit near 1); cost ratio: sum_i min_{j in S} d_ij of "
            "the partitioned picks over that of the exact ones (1 = as good, above = worse).",
            "",
            markdown_table(r["rows"]),
        ]
    if "processes" in results:
        r = results["processes"]
        lines += ["", "## 1 vs 2 processes (gloo)", ""]
        rounded = [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
            for row in r.get("rows", [])
        ]
        lines += [r["skipped"]] if "skipped" in r else [markdown_table(rounded)]
    if "projection" in results:
        r = results["projection"]
        lines += ["", "## PROJECTION: ImageNet-1k (1.28M images, 1,000 classes)", ""]
        if "skipped" in r:
            lines.append(f"skipped: {r['skipped']}")
        else:
            lines += [
                "PROJECTION, not a measurement. Selection: one class of 1,281 samples "
                f"(d=512, c=1000, 1% budget) measured here on the CPU: "
                f"{r['per_class_seconds']:.2f} s, classes sharded over the ranks (each GPU "
                "would likely be faster than this CPU). Extraction: an ASSUMED "
                f"{EXTRACT_IMAGES_PER_S_PER_GPU} images/s per GPU (ResNet-18 forward at 224 px), "
                "data-parallel. Pretraining the selection model is not included.",
                "",
                markdown_table(r["rows"]),
            ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--part",
        nargs="+",
        choices=("streamed", "partitions", "processes", "projection", "all"),
        default=["all"],
    )
    parser.add_argument("--quick", action="store_true", help="n up to 5,000; a check only")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="class sizes of part 1")
    parser.add_argument(
        "--stochastic-sizes",
        type=int,
        nargs="*",
        default=[],
        help="class sizes where part 1 also runs the stochastic greedy (and the exact one again, "
        "for the cost ratio)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--point-timeout", type=float, default=None, help="seconds per point")
    parser.add_argument("--note", default="", help="what else was running on the machine")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--name", default=None, help="results file stem (default: scaling, or scaling_quick)"
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    command = command_line("scaling", argv)
    parts = (
        {"streamed", "partitions", "processes", "projection"}
        if "all" in args.part
        else set(args.part)
    )
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    results = {}
    if "streamed" in parts:
        results["streamed"] = part_streamed(
            sizes, args.threads, args.point_timeout, log, args.stochastic_sizes
        )
    if "partitions" in parts:
        results["partitions"] = part_partitions(args.quick, args.threads, log)
    if "processes" in parts:
        results["processes"] = part_processes(args.quick, args.threads, log)
    if "projection" in parts:
        results["projection"] = part_projection(args.threads, args.point_timeout, log)
    stem = args.name or ("scaling_quick" if args.quick else "scaling")
    lines = report(results, args, command)
    lines.append(f"\nTotal wall time: {time.perf_counter() - started:.0f} s.")
    write_markdown(args.out_dir / f"{stem}.md", lines)
    payload = {"command": command, "note": args.note, "results": results}
    (args.out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
