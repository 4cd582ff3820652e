"""One GPU, at most eight minutes: the LCMat paper's numbers that need one, in one command.

From the repository root, with the CIFAR-10 JPEG archive copied into the git-ignored
``local_data/`` (README, "One GPU, eight minutes"):

    PYTHONPATH=. python3 -m benchmarks.gpu_suite --data local_data/cifar10-jpeg.tar.gz --out-dir DIR
    python -m benchmarks.gpu_suite --smoke --device cpu --out-dir /tmp/smoke   # seconds, any CPU

In this order, each result printed and written (``<name>.md``, CSVs, subsets) as soon as it is
there:

1. **Table 1, CIFAR-10 at 1%** (paper Table 1): the CIFAR ResNet-18 trained 10 epochs
   on the 50,000 training images without augmentation (as the reference code), its class-batch
   outputs (BatchNorm over batches of one class), then uniform, herding, Craig, LCMat-S (eps
   0.01, facility location, Eq. 12) and LCMat-S with the bound objective (Eq. 7, unweighted
   subset); a fresh ResNet-18 trained on each subset with the paper's recipe (200 epochs, SGD lr
   0.1, momentum 0.9, wd 5e-4, batch 128, cosine, crop + flip), final-epoch test accuracy on the
   10,000 test images; seeds 0, 1, 2, seed after seed.
2. **Selection speed on the device** (paper Table D.2): LCMat-S at 1% and 10% of
   CIFAR-10 from the extracted outputs, beside the paper's times; one synthetic class of 100,000
   samples (d 512, c 10) at 1%, in a subprocess bounded by the time left.
3. **Continual protocol** (paper Fig. 5) on the full CIFAR-10: 5 experiences of 2
   classes, 20 images per class, ConvNet-3 of width 128, uniform, herding and LCMat-S
   (:func:`replay_lcmat.continual.memory_only_run` with the ``paper`` preset of
   ``benchmarks.continual``, one evaluation per seed), as many seeds as fit.
4. **Table 1 at 5%** with the time that remains (the optional column, run last so that it never
   takes time from parts 1 to 3).

Precision: training and evaluation in bfloat16 autocast with channels-last ResNet-18 and
``cudnn.benchmark``; everything selection reads (the selection model's outputs) and computes in
float32 (float64 where the library uses it) with autocast and TF32 off (:func:`exact_float32`).
The continual protocol runs wholly in float32 with TF32 off, because its selection happens inside
the protocol call. Data: the archive is decoded once into uint8 tensors on the device.

Time: a plan of estimates (:data:`FULL`) is printed first; every step is started only when its
estimate fits before its deadline (later parts keep a reserve), every log line shows the seconds
used and left, and an alarm stops the suite before ``--max-minutes`` (counted from the start of
the process), after which what it has is written and it exits with status 0. Status 1: a part
failed (the others still ran; the error is in the report).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from replay_lcmat.continual import memory_only_run
from replay_lcmat.data import ImageData, RandomCropFlip, load_dataset, shared_cifar10_archive
from replay_lcmat.data.folder import CIFAR10_ARCHIVE_VARIABLE
from replay_lcmat.models import make_model
from replay_lcmat.reporting import results_markdown
from replay_lcmat.seeding import seeded
from replay_lcmat.selection import (
    SelectionModelConfig,
    class_budgets,
    extract_outputs,
    make_selector,
)
from replay_lcmat.selection.base import SELECTORS, ClassInputs
from replay_lcmat.specs import parse_policy
from replay_lcmat.training import TrainConfig, evaluate, train

from ._common import (
    REPO,
    RESULTS,
    add_device_argument,
    command_line,
    command_markdown,
    markdown_table,
    write_csv,
    write_markdown,
)
from .continual import PRESETS as CONTINUAL_PRESETS
from .continual import last_experience_table

EPS = 0.01  # eps (½ρ) of the paper's CIFAR runs (spec section 3)
LCMAT = f"lcmat-s[eps={EPS}]"
LCMAT_BOUND = f"lcmat-s[eps={EPS},objective=bound]"
METHODS = ("uniform", "herding", "craig", LCMAT, LCMAT_BOUND)
# Table 1 (ResNet-18, CIFAR-10), the values our copy of the paper's table has (spec section 5).
TABLE1_PAPER = {"uniform": {0.01: 36.47, 0.05: 64.21}, LCMAT: {0.01: 39.54, 0.05: 64.72}}
# Table D.2: LCMat-S selection time on CIFAR-10 on the paper's GPU, about (seconds).
TABLE_D2_SECONDS = {0.01: 430, 0.1: 1200}
CONTINUAL_POLICIES = ("uniform", "herding", "lcmat-s")
ALARM_MARGIN_S = 10.0  # the alarm rings this long before --max-minutes: time to write and exit
PARTS = ("table1", "speed", "continual", "table1-5pct")
STATUS_ROWS = ("data", "selection model", *PARTS)

PLAN_STEPS = {
    "start": "start-up: imports, CUDA, decoding the archive (60,000 JPEGs, one core) into uint8 "
    "tensors on the GPU",
    "pretrain": "Table 1: selection model, ResNet-18 10 epochs on 50,000 images (3,910 steps, "
    "bf16)",
    "select": "Table 1: class-batch outputs of the 50,000 images (float32) and 5 selections at 1%",
    "table1": "Table 1 at 1%: 5 methods x 3 seeds, a fresh ResNet-18 200 epochs on 500 images "
    "(800 steps each)",
    "speed": "selection speed: LCMat-S at 1% and 10% of CIFAR-10; a 100,000-sample class in a "
    "subprocess",
    "continual": "continual protocol: one seed (about 90 s: 5 selection models, 15 memory "
    "retrainings of 1000 epochs with DSA), more while they fit",
    "table1-5pct": "Table 1 at 5%: as many runs (about 25 s each) as the time left allows",
    "exit": "margin: last writes and exit",
}


@dataclass(frozen=True)
class Settings:
    """The sizes of a suite run (:data:`FULL` on a GPU, :data:`SMOKE` for the test suite)."""

    name: str
    resnet_options: dict
    pretrain_epochs: int
    train_epochs: int
    seeds: tuple[int, ...]
    fraction: float  # Table 1's first column
    late_fraction: float  # run last, with the time left
    speed_fractions: tuple[float, ...]
    big_class: tuple[int, int, int]  # n, d, c of the one large class
    big_fraction: float
    continual_options: dict  # ConvNet-3 options
    continual_per_class: int
    continual_experiences: int
    continual_seeds: tuple[int, ...]
    selection_epochs: int  # the continual protocol's selection model
    selection_lr: float
    retrain: TrainConfig
    plan: dict[str, float]  # estimated seconds per step of PLAN_STEPS
    continual_seed_s: float  # estimate of one continual seed, until one is measured
    batch_size: int = 128
    lr: float = 0.1
    eval_batch: int = 2048


_PAPER_CONTINUAL = CONTINUAL_PRESETS["paper"]

FULL = Settings(
    name="full",
    resnet_options={},
    pretrain_epochs=10,
    train_epochs=200,
    seeds=(0, 1, 2),
    fraction=0.01,
    late_fraction=0.05,
    speed_fractions=(0.01, 0.1),
    big_class=(100_000, 512, 10),
    big_fraction=0.01,
    continual_options=dict(_PAPER_CONTINUAL.model_options),  # ConvNet-3, width 128
    continual_per_class=20,
    continual_experiences=5,
    continual_seeds=(0, 1, 2, 3, 4),
    selection_epochs=_PAPER_CONTINUAL.selection_epochs,
    selection_lr=_PAPER_CONTINUAL.selection_lr,
    retrain=_PAPER_CONTINUAL.retrain,  # 1000 epochs, lr 0.01, batch 256, x0.1 halfway, DSA
    # Estimates for one H100 (not measured yet); they add up to 480 s (8 minutes).
    plan={
        "start": 30,
        "pretrain": 40,
        "select": 15,
        "table1": 75,
        "speed": 65,
        "continual": 180,
        "table1-5pct": 55,
        "exit": 20,
    },
    continual_seed_s=90,
)

SMOKE = Settings(
    name="smoke",
    resnet_options={"width": 4},
    pretrain_epochs=1,
    train_epochs=2,
    seeds=(0, 1),
    fraction=0.01,
    late_fraction=0.05,
    speed_fractions=(0.01, 0.1),
    big_class=(300, 16, 10),
    big_fraction=0.01,
    continual_options={"width": 8},
    continual_per_class=2,
    continual_experiences=5,
    continual_seeds=(0, 1),
    selection_epochs=1,
    selection_lr=_PAPER_CONTINUAL.selection_lr,
    retrain=dataclasses.replace(_PAPER_CONTINUAL.retrain, epochs=2),
    plan={
        "start": 5,
        "pretrain": 2,
        "select": 2,
        "table1": 5,
        "speed": 10,
        "continual": 10,
        "table1-5pct": 5,
        "exit": 5,
    },
    continual_seed_s=5,
    eval_batch=64,
)


# ---------------------------------------------------------------------------------------------
# Time


class OutOfTime(BaseException):
    """The suite's time is up (raised by :meth:`Clock.alarm`). A BaseException, so that no
    ``except Exception`` on the way swallows it."""


def process_start() -> float:
    """``time.monotonic()`` at this process's start (psutil), else now."""
    try:
        import psutil
    except ImportError:  # count from now
        return time.monotonic()
    try:
        age = time.time() - psutil.Process().create_time()
    except (psutil.Error, OSError):  # the process table unreadable: count from now
        age = 0.0
    return time.monotonic() - max(0.0, age)


