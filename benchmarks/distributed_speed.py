"""Wall time of feature extraction + LCMat-S selection in 1 vs N gloo processes (CIFAR-10).

Run from the repository root (``benchmarks/scaling.py`` calls :func:`measure`); alone:

    python -m benchmarks.distributed_speed --processes 1 2 --per-class 50 --threads 1
    python -m benchmarks.distributed_speed --processes 1 2 --limit-per-class 40   # a quick check

Each measurement spawns ``processes`` CPU processes that join a gloo group (a file store in a
temporary folder), load the training split of the CIFAR-10 archive
(``$REPLAY_LCMAT_CIFAR10_ARCHIVE``, see ``benchmarks/_common.py``), build the same randomly
initialised BatchNorm ConvNet-3 (a trained model costs the same to run), and then, timed from a
barrier to a barrier, extract its outputs with class-batch statistics
(:func:`replay_lcmat.selection.extract_outputs`, batches sharded over the processes) and select
``per_class`` images per class with LCMat-S (classes sharded). ``identical`` says whether the
selection equals the one-process selection, picks and order. ``--threads`` is the host's
threads: each of N processes takes its share (``replay_lcmat.distributed.split_threads``, the
library's default under torchrun), so 2 processes with ``--threads 2`` run 1 thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from replay_lcmat.distributed import split_threads

from ._common import cifar10_archive

TIMEOUT_S = 3600.0
_REFERENCES: dict[tuple, torch.Tensor] = {}  # one-process selections, by setting


def _setting(per_class: int, limit_per_class: int | None, width: int, seed: int) -> tuple:
    return (per_class, limit_per_class, width, seed)


def _worker(rank: int, processes: int, store: str, out: str, spec: dict) -> None:
    """One process: join the group, load the data, time extraction + selection."""
    from replay_lcmat.data import load_dataset
    from replay_lcmat.models import make_model
    from replay_lcmat.seeding import seeded
    from replay_lcmat.selection import extract_outputs, make_selector

    torch.set_num_threads(spec["threads"])  # the host's threads, as one process would use
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=processes,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    os.environ["LOCAL_WORLD_SIZE"] = str(processes)  # what torchrun sets: all ranks on one host
    threads = split_threads()  # the library's default share, as init_from_env applies it
    try:
        train, _ = load_dataset(spec["archive"], progress=False)
        if spec["limit_per_class"] is not None:
            keep = [
                torch.nonzero(train.labels == c).flatten()[: spec["limit_per_class"]]
                for c in train.labels.unique().tolist()
            ]
            train = train.subset(torch.cat(keep).sort().values)
        channels, size, _ = train.shape
        with seeded(spec["seed"]):
            model = make_model(
                "convnet",
                in_channels=channels,
                num_classes=train.num_classes,
                image_size=size,
                width=spec["width"],
                norm="batch",
            )
        selector = make_selector("lcmat-s")
        dist.barrier()
        start = time.perf_counter()
        outputs = extract_outputs(model, train, stats="class-batch")
        extracted = time.perf_counter()
        result = selector.select(
            features=outputs.features,
            logits=outputs.logits,
            labels=outputs.labels,
            per_class=spec["per_class"],
        )
        dist.barrier()
        end = time.perf_counter()
        if rank == 0:
            record = {
                "wall_s": end - start,
                "extract_s": extracted - start,
                "select_s": end - extracted,
                "threads_per_process": threads,
                # torch's threads once selection is over: the share must survive the compiled
                # kernels (their thread pool once reset it to all cores)
                "threads_after": torch.get_num_threads(),
                "n": len(train),
                "indices": result.indices,
            }
            torch.save(record, Path(out) / "result.pt")
    finally:
        dist.destroy_process_group()


def _run(processes: int, spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="distributed_speed_") as folder:
        context = mp.start_processes(
            _worker,
            args=(processes, str(Path(folder) / "store"), folder, spec),
            nprocs=processes,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    raise TimeoutError(f"{processes} processes did not finish in {TIMEOUT_S:.0f} s")
        except mp.ProcessException as err:  # a worker failed: its traceback is in the message
            raise RuntimeError(f"a benchmark process failed: {err}") from err
        return torch.load(Path(folder) / "result.pt", weights_only=False)


def measure(
    processes: int,
    *,
    per_class: int,
    threads: int,
    limit_per_class: int | None = None,
    width: int = 128,
    seed: int = 0,
) -> dict:
    """Extraction + LCMat-S selection on CIFAR-10 in ``processes`` gloo processes.

    Args:
        processes: number of processes (1: no sharding, the reference).
        per_class: LCMat-S budget per class.
        threads: the host's torch threads, split evenly over the processes.
        limit_per_class: keep only the first this many training images of each class (a quick
            check); ``None``: all 5,000.
        width: ConvNet-3 channels; seed: its initialisation.

    Returns:
        ``{"processes", "threads", "threads_per_process", "threads_after", "n", "per_class",
        "wall_s", "extract_s", "select_s", "identical"}``: seconds from a barrier before
        extraction to a barrier after selection (data loading excluded), rank 0's torch threads
        after selection (``threads_after``: should equal ``threads_per_process``), and whether
        the selection equals the one-process selection (indices and order; the one-process run is
        made once per setting, untimed, if not measured before).
    """
    if processes < 1 or threads < 1 or per_class < 1:
        raise ValueError(
            f"processes, threads and per_class must be >= 1; got {processes}, {threads}, "
            f"{per_class}."
        )
    spec = {
        "archive": str(cifar10_archive("the distributed speed benchmark")),
        "per_class": per_class,
        "threads": threads,
        "limit_per_class": limit_per_class,
        "width": width,
        "seed": seed,
    }
    key = _setting(per_class, limit_per_class, width, seed)
    record = _run(processes, spec)
    if processes == 1:
        _REFERENCES[key] = record["indices"]
    elif key not in _REFERENCES:
        _REFERENCES[key] = _run(1, spec)["indices"]
    return {
        "processes": processes,
        "threads": threads,
        "threads_per_process": record["threads_per_process"],
        "threads_after": record["threads_after"],
        "n": record["n"],
        "per_class": per_class,
        "wall_s": record["wall_s"],
        "extract_s": record["extract_s"],
        "select_s": record["select_s"],
        "identical": bool(torch.equal(record["indices"], _REFERENCES[key])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, default=1, help="the host's torch threads, split over the processes"
    )
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args(argv)
    for processes in args.processes:
        row = measure(
            processes,
            per_class=args.per_class,
            threads=args.threads,
            limit_per_class=args.limit_per_class,
            width=args.width,
        )
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
