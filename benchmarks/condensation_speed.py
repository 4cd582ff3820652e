"""Time of one outer iteration of DC, DSA, DM and LCMat-C, next to the reference code.

Run from the repository root (every measurement in its own subprocess, ours and the reference
alternated, medians of ``--repeats``; CPU time of the process, ``time.process_time``, which a
loaded machine inflates less than wall time; one torch thread by default):

    python -m benchmarks.condensation_speed                # writes benchmarks/results/
    python -m benchmarks.condensation_speed --reference /path/to/DatasetCondensation
    python -m benchmarks.condensation_speed --quick        # tiny sizes, prints only

Setting: CIFAR-10 shape (10 classes of 3x32x32; the JPEG archive of
$REPLAY_LCMAT_CIFAR10_ARCHIVE through the project's loader when set, else random tensors of that
shape, 5,000 per class), ConvNet-3 (width 128, instance norm, average pooling), 10 images per
class, real batch 256 per class, DSA strategy color_crop_cutout_flip_scale_rotate, CPU.

One outer iteration is one call of ``Condenser._step``: for DC/DSA/LCMat-C a fresh network,
then ``outer_loop`` = 10 times (matching over every class, one update of the synthetic
images), with ``inner_loop`` = 50 network updates between consecutive matchings (none after the
last one, as in the reference loop); for DM a fresh frozen network and one update of the
images. The parts are exclusive times: network training (the inner-loop updates; on real data
for LCMat-C, on the synthetic set for DC/DSA, as the reference does), augmentation (DSA draws
and transforms, in matching and in training), other (building the fresh network) and matching
(the rest: forward and backward passes of the class batches, the distance and the image step).

``--reference DIR`` runs ``DIR/../harness.py`` (kept outside this repository with the copy
DIR of VICO-UoE/DatasetCondensation; its patches are listed in the results) as
``harness.py --root DIR --script main|main_DM [--method DC|DSA] --threads N --ipc I
--per-class P --data random|archive``; it prints one JSON line ``{"seconds", "parts"}`` with the
same parts for one iteration of the reference loop. Without it, and always as a column, the
table gives the operation count: images forwarded per outer iteration, the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import _common as common
from .greedy_speed import machine_state

METHODS = ("dc", "dsa", "dm", "lcmat-c")
REFERENCE_RUN = {  # method -> (script, --method) of the reference code
    "dc": ("main", "DC"),
    "dsa": ("main", "DSA"),
    "dm": ("main_DM", None),
}
PARTS = ("network training", "matching", "augmentation", "other")
FULL = {"per_class_n": 5000, "ipc": 10, "batch_real": 256, "width": 128, "loops": None}
QUICK = {"per_class_n": 24, "ipc": 2, "batch_real": 8, "width": 8, "loops": (2, 2)}


# ----------------------------------------------------------------------------- counts
def forward_images(method: str, sizes: dict, classes: int = 10, batch_train: int = 256) -> int:
    """Images through the network's first layer in one outer iteration (same for the reference
    code at the same settings): see :func:`forward_split`."""
    return sum(forward_split(method, sizes, classes, batch_train))


def forward_split(
    method: str, sizes: dict, classes: int = 10, batch_train: int = 256
) -> tuple[int, int]:
    """``(matching, training)`` images forwarded in one outer iteration: the real and synthetic
    class batches of every matching step; the inner-loop batches (the synthetic set for DC/DSA,
    ``batch_train`` real images for LCMat-C; none for DM)."""
    from replay_lcmat.condensation import default_loops

    real = min(sizes["batch_real"], sizes["per_class_n"])
    matching = classes * (real + sizes["ipc"])
    if method == "dm":
        return matching, 0
    outer, inner = sizes["loops"] or default_loops(sizes["ipc"])
    pool = classes * (sizes["per_class_n"] if method == "lcmat-c" else sizes["ipc"])
    return outer * matching, (outer - 1) * inner * min(batch_train, pool)


# ----------------------------------------------------------------------------- worker
class Clock:
    """Exclusive CPU time per named part: a part's time excludes the parts called within it."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._stack: list[float] = []

    def wrap(self, owner: type, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            self._stack.append(0.0)
            try:
                return inner(*args, **kwargs)
            finally:
                child = self._stack.pop()
                elapsed = time.process_time() - start
                self.spent[part] = self.spent.get(part, 0.0) + elapsed - child
                if self._stack:
                    self._stack[-1] += elapsed

        setattr(owner, name, timed)


def load_data(per_class_n: int, quick: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """CIFAR-10 train images (normalised) if the archive is set and not ``quick``, else random
    tensors of CIFAR-10's shape, ``per_class_n`` per class."""
    from replay_lcmat.data import load_dataset, shared_cifar10_archive

    archive = None if quick else shared_cifar10_archive()
    if archive is not None:
        train, _ = load_dataset(archive, progress=False)
        return train.normalized(), train.labels, f"CIFAR-10 train set ({archive.name})"
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(per_class_n)
    images = torch.randn(len(labels), 3, 32, 32, generator=gen)
    return images, labels, f"random tensors, 10 x {per_class_n} of 3x32x32"


def worker(spec: dict) -> dict:
    """One outer iteration of our ``spec["method"]``: total, parts and images forwarded."""
    torch.set_num_threads(spec["threads"])
    from replay_lcmat.condensation import DSA, GradientMatchingCondenser, make_condenser
    from replay_lcmat.condensation.base import Task

    sizes = spec["sizes"]
    images, labels, data = load_data(sizes["per_class_n"], spec["quick"])
    options = {"network_options": {"width": sizes["width"]}, "batch_real": sizes["batch_real"]}
    if spec["method"] != "dm" and sizes["loops"]:
        options["outer_loop"], options["inner_loop"] = sizes["loops"]
    condenser = make_condenser(spec["method"], iterations=1, progress=False, **options)
    clock, seen = Clock(), {"images": 0}
    new_network = Task.new_network

    def counted_network(task):
        parts = new_network(task)
        first = next(m for m in parts[0].modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_pre_hook(
            lambda _, args: seen.__setitem__("images", seen["images"] + len(args[0]))
        )
        return parts

    Task.new_network = counted_network
    clock.wrap(Task, "new_network", "other")
    clock.wrap(GradientMatchingCondenser, "_train_network", "network training")
    clock.wrap(DSA, "sample", "augmentation")
    clock.wrap(DSA, "apply", "augmentation")
    clock.wrap(type(condenser), "_step", "step")
    condenser.condense(images, labels, per_class=sizes["ipc"])
    total = clock.spent.pop("step") + sum(clock.spent.values())
    parts = {p: clock.spent.get(p, 0.0) for p in ("network training", "augmentation", "other")}
    parts["matching"] = total - sum(parts.values())
    return {"seconds": total, "parts": parts, "images": seen["images"], "data": data}


def _run(cmd: list[str], env: dict | None = None) -> dict:
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], env=env
    )
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.condensation_speed", "--worker", json.dumps(spec)]
    return _run(cmd)


def measure_reference(reference: Path, method: str, args, sizes: dict, data: str) -> dict:
    script, name = REFERENCE_RUN[method]
    cmd = [sys.executable, str(reference.parent / "harness.py"), "--root", str(reference)]
    cmd += ["--script", script, "--threads", str(args.threads), "--ipc", str(sizes["ipc"])]
    cmd += ["--per-class", str(sizes["per_class_n"])]
    cmd += ["--data", "archive" if data.startswith("CIFAR-10") else "random"]
    cmd += ["--method", name] if name else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    return _run(cmd, env)


def _median(runs: list[dict]) -> dict:
    """Medians of the total and of each part; the first error, if any run failed."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"error": errors[0]}
    out = {"seconds": statistics.median(r["seconds"] for r in runs)}
    out.update(
        {p: statistics.median(r["parts"].get(p, 0.0) for r in runs) for p in PARTS if p != "other"}
    )
    out["other"] = statistics.median(
        r["parts"].get("other", r["parts"].get("network init", 0.0)) for r in runs
    )
    for key in ("images", "data"):
        if key in runs[0]:
            out[key] = runs[0][key]
    return out


def _row(method: str, impl: str, m: dict, sizes: dict) -> dict:
    """A table row; "images forwarded" is counted by a hook for ours, the formula otherwise."""
    row = {"method": method, "implementation": impl}
    if "error" in m:
        return dict(row, note=m["error"])
    row["outer iteration s"] = f"{m['seconds']:.2f}"
    row.update({f"{p} s": f"{m[p]:.2f}" for p in PARTS})
    row["images forwarded"] = m.get("images", forward_images(method, sizes))
    row["of which matching / training"] = " / ".join(map(str, forward_split(method, sizes)))
    return row


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per measurement")
    parser.add_argument("--reference", type=Path, default=None, help="a DatasetCondensation copy")
    parser.add_argument("--ipc", type=int, default=None, help="images per class (default 10)")
    parser.add_argument("--per-class", type=int, default=None, help="random images per class")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: benchmarks/results")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.reference is not None and not (args.reference.parent / "harness.py").is_file():
        raise SystemExit(f"--reference: no harness.py next to {args.reference}; see the docstring.")
    sizes = dict(QUICK if args.quick else FULL)
    if args.ipc is not None:  # the reference's get_loops knows ipc 1, 10, 20, 30, 40, 50
        sizes["ipc"] = args.ipc
    if args.per_class is not None:
        sizes["per_class_n"] = args.per_class
    command = common.command_line("condensation_speed", argv)
    before = machine_state()
    rows, ours = [], {}
    for method in args.methods:
        spec = {"method": method, "threads": args.threads, "quick": args.quick, "sizes": sizes}
        with_reference = args.reference is not None and method in REFERENCE_RUN and not args.quick
        runs, ref_runs = [], []
        for _ in range(args.repeats):  # alternated, so that a change of load hits both alike
            runs.append(measure(spec))
            if with_reference:
                data = runs[-1].get("data", "random")
                ref_runs.append(measure_reference(args.reference, method, args, sizes, data))
        ours[method] = _median(runs)
        expected = forward_images(method, sizes)
        rows.append(_row(method, "replay-lcmat", ours[method], sizes))
        if "error" not in ours[method] and ours[method]["images"] != expected:
            rows[-1]["note"] = f"expected {expected} images forwarded"
        print(rows[-1], flush=True)
        if with_reference:
            ref = _median(ref_runs)
            rows.append(_row(method, "reference", ref, sizes))
            if "error" not in ref and "error" not in ours[method]:
                rows[-1]["ours / reference"] = f"{ours[method]['seconds'] / ref['seconds']:.2f}"
            print(rows[-1], flush=True)
    after = machine_state()
    if args.quick and args.out_dir is None:
        return 0
    write_results(rows, ours, args, command, sizes, (before, after))
    return 0


def write_results(rows, ours, args, command, sizes, states) -> None:
    data = next((m["data"] for m in ours.values() if "data" in m), "-")
    from replay_lcmat.condensation import default_loops

    loops = sizes["loops"] or f"{default_loops(sizes['ipc'])} (the reference's get_loops)"
    images = forward_images("lcmat-c", sizes) / forward_images("dsa", sizes)
    ratio = (
        f"Images forwarded, LCMat-C / DSA: {images:.2f} by the loops alone (LCMat-C trains its "
        "network on real batches of batch_train images, Eq. 15; DSA on the synthetic set)."
    )
    if all(m in ours and "error" not in ours[m] for m in ("lcmat-c", "dsa")):
        seconds = ours["lcmat-c"]["seconds"] / ours["dsa"]["seconds"]
        ratio = f"LCMat-C / DSA outer iteration: {seconds:.2f}. " + ratio
    reference = (
        "Reference: VICO-UoE/DatasetCondensation 53f63a6 run by the harness next to the copy "
        f"({args.reference}); the copy's only edits replace `x[:] = x[0]` by "
        "`x[:] = x[0].clone()` in the Siamese branches of utils.py's DiffAugment functions "
        "(torch >= 2 refuses that overlapping in-place copy; same values). The harness replaces "
        "get_dataset (same data as ours), save_image and torch.save (no files) from outside and "
        "runs `--Iteration 0 --eval_mode M --num_eval 0 --num_exp 1` (one training iteration, no "
        "evaluation); it times from the network of that iteration to its final save."
        if args.reference is not None
        else "Reference code not run (pass --reference): the images-forwarded column is the "
        "operation count, the same in the reference's loops at these settings."
    )
    lines = [
        "# Condensation speed: one outer iteration, replay-lcmat vs. the reference code",
        "",
        common.command_markdown(command, "repository root"),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, CPU seconds (process time), medians of {args.repeats} "
        f"subprocesses. Data: {data}.",
        f"Settings: ConvNet-3 width {sizes['width']}, ipc {sizes['ipc']}, real batch "
        f"{sizes['batch_real']} per class, loops {loops}, "
        "batch_train 256, DSA color_crop_cutout_flip_scale_rotate (DC: none), DM: one image "
        "step per iteration on a fresh frozen network.",
        (__doc__ or "").split("\n\n")[4].replace("\n", " "),
        reference,
        "",
        common.markdown_table(rows),
        "",
        ratio,
        "",
        "Machine state (what else ran):",
        "",
    ]
    for when, state in zip(("before", "after"), states, strict=True):
        lines.append(
            f"- {when}: {state['utc']} UTC, load average {state['load average (1, 5, 15 min)']}"
        )
        lines += [f"  - `{p}`" for p in state["busiest processes"][1:4]]
    out = args.out_dir or common.RESULTS
    stem = "condensation_speed" + (f"_threads{args.threads}" if args.threads != 1 else "")
    stem += "_quick" if args.quick else ""
    common.write_markdown(out / f"{stem}.md", lines)
    common.write_csv(out / f"{stem}.csv", rows)
    print(f"written {out / stem}.md and .csv")


if __name__ == "__main__":
    raise SystemExit(main())
