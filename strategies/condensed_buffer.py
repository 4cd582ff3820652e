"""Synthetic exemplars: an Avalanche storage policy that condenses every new class."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from avalanche.benchmarks.utils import concat_datasets
from avalanche.training.storage_policy import ExemplarsBuffer

from replay_lcmat.files import check_state_header
from replay_lcmat.memory import ClassMemory, CondensationPolicy, check_options, memory_policy
from replay_lcmat.strategies.datasets import dataset_tensors, tensor_dataset
from replay_lcmat.strategies.sizing import check_sizing

STATE_FORMAT = "replay-lcmat/condensed-buffer"
STATE_VERSION = 1  # the one state layout read back; any other version is refused


class CondensedClassBuffer(ExemplarsBuffer):
    """``per_class`` synthetic images for every class seen so far (LCMat-C, DM, DSA, DC).

    After each experience (``post_adapt``) the new classes are condensed together from that
    experience's data only (:meth:`replay_lcmat.memory.CondensationPolicy.build`, seed
    ``derive_seed(seed, experience id)``); a class seen again
    is condensed again from its new data and replaces its old images. A class with at most
    ``per_class`` samples is stored whole as real images (with a warning when fewer).

    ``buffer`` is a tensor classification dataset whose items are ``(x, y, t)`` like the
    stream's: ``x`` the synthetic images, already normalised, detached, on the CPU, with no
    transforms; ``y`` the original class labels; ``t`` the class's task label. ``max_size`` is
    the current capacity, ``per_class`` x classes seen (0 before the first experience; with
    Avalanche's ``ReplayPlugin`` pass ``mem_size=buffer.max_size``, see
    :mod:`replay_lcmat.strategies.selection_policy`). Each class label belongs to one task: a
    label that comes back under another task label is refused (its images would be replaced).

    Cost: the defaults are the papers' settings (``CONDENSERS.entry(name).defaults``:
    1000 outer iterations for LCMat-C / DC / DSA, 20000 for DM, of a ConvNet-3 of width 128),
    run once per experience. They are meant for a GPU: on a CPU (2 cores) one LCMat-C iteration
    takes one to several minutes even for the 2 classes of an 8x8 digits experience, i.e. a day
    or more per experience (DM: about 0.7 s per iteration, about 4 hours). Condensing with these
    defaults on a CPU warns once. To try a policy on a CPU, shrink it: ``"lcmat-c"`` with
    ``options={"iterations": 10, "outer_loop": 1, "inner_loop": 1, "network_options":
    {"width": 32, "depth": 2}}`` takes about 30 s per digits experience, ``"dm"`` with
    ``options={"iterations": 100, "network_options": {"width": 32, "depth": 2}}`` about 6 s.
    A progress bar with the time left is shown by default.

    Args:
        per_class: synthetic images per class (a growing memory).
        mem_size: instead of ``per_class``, Avalanche's sizing: a fixed total split evenly
            (``mem_size // classes`` each) over the classes seen; the new classes of an
            experience are condensed at the new share and the stored ones keep their first
            images.
        condenser: condenser name (``"lcmat-c"``, ``"dm"``, ``"dsa"``, ``"dc"``).
        options: the condenser's own options, e.g. ``{"iterations": 10, "network_options":
            {"width": 32}, "batch_real": 64}`` (unset ones: the paper's values). Every option
            is checked here (the condenser is built once), not at the first experience.
        device: where condensation runs (default: the strategy's device).
        seed: base seed.
        progress: show the condenser's progress bar (iterations done, time left).
        batch_size: samples per batch when the experience's data is read.
    """

    def __init__(
        self,
        per_class: int | None = None,
        condenser: str = "lcmat-c",
        *,
        mem_size: int | None = None,
        options: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        progress: bool = True,
        batch_size: int = 256,
    ) -> None:
        per_class, mem_size = check_sizing(per_class, mem_size)
        policy = memory_policy(condenser)
        if not isinstance(policy, CondensationPolicy):
            raise ValueError(
                f"{condenser!r} is a {policy.kind} policy; use SelectionBuffer (or "
                "LCMatReplayPlugin(policy=...)) for real exemplars."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        options = check_options(options)
        # every option is checked now rather than after the first experience
        policy.check_options(
            {
                "device": "cpu" if device is None else device,
                "seed": seed,
                "progress": progress,
                **options,
            }
        )
        super().__init__(max_size=0)
        # per_class: grows by per_class with every class seen; mem_size: the fixed total
        self.max_size = 0 if mem_size is None else mem_size
        self.mem_size = mem_size
        self.per_class = per_class  # with mem_size: the current share, set at each experience
        self.condenser = condenser
        self.policy = policy
        self.device = device
        self.seed = seed
        self.progress = progress
        self.batch_size = batch_size
        self.options = options
        self.memory = ClassMemory()
        self.task_labels: dict[int, int] = {}
        self._cost_warned = False

    def post_adapt(self, agent, exp) -> None:
        data = exp.dataset
        if len(data) == 0:
            return
        x, y, t = dataset_tensors(data, batch_size=self.batch_size)
        for c in torch.unique(y).tolist():
            tasks = torch.unique(t[y == c]).tolist()
            stored = self.task_labels.get(c)
            if len(tasks) > 1 or (stored is not None and tasks[0] != stored):
                before = [] if stored is None else [stored]
                raise ValueError(
                    f"class {c} comes with task labels {sorted(set(before + tasks))}; a condensed "
                    "memory keeps one set of images per class label, so another task's class "
                    f"{c} would replace them. Build the benchmark with distinct class labels per "
                    "task (e.g. class_ids_from_zero_in_each_exp=False)."
                )
        if self.mem_size is not None:  # Avalanche's sizing: the total over all classes seen
            classes = set(self.memory.classes()) | set(torch.unique(y).tolist())
            self._set_share(self.mem_size // len(classes), len(classes))
        device = torch.device(self.device if self.device is not None else agent.device)
        if "iterations" not in self.options and device.type == "cpu" and not self._cost_warned:
            self._cost_warned = True
            warnings.warn(
                f"condensing with {self.condenser!r}'s paper settings "
                f"({self.policy.defaults.get('iterations')} iterations per experience) on the "
                "CPU takes hours to days per experience; pass options={'iterations': 10, "
                "'network_options': {'width': 32, 'depth': 2}} to try it on a CPU, or run on a GPU. "
                "See help(CondensedClassBuffer) for the cost.",
                UserWarning,
                stacklevel=2,
            )
        new = self.policy.build(
            x,
            y,
            per_class=self.per_class,
            device=device,
            seed=self.policy.experience_seed(self.seed, exp.current_experience),
            options=self.options,
            progress=self.progress,
        )
        self.memory.update(new)
        for c in new.classes():
            self.task_labels[c] = int(t[y == c][0])
        self._refresh()

    def resize(self, strategy, new_size: int) -> None:
        """Avalanche semantics: ``new_size`` is the total, split equally over the seen classes.

        Shrinking keeps the first images of each class; a condensed memory cannot grow without
        its data, so a larger size only raises the capacity for classes still to come.
        """
        classes = max(1, len(self.memory.classes()))
        if self.mem_size is not None:
            self.mem_size = new_size
            self._set_share(new_size // classes, classes)
            self._refresh()
            return
        per_class = new_size // classes
        if per_class < 1:
            raise ValueError(
                f"a total of {new_size} cannot hold one image for each of {classes} classes; pass "
                f"at least {classes}."
            )
        if per_class < self.per_class and len(self.memory):
            self.memory.truncate(per_class)
        elif per_class > self.per_class and len(self.memory):
            warnings.warn(
                f"growing a condensed memory to {per_class} images per class: the "
                f"{len(self.memory.classes())} classes already stored keep their "
                f"{self.per_class} (they cannot be condensed again without their data); "
                "only classes still to come get the new size.",
                stacklevel=2,
            )
        self.per_class = per_class
        self._refresh()

    def _set_share(self, share: int, classes: int) -> None:
        """``share`` images per class for a ``mem_size`` memory: the classes stored shrink to
        their first ``share`` images."""
        if share < 1:
            raise ValueError(
                f"mem_size={self.mem_size} cannot hold one synthetic image for each of {classes} "
                f"classes; pass mem_size >= {classes}, or per_class= for a memory that grows."
            )
        if self.per_class is not None and share < self.per_class and len(self.memory):
            self.memory.truncate(share)
        self.per_class = share

    def _refresh(self) -> None:
        classes = self.memory.classes()
        if not classes:
            self.max_size = 0 if self.mem_size is None else self.mem_size
            self.buffer = concat_datasets([])
            return
        x, y = self.memory.tensors()
        # what is stored (a grown memory's old classes stay smaller), or the fixed total
        self.max_size = len(y) if self.mem_size is None else self.mem_size
        t = torch.tensor([self.task_labels[int(c)] for c in y], dtype=torch.int64)
        self.buffer = tensor_dataset(x, y, t)

    def state_dict(self) -> dict:
        """The synthetic images per class and their task labels, as plain tensors."""
        classes = self.memory.classes()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "per_class": self.per_class,
            "mem_size": self.mem_size,
            "memory": self.memory.state_dict(),
            "task_labels": [self.task_labels[c] for c in classes],
        }

    def load_state_dict(self, state: dict, stream=None) -> None:
        """Restore :meth:`state_dict` (``stream`` is not needed: the images are stored).

        Raises:
            ValueError: not a condensed-buffer state, or it keeps another ``per_class``
                (build the buffer with the saved one, then :meth:`resize`).
        """
        check_state_header(
            state,
            STATE_FORMAT,
            STATE_VERSION,
            "condensed-buffer",
            "CondensedClassBuffer.state_dict()",
        )
        saved_per_class, saved_total = state["per_class"], state.get("mem_size")
        if saved_total is not None or self.mem_size is not None:
            if saved_total != self.mem_size:
                raise ValueError(
                    f"the saved memory was built with mem_size={saved_total}, this buffer with "
                    f"mem_size={self.mem_size}; restore into a buffer (or plugin) built with "
                    "the saved sizing, then resize it if you want another size."
                )
            self.per_class = saved_per_class
        elif saved_per_class != self.per_class:
            raise ValueError(
                f"the saved memory keeps {saved_per_class} images per class, this buffer "
                f"{self.per_class}; restore into a buffer (or plugin) built with "
                f"per_class={saved_per_class}, then resize it if you want another size."
            )
        self.memory = ClassMemory.from_state_dict(state["memory"])
        self.task_labels = dict(zip(self.memory.classes(), state["task_labels"], strict=True))
        self._refresh()
