"""Speed and peak memory of ``lcmat_s`` against a straightforward materialising implementation.

Run from the repository root (each measurement runs in its own subprocess, so peak memory is
the extra resident memory of that computation alone; one torch thread by default):

    python -m benchmarks.selection_speed            # full run, writes benchmarks/results/
    python -m benchmarks.selection_speed --quick    # small sizes, prints only
    python -m benchmarks.selection_speed --task     # the CIFAR-10-shaped task alone (< 1 min)

Cases: a CIFAR-10-sized class (n = 5,000, c = 10, d = 512) and a CIFAR-100-sized task
(100 classes x 500, d = 512), synthetic post-ReLU features with class structure and the logits
of a nearest-mean head. Also closed-form curvature vs. BackPACK on the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from ._common import (
    RESULTS,
    command_line,
    command_markdown,
    markdown_table,
    write_csv,
    write_markdown,
)


# ----------------------------------------------------------------------------- inputs
def make_inputs(n_classes: int, per_class: int, d: int, one_class: bool = False, seed: int = 0):
    """Post-ReLU features around class means, logits of a nearest-mean head, labels.

    ``one_class``: only the samples of class 0 are returned (logits still over n_classes).
    """
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, d, generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    features = (means[labels] + 1.5 * torch.randn(len(labels), d, generator=gen)).relu()
    centers = torch.stack([features[labels == c].mean(0) for c in range(n_classes)])
    if one_class:
        features, labels = features[labels == 0], labels[labels == 0]
    logits = (features @ centers.T - 0.5 * centers.square().sum(1)) / d**0.5
    return features, logits, labels


# ----------------------------------------------------------------------------- comparison
# STRAIGHTFORWARD IMPLEMENTATION (comparison only): materialises the per-sample gradients and
# diagonal Hessians [n, c(d+1)], the [n, n, K] array of L1 differences, and runs naive greedy
# (every gain recomputed at every step). Same mathematics as replay_lcmat.selection.lcmat_s.
def straightforward_lcmat(features, logits, labels, per_class, eps, k_dims, blocked):
    from replay_lcmat.curvature import last_layer_diag_hessians, last_layer_grads

    picks = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        h, z, y = features[idx], logits[idx], labels[idx]
        grads = last_layer_grads(h, z, y)
        hess = last_layer_diag_hessians(h, z)
        top = torch.sort(hess.var(0, unbiased=False), descending=True, stable=True).indices
        lam = hess[:, top[:k_dims]]
        dist = torch.cdist(grads, grads)
        if blocked:  # not enough free memory for the whole [n, n, K] array: row blocks of it
            l1 = torch.cat(
                [
                    (lam[s : s + 500, None] - lam[None]).abs_().sum(2)
                    for s in range(0, len(lam), 500)
                ]
            )
        else:
            l1 = (lam.unsqueeze(1) - lam.unsqueeze(0)).abs_().sum(2)
        dist += eps * l1
        sim = dist.max() - dist
        coverage = torch.zeros(len(idx))
        chosen = []
        for _ in range(per_class):
            gains = (sim - coverage).clamp(min=0).sum(1)
            gains[chosen] = -torch.inf
            j = int(gains.argmax())
            chosen.append(j)
            coverage = torch.maximum(coverage, sim[j])
        picks += idx[chosen].tolist()
    return picks


def run_library(features, logits, labels, per_class, eps, k_dims, blocked):
    from replay_lcmat.selection import lcmat_s

    return lcmat_s(features, logits, labels, per_class, eps=eps, k_dims=k_dims).tolist()


def closed_form_curvature(features, logits, labels):
    from replay_lcmat.curvature import last_layer_diag_hessians, last_layer_grads

    return last_layer_grads(features, logits, labels), last_layer_diag_hessians(features, logits)


def backpack_curvature(features, logits, labels, head):
    from replay_lcmat.curvature import backpack_last_layer_curvature

    return backpack_last_layer_curvature(head, features, labels)


# ----------------------------------------------------------------------------- worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    import replay_lcmat.curvature  # noqa: F401  (imports outside the timed region)
    import replay_lcmat.selection  # noqa: F401

    features, logits, labels = make_inputs(
        spec["classes"], spec["per_class_n"], spec["d"], spec.get("one_class", False)
    )
    if spec.get("float64"):
        features, logits = features.double(), logits.double()
    out = {}
    if spec["impl"] in ("closed-form", "backpack"):
        head = torch.nn.Linear(spec["d"], spec["classes"])
        with torch.no_grad():  # the same head in both subprocesses
            head.weight.copy_(
                torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1))
            )
            head.bias.zero_()
        with torch.no_grad():
            logits = head(features)
        args = (features, logits, labels) + ((head,) if spec["impl"] == "backpack" else ())
        fn = closed_form_curvature if spec["impl"] == "closed-form" else backpack_curvature
    else:
        n_c = spec["per_class_n"]
        need = features.element_size() * n_c * n_c * spec["k_dims"]
        blocked = spec["impl"] == "straightforward" and need > 0.7 * _available_bytes()
        out["note"] = "L1 array in row blocks (not enough free memory)" if blocked else ""
        fn = run_library if spec["impl"] == "lcmat_s" else straightforward_lcmat
        args = (features, logits, labels, spec["budget"], spec["eps"], spec["k_dims"], blocked)
    before = _rss_bytes()
    start = time.perf_counter()
    result = fn(*args)
    out["seconds"] = time.perf_counter() - start
    out["peak_extra_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    if isinstance(result, list):
        out["picks"] = result
    else:
        out["checksum"] = [float(t.double().abs().sum()) for t in result]
    return out


def measure(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.selection_speed", "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing written")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--k-dims", type=int, default=100)
    parser.add_argument(
        "--task", action="store_true", help="only lcmat_s on a CIFAR-10-shaped task (10 x 5,000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per --task timing")
    parser.add_argument("--note", default="not stated", help="what else ran on the machine")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    args.command = command_line("selection_speed", argv)
    if args.task:
        return task_timing(args)
    if args.quick:
        cases = [
            ("class n=500, c=10", 10, 500, 64, [5, 50], True),
            ("task 20 x 50, c=20", 20, 50, 64, [1], False),
        ]
    else:
        cases = [
            ("CIFAR-10 class n=5000, c=10, d=512", 10, 5000, 512, [50, 500], True),
            ("CIFAR-100 task 100 x 500, c=100, d=512", 100, 500, 512, [5, 50], False),
        ]
    rows = []
    common = {"threads": args.threads, "eps": args.eps, "k_dims": args.k_dims}
    for title, classes, n_c, d, budgets, one_class in cases:
        for budget in budgets:
            # a "class" case selects from one class only: the other classes only shape the logits
            spec = dict(
                common, classes=classes, per_class_n=n_c, d=d, budget=budget, one_class=one_class
            )
            res = {impl: measure(dict(spec, impl=impl)) for impl in ("lcmat_s", "straightforward")}
            fast, slow = res["lcmat_s"], res["straightforward"]
            # exact agreement is a float64 property (float32 rounding can flip near-ties)
            res64 = {
                i: measure(dict(spec, impl=i, float64=True)) for i in ("lcmat_s", "straightforward")
            }
            row = {"case": title, "budget per class": budget}
            if "error" in fast or "error" in slow:
                row["note"] = fast.get("error") or slow.get("error")
            else:
                same = fast["picks"] == slow["picks"]
                overlap = len(set(fast["picks"]) & set(slow["picks"])) / len(fast["picks"])
                row.update(
                    {
                        "lcmat_s s": f"{fast['seconds']:.2f}",
                        "straightforward s": f"{slow['seconds']:.2f}",
                        "speed-up": f"{slow['seconds'] / fast['seconds']:.1f}x",
                        "lcmat_s peak MiB": f"{fast['peak_extra_bytes'] / 2**20:.0f}",
                        "straightforward peak MiB": f"{slow['peak_extra_bytes'] / 2**20:.0f}",
                        "identical picks float32": "yes" if same else f"no ({overlap:.0%} shared)",
                        "identical picks float64": _agreement(
                            res64["lcmat_s"], res64["straightforward"]
                        ),
                        "note": slow.get("note", ""),
                    }
                )
            rows.append(row)
            print(row, flush=True)
    n_c, d = (500, 64) if args.quick else (5000, 512)
    curv = {
        impl: measure(dict(common, impl=impl, classes=10, per_class_n=n_c // 10, d=d))
        for impl in ("closed-form", "backpack")
    }
    curvature_row = {
        "batch": f"n={n_c}, c=10, d={d}",
        "closed-form s": f"{curv['closed-form']['seconds']:.3f}",
        "BackPACK s": f"{curv['backpack']['seconds']:.3f}",
        "speed-up": f"{curv['backpack']['seconds'] / curv['closed-form']['seconds']:.1f}x",
        "closed-form peak MiB": f"{curv['closed-form']['peak_extra_bytes'] / 2**20:.0f}",
        "BackPACK peak MiB": f"{curv['backpack']['peak_extra_bytes'] / 2**20:.0f}",
        "same sums": str(
            all(
                abs(a - b) <= 1e-4 * max(1.0, abs(a))
                for a, b in zip(
                    curv["closed-form"]["checksum"], curv["backpack"]["checksum"], strict=True
                )
            )
        ),
    }
    print(curvature_row)
    if args.quick:
        return 0
    write_results(rows, curvature_row, args)
    return 0


def _agreement(a: dict, b: dict) -> str:
    if "error" in a or "error" in b:
        return "error: " + (a.get("error") or b.get("error"))
    if a["picks"] == b["picks"]:
        return "yes"
    return f"no ({len(set(a['picks']) & set(b['picks'])) / len(a['picks']):.0%} shared)"


TASK_TARGET_S = 7.0  # CIFAR-10-shaped LCMat-S from features, 1 thread


def task_timing(args) -> int:
    """``lcmat_s`` alone on 10 classes x 5,000 (d = 512, c = 10, 50 per class: 1%), each
    timing in its own subprocess; the straightforward implementation is left out (it
    materialises a 10 GB [n, n, K] array and runs the naive greedy, minutes per class)."""
    spec = dict(
        impl="lcmat_s",
        threads=args.threads,
        eps=args.eps,
        k_dims=args.k_dims,
        classes=10,
        per_class_n=5000,
        d=512,
        budget=50,
    )
    runs = [measure(spec) for _ in range(args.repeats)]
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        print(errors[0])
        return 1
    seconds = sorted(r["seconds"] for r in runs)
    median = seconds[len(seconds) // 2]
    row = {
        "case": "CIFAR-10-shaped task 10 x 5000, c=10, d=512, 50 per class",
        "threads": args.threads,
        "lcmat_s s (median)": f"{median:.2f}",
        "all runs s": ", ".join(f"{t:.2f}" for t in seconds),
        "peak MiB": f"{max(r['peak_extra_bytes'] for r in runs) / 2**20:.0f}",
        "target": f"<= {TASK_TARGET_S:g} s on 1 thread",
    }
    print(row)
    text = "\n".join(
        [
            "# Selection speed: lcmat_s on a CIFAR-10-shaped task",
            "",
            command_markdown(args.command, "repository root"),
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{args.threads} torch thread(s), torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}. What else ran (--note): {args.note}.",
            f"LCMat-S settings: eps={args.eps}, k_dims={args.k_dims}, offset='max', lazy "
            "greedy, float32 synthetic post-ReLU features with class structure (`make_inputs`).",
            "",
            markdown_table([row]),
            "",
        ]
    )
    stem = "selection_speed_task" + (f"_threads{args.threads}" if args.threads != 1 else "")
    write_markdown(RESULTS / f"{stem}.md", text)
    print(f"written {RESULTS / stem}.md")
    return 0


def write_results(rows, curvature_row, args) -> None:
    header = [
        "# Selection speed: lcmat_s vs. a straightforward materialising implementation",
        "",
        command_markdown(args.command, "repository root"),
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other work while measured), {args.threads} torch thread(s) per "
        f"measurement, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        f"LCMat-S settings: eps={args.eps}, k_dims={args.k_dims}, offset='max', lazy greedy; "
        "timings on float32 inputs; pick agreement also checked on the same inputs in float64. "
        "Peak MiB = extra resident memory of the computation (own subprocess).",
        "The straightforward implementation materialises per-sample gradients and Hessians, the "
        "[n, n, K] L1 array and uses naive greedy (see `straightforward_lcmat` in the script).",
        "",
    ]
    text = (
        "\n".join(header)
        + "\n"
        + markdown_table(rows)
        + "\n\nClosed-form last-layer curvature vs. BackPACK "
        "(gradients + diagonal Hessians, the same batch):\n\n"
        + markdown_table([curvature_row])
        + "\n"
    )
    stem = "selection_speed" + (f"_threads{args.threads}" if args.threads != 1 else "")
    write_markdown(RESULTS / f"{stem}.md", text)
    write_csv(RESULTS / f"{stem}.csv", rows)
    print(f"written {RESULTS / stem}.md and .csv")


if __name__ == "__main__":
    raise SystemExit(main())