class Clock:
    """Seconds used since ``started`` (a ``time.monotonic()`` value) against ``limit_s``."""

    def __init__(self, limit_s: float, started: float | None = None) -> None:
        self.limit = float(limit_s)
        self.started = time.monotonic() if started is None else started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.limit - self.elapsed()

    def fits(self, seconds: float, deadline: float) -> bool:
        """Would ``seconds`` more work end by ``deadline`` (seconds since the start)?"""
        return self.elapsed() + seconds <= deadline

    def stamp(self) -> str:
        return f"[{self.elapsed():5.0f} s | {max(0.0, self.left()):4.0f} s left]"

    @contextmanager
    def alarm(self, at: float) -> Iterator[None]:
        """Raise :class:`OutOfTime` in the main thread ``at`` seconds after the start (SIGALRM;
        where there is none, e.g. Windows, nothing rings), and again every second until
        :meth:`disarm` or the end of the block: Python drops an exception raised where a
        finalizer happens to run (the garbage collector), so one ring may go unheard."""
        if not hasattr(signal, "setitimer"):
            yield
            return

        def ring(signum, frame):
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            raise OutOfTime(f"the time limit ({self.limit:.0f} s, less {ALARM_MARGIN_S:.0f} s)")

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, max(at - self.elapsed(), 1e-3))
        try:
            yield
        finally:
            self.disarm()
            signal.signal(signal.SIGALRM, previous)

    def disarm(self) -> None:
        """Stop the alarm's ringing (once its :class:`OutOfTime` has been caught)."""
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of asynchronous CUDA work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Precision


