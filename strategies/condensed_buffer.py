"""Synthetic exemplars: an Avalanche storage policy that condenses every new class."""

from __future__ import annotations

import warnings

import torch
from avalanche.benchmarks.utils import concat_datasets
from avalanche.training.storage_policy import ExemplarsBuffer

from replay_lcmat.buffers import (
    ClassMemory,
    check_budget,
    condense_exemplars,
    derive_seed,
    policy_kind,
)
from replay_lcmat.strategies.datasets import dataset_tensors, tensor_dataset

STATE_FORMAT = "replay-lcmat/condensed-buffer"


class CondensedClassBuffer(ExemplarsBuffer):
    """``mem_per_class`` synthetic images for every class seen so far (LCMat-C, DM, DSA, DC).

    After each experience (``post_adapt``) the new classes are condensed together from that
    experience's data only, with seed ``derive_seed(seed, experience id)``; a class seen again
    is condensed again from its new data and replaces its old images. A class with at most
    ``mem_per_class`` samples is stored whole as real images (with a warning when fewer).

    ``buffer`` is a tensor classification dataset whose items are ``(x, y, t)`` like the
    stream's: ``x`` the synthetic images, already normalised, detached, on the CPU, with no
    transforms; ``y`` the original class labels; ``t`` the class's task label. ``max_size`` is
    the current capacity, ``mem_per_class`` x classes seen.

    Args:
        mem_per_class: synthetic images per class (the condenser's ipc).
        condenser: condenser name (``"lcmat-c"``, ``"dm"``, ``"dsa"``, ``"dc"``).
        iterations: outer iterations (default: the method's paper value).
        device: where condensation runs (default: the strategy's device).
        seed: base seed.
        progress: show the condenser's progress bar.
        batch_size: samples per batch when the experience's data is read.
        **condenser_options: e.g. ``network_options={"width": 32}``, ``batch_real=64``.
    """

    def __init__(
        self,
        mem_per_class: int,
        condenser: str = "lcmat-c",
        *,
        iterations: int | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        progress: bool = False,
        batch_size: int = 256,
        **condenser_options,
    ) -> None:
        check_budget(mem_per_class, "mem_per_class")
        if policy_kind(condenser) != "condensation":
            raise ValueError(
                f"{condenser!r} is a selection policy; use SelectionBuffer (or "
                "LCMatReplayPlugin(policy=...)) for real exemplars."
            )
        super().__init__(max_size=0)
        self.mem_per_class = mem_per_class
        self.condenser = condenser
        self.iterations = iterations
        self.device = device
        self.seed = seed
        self.progress = progress
        self.batch_size = batch_size
        self.condenser_options = condenser_options
        self.memory = ClassMemory()
        self.task_labels: dict[int, int] = {}

    def post_adapt(self, agent, exp) -> None:
        data = exp.dataset
        if len(data) == 0:
            return
        x, y, t = dataset_tensors(data, batch_size=self.batch_size)
        syn, syn_labels = condense_exemplars(
            self.condenser,
            x,
            y,
            per_class=self.mem_per_class,
            iterations=self.iterations,
            device=self.device if self.device is not None else agent.device,
            seed=derive_seed(self.seed, exp.current_experience),
            progress=self.progress,
            **self.condenser_options,
        )
        for c in torch.unique(syn_labels).tolist():
            self.memory.put(c, syn[syn_labels == c])
            self.task_labels[c] = int(t[y == c][0])
        self._refresh()

    def resize(self, strategy, new_size: int) -> None:
        """Avalanche semantics: ``new_size`` is the total, split equally over the seen classes.

        Shrinking keeps the first images of each class; a condensed memory cannot grow without
        its data, so a larger size only raises the capacity for classes still to come.
        """
        classes = max(1, len(self.memory.classes()))
        per_class = new_size // classes
        if per_class < 1:
            raise ValueError(
                f"a total of {new_size} cannot hold one image for each of {classes} classes; pass "
                f"at least {classes}."
            )
        if per_class < self.mem_per_class and len(self.memory):
            self.memory.truncate(per_class)
        elif per_class > self.mem_per_class and len(self.memory):
            warnings.warn(
                f"growing a condensed memory to {per_class} images per class: the "
                f"{len(self.memory.classes())} classes already stored keep their "
                f"{self.mem_per_class} (they cannot be condensed again without their data); "
                "only classes still to come get the new size.",
                stacklevel=2,
            )
        self.mem_per_class = per_class
        self._refresh()

    def _refresh(self) -> None:
        classes = self.memory.classes()
        if not classes:
            self.max_size = 0
            self.buffer = concat_datasets([])
            return
        x, y = self.memory.tensors()
        self.max_size = len(y)  # what is stored: a grown memory's old classes stay smaller
        t = torch.tensor([self.task_labels[int(c)] for c in y], dtype=torch.int64)
        self.buffer = tensor_dataset(x, y, t)

    def state_dict(self) -> dict:
        """The synthetic images per class and their task labels, as plain tensors."""
        classes = self.memory.classes()
        return {
            "format": STATE_FORMAT,
            "mem_per_class": self.mem_per_class,
            "memory": self.memory.state_dict(),
            "task_labels": [self.task_labels[c] for c in classes],
        }

    def load_state_dict(self, state: dict, stream=None) -> None:
        """Restore :meth:`state_dict` (``stream`` is not needed: the images are stored)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "not a condensed-buffer state; pass the dict of CondensedClassBuffer.state_dict()."
            )
        self.memory = ClassMemory.from_state_dict(state["memory"])
        self.mem_per_class = state["mem_per_class"]
        self.task_labels = dict(zip(self.memory.classes(), state["task_labels"], strict=True))
        self._refresh()