@contextmanager
def exact_float32(device: torch.device | str) -> Iterator[None]:
    """Selection arithmetic as the library defines it: autocast off, TF32 off for matrix
    products and cuDNN convolutions (the previous flags are restored on leaving)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(torch.device(device).type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def mixed_precision(device: torch.device | str):
    """bfloat16 autocast for training and evaluation (bf16 needs no loss scaling)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Data


def write_smoke_archive(
    path: Path, *, classes: int = 10, train: int = 12, test: int = 4, size: int = 16
) -> Path:
    """A small ImageFolder ``.tar.gz`` (``train/<class>/*.png``, ``test/<class>/*.png``) of
    ``size`` x ``size`` RGB images: per class a colour and a stripe direction, plus noise, so
    that models can learn something. Deterministic (seed 0)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.uniform(40, 215, size=(classes, 3))
    grid = np.arange(size)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train), ("test", test)):
            for c in range(classes):
                stripes = np.sin(grid[:, None] * (1 + c % 5) / 3 + grid[None, :] * (c // 5))
                for i in range(count):
                    pixels = (
                        colours[c] + 30 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
                    )
                    buffer = io.BytesIO()
                    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
                    info = tarfile.TarInfo(f"smoke/{split}/class{c}/{i:03d}.png")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
    return path


def load_on_device(source: str | Path, device: torch.device, cache_dir: str | None):
    """``(train, test)`` ImageData whose uint8 images were decoded once and moved to ``device``
    (labels stay on the CPU, as the library's class indexing expects)."""
    train, test = load_dataset(source, cache_dir=cache_dir, progress=False)
    return tuple(dataclasses.replace(d, images=d.images.to(device)) for d in (train, test))


# ---------------------------------------------------------------------------------------------
# The report: everything measured so far, rewritten after every result


@dataclass
class Report:
    args: argparse.Namespace
    settings: Settings
    device_name: str
    status: dict[str, str] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    selection_model: dict = field(default_factory=dict)
    table1: list[dict] = field(default_factory=list)
    select_seconds: dict[tuple[str, float], float] = field(default_factory=dict)
    subsets: dict = field(default_factory=dict)
    speed: list[dict] = field(default_factory=list)
    continual: list[dict] = field(default_factory=list)
    continual_partial: list[str] = field(default_factory=list)  # log of a seed cut short

    def path(self, suffix: str) -> Path:
        return self.args.out_dir / f"{self.args.name}{suffix}"

    def write(self, clock: Clock) -> str:
        """Write ``<name>.md``, ``<name>_table1.csv``, ``<name>_speed.csv``,
        ``<name>_continual.csv`` and ``<name>_subsets.json``; return the markdown."""
        if self.table1:
            write_csv(self.path("_table1.csv"), self.table1)
        if self.speed:
            write_csv(self.path("_speed.csv"), self.speed)
        if self.continual:
            write_csv(self.path("_continual.csv"), self.continual)
        if self.subsets:
            self.path("_subsets.json").write_text(json.dumps(self.subsets))
        text = self.markdown(clock)
        write_markdown(self.path(".md"), text)
        return text

    def markdown(self, clock: Clock) -> str:
        s, args = self.settings, self.args
        lines = [
            f"# GPU suite ({s.name}): Table 1 at 1%, selection speed, continual protocol",
            "",
            command_markdown(args.command, "repository root"),
            "",
            f"Device: {self.device_name}; torch {torch.__version__}; "
            f"{time.strftime('%Y-%m-%d')}; data {Path(str(args.data)).name}; "
            f"{clock.elapsed():.0f} s of the {clock.limit:.0f} s limit used.",
            "",
            "| part | status |",
            "|---|---|",
            *(
                f"| {part} | {_cell(self.status.get(part, 'not started'))} |"
                for part in STATUS_ROWS
            ),
            "",
            "## Time plan and measured time (s)",
            "",
            "| step | estimate | measured |",
            "|---|---|---|",
        ]
        for key, what in PLAN_STEPS.items():
            seconds = self.measured.get(key)
            got = "" if seconds is None else f"{seconds:.0f}"
            lines.append(f"| {what} | {s.plan[key]:.0f} | {got} |")
        lines.append(f"| total | {sum(s.plan.values()):.0f} | {clock.elapsed():.0f} |")
        lines += [
            "",
            "Estimates: planned for one H100 before any run on one; measured: this run.",
            "",
        ]
        if s.name != "full":
            lines += [f"A {s.name} run: tiny sizes; the steps above name the full run's.", ""]
        lines += self._table1_lines() + self._speed_lines() + self._continual_lines()
        return "\n".join(lines)

    def _table1_lines(self) -> list[str]:
        s = self.settings
        if not self.table1 and not self.selection_model:
            return []
        info = self.selection_model
        lines = [
            "## Table 1, CIFAR-10 (paper Table 1)",
            "",
            f"Selection model: ResNet-18{_options_text(s.resnet_options)} trained "
            f"{s.pretrain_epochs} "
            "epochs without augmentation (seed 0), outputs taken with class-batch statistics in "
            f"float32; its test accuracy {info.get('test_accuracy', math.nan):.2%}, training "
            f"accuracy of the outputs {info.get('output_accuracy', math.nan):.2%}. Subsets: a "
            f"fresh ResNet-18 trained {s.train_epochs} epochs (SGD lr {s.lr}, momentum 0.9, wd "
            f"5e-4, batch {s.batch_size}, cosine, crop + flip, bf16 autocast); final-epoch test "
            "accuracy (%), mean ± std over seeds (n).",
            "",
        ]
        fractions = [s.fraction, s.late_fraction]
        header = []
        for f in fractions:
            header += [f"{f:.0%} ours", f"{f:.0%} paper"]
        lines += [
            "| method | " + " | ".join(header) + " | select s |",
            "|---|" + "---|" * (len(header) + 1),
        ]
        for method in METHODS:
            cells = []
            for f in fractions:
                accs = [
                    100 * r["test_accuracy"]
                    for r in self.table1
                    if r["method"] == method and r["fraction"] == f
                ]
                cells.append(_mean_std_text(accs))
                paper = TABLE1_PAPER.get(method, {}).get(f)
                cells.append("" if paper is None else f"{paper:.2f}")
            seconds = self.select_seconds.get((method, s.fraction))
            cells.append("" if seconds is None else f"{seconds:.1f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Paper values: the ones in our copy of Table 1 (uniform and LCMat-S); the bound "
            "objective is this project's. `select s`: the selection at the first fraction on "
            "the device, from the extracted outputs (uniform: its first seed).",
            "",
        ]
        return lines

    def _speed_lines(self) -> list[str]:
        if not self.speed:
            return []
        return [
            "## Selection speed (paper Table D.2)",
            "",
            markdown_table(self.speed),
            "",
            "LCMat-S (eps 0.01, K 100, lazy greedy, `similarity=auto`) on the device, float32 "
            "inputs, TF32 off, timed from the extracted outputs (the extraction's own time is "
            "its row). The paper's times are its reported totals on its own GPU.",
            "",
        ]

    def _continual_lines(self) -> list[str]:
        s = self.settings
        if not self.continual and not self.continual_partial:
            return []
        partial = []
        if self.continual_partial:
            partial = [
                "A seed stopped before its end (no table rows); its log so far:",
                "",
                "```",
                *self.continual_partial,
                "```",
                "",
            ]
        tables = []
        if self.continual:
            tables = [last_experience_table(self.continual), results_markdown(self.continual)]
        return [
            "## Continual protocol (paper Fig. 5), full CIFAR-10",
            "",
            f"{s.continual_experiences} experiences of {10 // s.continual_experiences} classes "
            f"(class order per seed), memory {s.continual_per_class} per class, ConvNet-3"
            f"{_options_text(s.continual_options) or ' (width 128)'}; selection model "
            f"{s.selection_epochs} epochs "
            f"(lr {s.selection_lr}) on each experience, outputs in class-batch statistics; every "
            f"memory retrained from scratch {s.retrain.epochs} epochs (lr {s.retrain.lr}, batch "
            f"{s.retrain.batch_size}, x0.1 halfway, {s.retrain.augment}), one evaluation per seed "
            "(paper 3); float32, TF32 off. Fig. 5 (CIFAR-100, 10 per class) shows LCMat-S above "
            "herding and uniform after every experience; it gives no table to put beside this.",
            "",
            *tables,
            *partial,
        ]


def _cell(text: str) -> str:
    """``text`` on one line, safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "/")


def _options_text(options: dict) -> str:
    return "".join(f", {k} {v}" for k, v in options.items())


def _mean_std_text(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


# ---------------------------------------------------------------------------------------------
# The parts


@dataclass
class Context:
    """What the parts share: settings, device, clock, report, log, the data on the device."""

    settings: Settings
    device: torch.device
    clock: Clock
    report: Report
    log: Callable[[str], None]
    train: ImageData | None = None
    test: ImageData | None = None
    train_x: torch.Tensor | None = None  # normalised, on the device
    train_y: torch.Tensor | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    outputs: tuple | None = None  # (features, logits, labels) on the device
    step_s: float | None = None  # seconds per ResNet-18 training step, measured
    selections: dict = field(default_factory=dict)

    def deadline(self, *reserve: str, extra: float = 0.0) -> float:
        """Seconds since the start by which a step must end, keeping the planned time of the
        steps named in ``reserve`` (and ``extra`` seconds) for later."""
        plan = self.settings.plan
        return self.clock.limit - plan["exit"] - sum(plan[k] for k in reserve) - extra


def _resnet(ctx: Context, seed: int) -> torch.nn.Module:
    channels, size, _ = ctx.train.shape
    with seeded(seed):
        net = make_model(
            "resnet18",
            in_channels=channels,
            num_classes=ctx.train.num_classes,
            image_size=size,
            **ctx.settings.resnet_options,
        )
    return net.to(ctx.device, memory_format=torch.channels_last)


def prepare_selection(ctx: Context) -> None:
    """The selection model of Table 1 and its class-batch outputs (spec sections 3 and 5: a
    ResNet-18 trained 10 epochs on the full training set, without augmentation as the reference
    code, its outputs taken over one-class batches). The same as
    :func:`replay_lcmat.training.pretrain_selection_model` with ``augment=False``, plus
    channels-last and bf16 autocast for the training."""
    s, device, report = ctx.settings, ctx.device, ctx.report
    t0 = time.perf_counter()
    net = _resnet(ctx, seed=0)
    with mixed_precision(device):
        train(
            net,
            ctx.train_x,
            ctx.train_y,
            epochs=s.pretrain_epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            device=device,
            seed=0,
            progress=False,
        )
        synchronize(device)
        steps = s.pretrain_epochs * math.ceil(len(ctx.train_y) / s.batch_size)
        ctx.step_s = (time.perf_counter() - t0) / steps
        test_accuracy = evaluate(
            net, ctx.test_x, ctx.test_y, batch_size=s.eval_batch, device=device
        )
    report.measured["pretrain"] = time.perf_counter() - t0
    report.selection_model["test_accuracy"] = test_accuracy
    ctx.log(
        f"selection model: {report.measured['pretrain']:.0f} s ({1000 * ctx.step_s:.1f} ms per "
        f"step), test accuracy {test_accuracy:.2%}"
    )
    t0 = time.perf_counter()
    with exact_float32(device):
        out = extract_outputs(net, ctx.train, stats="class-batch", device=device)
    synchronize(device)
    extract_s = time.perf_counter() - t0
    ctx.outputs = tuple(t.to(device) for t in (out.features, out.logits, out.labels))
    report.selection_model["output_accuracy"] = float(
        (out.logits.argmax(1) == out.labels).float().mean()
    )
    report.selection_model["extract_seconds"] = extract_s
    report.measured["select"] = extract_s  # the selections at the first fraction add theirs
    report.speed.append(
        {
            "case": f"extraction: class-batch outputs of {len(out.labels):,} images",
            "fraction": "",
            "picks per class": "",
            "path": "",
            "seconds": f"{extract_s:.1f}",
            "paper s (Table D.2)": "",
        }
    )
    ctx.log(f"class-batch outputs of {len(out.labels):,} images in {extract_s:.1f} s (float32)")
    del net


def select(ctx: Context, method: str, fraction: float, seed: int) -> torch.Tensor:
    """``method``'s subset at ``fraction`` (classes ascending, each in pick order); selections of
    methods without randomness are made once and reused for every seed."""
    name, options = parse_policy(method)
    seeded_method = SELECTORS.entry(name).accepts("seed")
    key = (method, fraction, seed if seeded_method else None)
    if key not in ctx.selections:
        features, logits, labels = ctx.outputs
        selector = make_selector(name, **options, **({"seed": seed} if seeded_method else {}))
        synchronize(ctx.device)
        t0 = time.perf_counter()
        with exact_float32(ctx.device):
            picks = selector.select(
                features=features, logits=logits, labels=labels, fraction=fraction
            ).indices
        synchronize(ctx.device)
        ctx.report.select_seconds.setdefault((method, fraction), time.perf_counter() - t0)
        ctx.selections[key] = picks
        ctx.report.subsets.setdefault(method, {}).setdefault(f"{fraction:g}", {})[
            str(seed if seeded_method else "all")
        ] = picks.tolist()
    return ctx.selections[key]


def train_subset(ctx: Context, indices: torch.Tensor, seed: int) -> float:
    """Test accuracy of a fresh ResNet-18 trained on ``indices`` with the paper's recipe
    (spec section 5: 200 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, cosine, random
    crop 32 with reflect padding 4 and flip), final epoch, under bf16 autocast."""
    s, device = ctx.settings, ctx.device
    net = _resnet(ctx, seed)
    idx = indices.to(ctx.train_x.device)
    with mixed_precision(device):
        train(
            net,
            ctx.train_x[idx],
            ctx.train_y[idx],
            epochs=s.train_epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            augment=RandomCropFlip(padding=4),
            device=device,
            seed=seed,
            progress=False,
        )
        return evaluate(net, ctx.test_x, ctx.test_y, batch_size=s.eval_batch, device=device)


def run_table1(ctx: Context, fraction: float, deadline: float, step: str) -> str:
    """Table 1's column ``fraction``: every method, seed after seed, while runs fit."""
    s, report = ctx.settings, ctx.report
    t_start = time.perf_counter()
    jobs = [(seed, method) for seed in s.seeds for method in METHODS]
    done, longest_step, selecting = 0, ctx.step_s or 0.0, 0.0
    ctx.log(
        f"table 1 at {fraction:.0%}: {len(jobs)} runs ({len(METHODS)} methods x seeds "
        f"{list(s.seeds)}), each started only if it ends before {deadline:.0f} s"
    )
    size = sum(class_budgets(ctx.train.labels, fraction=fraction).values())
    steps = s.train_epochs * math.ceil(size / s.batch_size)
    try:
        for seed, method in jobs:
            estimate = 1.25 * steps * longest_step + 2.0  # + model, evaluation, autotuning
            if not ctx.clock.fits(estimate, deadline):
                ctx.log(
                    f"table 1 at {fraction:.0%}: next run (~{estimate:.0f} s) does not fit before "
                    f"{deadline:.0f} s; stopping after {done} of {len(jobs)} runs"
                )
                return f"{done} of {len(jobs)} runs (time)"
            t0 = time.perf_counter()
            indices = select(ctx, method, fraction, seed)
            selecting += time.perf_counter() - t0
            t0 = time.perf_counter()
            accuracy = train_subset(ctx, indices, seed)
            seconds = time.perf_counter() - t0
            longest_step = max(longest_step, seconds / steps)
            done += 1
            report.table1.append(
                {
                    "method": method,
                    "fraction": fraction,
                    "seed": seed,
                    "n_selected": len(indices),
                    "epochs": s.train_epochs,
                    "test_accuracy": round(accuracy, 6),
                    "train_seconds": round(seconds, 2),
                }
            )
            report.write(ctx.clock)
            ctx.log(
                f"table 1 at {fraction:.0%}: {method} seed {seed}: {accuracy:.2%} "
                f"({len(indices)} images, {seconds:.1f} s)"
            )
    finally:
        if step == "table1":  # the first fraction's selections belong to the "select" step
            report.measured["select"] = report.measured.get("select", 0.0) + selecting
            report.measured[step] = time.perf_counter() - t_start - selecting
        else:
            report.measured[step] = time.perf_counter() - t_start
    return f"done: {done} runs"


def big_class_inputs(n: int, d: int, c: int, seed: int, device: torch.device):
    """One class of ``n`` post-ReLU features around its mean and the logits of a nearest-mean
    head over ``c`` classes (as ``benchmarks.selection_speed.make_inputs``, made on ``device``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    means = torch.randn(c, d, generator=gen, device=device)
    features = (means[0] + 1.5 * torch.randn(n, d, generator=gen, device=device)).relu_()
    draws = torch.randn(c, 256, d, generator=gen, device=device)
    centers = (means[:, None] + 1.5 * draws).relu_().mean(1)
    logits = (features @ centers.T - 0.5 * centers.square().sum(1)) / d**0.5
    return features, logits, torch.zeros(n, dtype=torch.long, device=device)


def big_class_worker(spec: dict) -> dict:
    """LCMat-S on one large synthetic class (run in its own process by :func:`run_speed`)."""
    import resource

    device = torch.device(spec["device"])
    with exact_float32(device):
        features, logits, labels = big_class_inputs(
            spec["n"], spec["d"], spec["c"], seed=0, device=device
        )
        selector = make_selector("lcmat-s", eps=spec["eps"])
        path = selector.path(ClassInputs(0, features, logits, labels))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        t0 = time.perf_counter()
        picks = selector.select(
            features=features, logits=logits, labels=labels, fraction=spec["fraction"]
        ).indices
        synchronize(device)
        seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak, what = torch.cuda.max_memory_allocated(device), "peak GPU memory"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"
    return {
        "seconds": seconds,
        "path": path,
        "picks": len(picks),
        "peak": f"{what} {peak / 2**30:.1f} GiB",
    }


def run_speed(ctx: Context, deadline: float) -> str:
    """LCMat-S selection time on the device (paper Table D.2), from the extracted outputs, and
    one large class in a subprocess that the time left bounds."""
    s, device, report = ctx.settings, ctx.device, ctx.report
    t_start = time.perf_counter()
    features, logits, labels = ctx.outputs
    ctx.log(
        f"speed: LCMat-S at {list(s.speed_fractions)}, then one large class, by {deadline:.0f} s"
    )
    try:
        for fraction in s.speed_fractions:
            if not ctx.clock.fits(s.plan["speed"] / 4, deadline):
                return "stopped (time)"
            selector = make_selector("lcmat-s", eps=EPS)
            first = labels == labels.min()
            path = selector.path(ClassInputs(0, features[first], logits[first], labels[first]))
            synchronize(device)
            t0 = time.perf_counter()
            with exact_float32(device):
                picks = selector.select(
                    features=features, logits=logits, labels=labels, fraction=fraction
                ).indices
            synchronize(device)
            seconds = time.perf_counter() - t0
            per_class = class_budgets(labels.cpu(), fraction=fraction)
            paper = TABLE_D2_SECONDS.get(fraction)
            report.speed.append(
                {
                    "case": f"LCMat-S, {len(labels):,} images, {len(per_class)} classes, d "
                    f"{features.shape[1]}, c {logits.shape[1]}",
                    "fraction": f"{fraction:.0%}",
                    "picks per class": max(per_class.values()),
                    "path": path,
                    "seconds": f"{seconds:.1f}",
                    "paper s (Table D.2)": "" if paper is None else f"about {paper}",
                }
            )
            report.write(ctx.clock)
            ctx.log(
                f"speed: LCMat-S at {fraction:.0%} ({len(picks)} picks): {seconds:.1f} s "
                f"(paper Table D.2: about {paper} s)"
            )
        n, d, c = s.big_class
        timeout = deadline - ctx.clock.elapsed()
        if timeout < 5:
            return "done, no time for the large class"
        spec = {"n": n, "d": d, "c": c, "eps": EPS, "fraction": s.big_fraction}
        spec["device"] = str(device)
        ctx.log(
            f"speed: one class of {n:,} samples at {s.big_fraction:.0%}, at most {timeout:.0f} s"
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the subprocess needs the memory
        row = {
            "case": f"LCMat-S, one synthetic class of {n:,} samples, d {d}, c {c}",
            "fraction": f"{s.big_fraction:.0%}",
            "picks per class": max(1, math.floor(s.big_fraction * n + 0.5)),
        }
        module = __spec__.name if __spec__ is not None else "benchmarks.gpu_suite"
        command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
        status = "done"
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=REPO
            )
        except subprocess.TimeoutExpired:
            row.update(path="", seconds=f"> {timeout:.0f} (stopped: time)")
        else:
            if done.returncode != 0:
                row.update(path="", seconds=f"failed: {_cell(done.stderr.strip()[-300:])}")
                status = "done, but the large class failed (see its row)"
            else:
                result = json.loads(done.stdout.strip().splitlines()[-1])
                row.update(
                    path=f"{result['path']}, {result['peak']}",
                    seconds=f"{result['seconds']:.1f}",
                )
        row["paper s (Table D.2)"] = ""
        report.speed.append(row)
        report.write(ctx.clock)
        ctx.log(f"speed: {row['case']}: {row['seconds']} s ({row['path']})")
    finally:
        report.measured["speed"] = time.perf_counter() - t_start
    return status


def run_continual(ctx: Context, first_deadline: float, deadline: float) -> str:
    """The memory-only protocol (paper Fig. 5) on the whole dataset, seed after seed
    while the next fits (the first seed before ``first_deadline``, the others ``deadline``)."""
    s, device, report = ctx.settings, ctx.device, ctx.report
    t_start = time.perf_counter()
    measured: list[float] = []
    ctx.log(
        f"continual: seeds {list(s.continual_seeds)} while they fit (the first by "
        f"{first_deadline:.0f} s, the others by {deadline:.0f} s)"
    )
    try:
        for i, seed in enumerate(s.continual_seeds):
            estimate = max(measured) if measured else s.continual_seed_s
            if not ctx.clock.fits(estimate, first_deadline if i == 0 else deadline):
                ctx.log(f"continual: seed {seed} (~{estimate:.0f} s) does not fit; stopping")
                return f"{i} seed(s) (time)"
            t0 = time.perf_counter()
            lines: list[str] = []

            def log(line: str, lines: list[str] = lines) -> None:  # lines name their seed
                lines.append(line)
                ctx.log(f"continual: {line}")

            report.continual_partial = lines  # until the seed ends
            with exact_float32(device):  # selection happens inside: no autocast, no TF32
                rows = memory_only_run(
                    ctx.train,
                    ctx.test,
                    policies=list(CONTINUAL_POLICIES),
                    per_class=s.continual_per_class,
                    model="convnet",
                    model_options=s.continual_options,
                    n_experiences=s.continual_experiences,
                    seed=seed,
                    selection_model=SelectionModelConfig(
                        architecture="convnet",
                        model_options=s.continual_options,
                        epochs=s.selection_epochs,
                        lr=s.selection_lr,
                        augment=_PAPER_CONTINUAL.selection_augment,
                        stats="class-batch",
                    ),
                    retrain=s.retrain,
                    evaluations=1,
                    device=device,
                    progress=False,
                    log=log,
                )
            report.continual_partial = []
            measured.append(time.perf_counter() - t0)
            report.continual += [{"experiences": s.continual_experiences, **r} for r in rows]
            report.write(ctx.clock)
            ctx.log(f"continual: seed {seed} done in {measured[-1]:.0f} s")
    finally:
        report.measured["continual"] = time.perf_counter() - t_start
    return f"done: {len(measured)} seed(s)"


# ---------------------------------------------------------------------------------------------
# main


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=None,
        help=f"the CIFAR-10 JPEG archive (default: ${CIFAR10_ARCHIVE_VARIABLE}; with --smoke: a "
        "generated 10-class archive)",
    )
    add_device_argument(parser)
    parser.add_argument("--max-minutes", type=float, default=8.0, help="wall-clock limit")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--name", default=None, help="results file stem (default gpu_suite)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="parts to run (always in the order above; the data and the selection model come "
        "first as needed)",
    )
    parser.add_argument("--cache-dir", default=None, help="decode cache of the archive")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [part for part in PARTS if part in args.parts]  # the deadlines assume this order
    if args.worker:
        print(json.dumps(big_class_worker(json.loads(args.worker))), flush=True)
        return 0
    clock = Clock(60 * args.max_minutes, started=process_start())
    args.command = command_line("gpu_suite", argv)
    args.name = args.name or ("gpu_suite_smoke" if args.smoke else "gpu_suite")
    settings = SMOKE if args.smoke else FULL
    device = torch.device(args.device)
    temporary = None
    if args.data is None and args.smoke:
        temporary = tempfile.TemporaryDirectory(prefix="gpu-suite-smoke-")
        args.data = str(write_smoke_archive(Path(temporary.name) / "smoke.tar.gz"))
    elif args.data is None:
        archive = shared_cifar10_archive()
        if archive is None:
            parser.error(
                f"pass --data <cifar10-jpeg.tar.gz> or set ${CIFAR10_ARCHIVE_VARIABLE} (README, "
                "'One GPU, eight minutes')"
            )
        args.data = str(archive)
    report = Report(args, settings, device_name(device))

    def log(line: str) -> None:
        print(f"{clock.stamp()} {line}", flush=True)

    sizes = "estimates for one H100" if settings is FULL else "smoke sizes, full-run step names"
    print(
        f"gpu_suite ({settings.name}): limit {clock.limit:.0f} s, device {report.device_name}, "
        f"torch {torch.__version__}, data {args.data}; time plan ({sizes}):",
        flush=True,
    )
    for key, what in PLAN_STEPS.items():
        print(f"  {settings.plan[key]:4.0f} s  {what}", flush=True)
    print(f"  {sum(settings.plan.values()):4.0f} s  in all", flush=True)
    ctx = Context(settings, device, clock, report, log)
    for part in PARTS:
        if part not in args.parts:
            report.status[part] = "not requested (--parts)"
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        with clock.alarm(clock.limit - ALARM_MARGIN_S):
            run_parts(ctx, args.parts)
    except OutOfTime as stop:  # rang inside a part (marked there) or between parts
        clock.disarm()
        for row in STATUS_ROWS:
            report.status.setdefault(row, "not run (time)")
        log(f"stopped: {stop}")
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        if temporary is not None:
            temporary.cleanup()
    text = report.write(clock)
    print("\n" + text, flush=True)
    print(f"\nwritten {report.path('.md')} (and CSVs) in {clock.elapsed():.0f} s", flush=True)
    failed = [part for part, status in report.status.items() if status.startswith("failed")]
    return 1 if failed else 0


def run_parts(ctx: Context, parts: list[str]) -> None:
    """Run the parts in order, each status in the report ("failed: ..." when one raised; the
    others still run). The alarm's :class:`OutOfTime` marks the rest as not run and propagates."""
    s, report, log = ctx.settings, ctx.report, ctx.log

    def attempt(part: str, fn: Callable[[], str]) -> bool:
        try:
            report.status[part] = fn()
        except OutOfTime as stop:
            ctx.clock.disarm()
            report.status[part] = f"stopped by {stop}"
            for later in STATUS_ROWS[STATUS_ROWS.index(part) + 1 :]:
                report.status.setdefault(later, "not run (time)")
            log(f"{part}: stopped by {stop}")
            report.write(ctx.clock)
            raise
        except Exception as err:  # the other parts still run
            report.status[part] = f"failed: {type(err).__name__}: {err}"
            log(f"{part}: FAILED\n{traceback.format_exc()}")
            report.write(ctx.clock)
            return False
        report.write(ctx.clock)
        return True

    def load() -> str:
        ctx.train, ctx.test = load_on_device(
            ctx.report.args.data, ctx.device, report.args.cache_dir
        )
        ctx.train_x, ctx.train_y = ctx.train.normalized(), ctx.train.labels.to(ctx.device)
        ctx.test_x, ctx.test_y = ctx.test.normalized(), ctx.test.labels
        synchronize(ctx.device)
        report.measured["start"] = ctx.clock.elapsed()
        log(
            f"data: {len(ctx.train):,} training and {len(ctx.test):,} test images of "
            f"{ctx.train.shape} on {ctx.device}"
        )
        return "done"

    if not attempt("data", load):
        for part in parts:
            report.status[part] = "not run (no data)"
        return
    needs_model = [p for p in parts if p in ("table1", "speed", "table1-5pct")]
    model_ready = False
    if needs_model:

        def setup() -> str:
            prepare_selection(ctx)
            return "done"

        model_ready = attempt("selection model", setup)
    else:
        report.status["selection model"] = "not needed"
    reserve_seed = s.continual_seed_s if "continual" in parts else 0.0
    for part in parts:
        if part in needs_model and not model_ready:
            report.status[part] = "not run (the selection model failed)"
            continue
        if part == "table1":
            later = ("speed",) if "speed" in parts else ()
            deadline = ctx.deadline(*later, extra=reserve_seed)
            attempt(part, lambda d=deadline: run_table1(ctx, s.fraction, d, "table1"))
        elif part == "speed":
            attempt(part, lambda: run_speed(ctx, ctx.deadline(extra=reserve_seed)))
        elif part == "continual":
            later = ("table1-5pct",) if "table1-5pct" in parts else ()
            first, rest = ctx.deadline(), ctx.deadline(*later)
            attempt(part, lambda f=first, r=rest: run_continual(ctx, f, r))
        else:
            attempt(
                part,
                lambda: run_table1(ctx, s.late_fraction, ctx.deadline(), "table1-5pct"),
            )


if __name__ == "__main__":
    raise SystemExit(main())
