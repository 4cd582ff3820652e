"""Real exemplars ranked by a registered selector (LCMat-S, Craig, Herding, ...) inside Avalanche.

:class:`SelectorExemplarsStrategy` is an Avalanche ``ExemplarsSelectionStrategy``: it works inside
Avalanche's own ``ParametricBuffer``. :class:`SelectionBuffer` is a ``ParametricBuffer`` that keeps
``per_class`` exemplars of every class seen so far and tells the strategy that number, so a
greedy selector picks only ``k`` samples and a group that already fits is never re-ranked.

With Avalanche's own ``ReplayPlugin`` (which checks ``storage_policy.max_size == mem_size`` when
it is built): a :class:`SelectionBuffer` has no fixed total (it grows by ``per_class`` per
class seen, ``max_size`` is 0 before the first experience), so pass ``mem_size=buffer.max_size``::

    buffer = SelectionBuffer(10, "lcmat-s")
    ReplayPlugin(mem_size=buffer.max_size, storage_policy=buffer)

``ReplayPlugin(mem_size=100, storage_policy=SelectionBuffer(10))`` fails Avalanche's check
(:class:`LCMatReplayPlugin` passes the buffer's own value for you). For Avalanche's semantics (a
fixed total split equally over the classes seen) build the buffer with the total::

    buffer = SelectionBuffer(mem_size=100, selection_strategy="lcmat-s")
    ReplayPlugin(mem_size=100, storage_policy=buffer)

Avalanche's own ``ParametricBuffer(100, groupby="class",
selection_strategy=SelectorExemplarsStrategy())`` works too, but Avalanche never tells the
strategy the budget, so a greedy selector then ranks whole groups.

Multi-task models (Avalanche's ``MultiTaskModule``: ``MTSimpleMLP``, ``MultiHeadClassifier``)
are run with each sample's task label, through the head of that task.
"""

from __future__ import annotations

import warnings

import torch
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.training.storage_policy import (
    ExemplarsBuffer,
    ExemplarsSelectionStrategy,
    ParametricBuffer,
)
from torch import Tensor

from replay_lcmat.selection.engine import fit_budgets
from replay_lcmat.strategies.datasets import dataset_targets, dataset_task_labels
from replay_lcmat.strategies.selection_state import (
    check_selection_state,
    restore_groups,
    selection_state,
)
from replay_lcmat.strategies.selector_strategy import SelectorExemplarsStrategy
from replay_lcmat.strategies.sizing import check_sizing, split_total
from replay_lcmat.validation import check_number


class _ClassExemplars(ExemplarsBuffer):
    """The exemplars of one class (of one task, in a task-aware memory), in rank order, with
    their sources ``[k, 2]`` = (experience id, index in that experience's dataset)."""

    def __init__(self, label: int, max_size: int, selection_strategy, task: int = 0) -> None:
        super().__init__(max_size)
        self.label = label
        self.task = task
        self.selection_strategy = selection_strategy
        self.sources = torch.zeros(0, 2, dtype=torch.int64)
        self.ranked = True

    def add(self, strategy, data: AvalancheDataset, sources: Tensor) -> None:
        """Merge new samples of the class and keep the best ``max_size`` of old + new."""
        if len(self.buffer):
            data, sources = self.buffer.concat(data), torch.cat([self.sources, sources])
        fit_budgets({self.label: len(data)}, {self.label: self.max_size})  # the small-class warning
        self._keep(strategy, data, sources, self.max_size)

    def _keep(self, strategy, data: AvalancheDataset, sources: Tensor, k: int) -> None:
        if k == 0:  # a fixed total smaller than the number of groups
            self.buffer = data.subset(torch.zeros(0, dtype=torch.int64))
            self.sources, self.ranked = sources[:0], True
            return
        if len(data) <= k:  # fits: stored as is, ranked only if it must shrink later
            self.buffer, self.sources, self.ranked = data, sources, len(data) <= 1
            return
        if isinstance(self.selection_strategy, SelectorExemplarsStrategy):
            order = self.selection_strategy.make_sorted_indices(strategy, data, total=k)
        else:  # any Avalanche ExemplarsSelectionStrategy
            order = list(self.selection_strategy.make_sorted_indices(strategy=strategy, data=data))
        order = torch.as_tensor(order[:k], dtype=torch.int64)
        self.buffer, self.sources, self.ranked = data.subset(order), sources[order], True

    def resize(self, strategy, new_size: int) -> None:
        self.max_size = new_size
        if len(self.buffer) <= new_size:
            return
        if self.ranked:  # greedy order: the prefix is the answer for the smaller budget
            keep = torch.arange(new_size)
            self.buffer, self.sources = self.buffer.subset(keep), self.sources[keep]
        else:
            self._keep(strategy, self.buffer, self.sources, new_size)


class SelectionBuffer(ParametricBuffer):
    """``per_class`` real exemplars of every class seen so far, chosen by a selector.

    A ``ParametricBuffer`` grouped by class, with one of two sizings (exactly one is given):

    - ``per_class=k``: every group keeps ``k`` exemplars, so the memory grows with the classes
      seen; ``max_size`` is the current capacity, ``k`` x classes seen (0 before the first
      experience).
    - ``mem_size=N``: Avalanche's sizing, a fixed total ``N`` (``max_size``) split evenly over
      the groups seen (:func:`split_total`: ``N // groups`` each, one more for the first
      ``N % groups``); when new classes arrive every older group shrinks to the prefix of its
      greedy ranking, so it is not ranked again. With more groups than ``N`` the last ones get
      none (with a warning).

    After each experience the new samples of each group are merged with its exemplars and the
    best ones kept; the selection strategy is told that budget. A class with fewer samples is
    stored whole with a warning.

    Groups are class labels in a class-incremental stream (every task label 0), as in
    Avalanche's ``ParametricBuffer(groupby="class")``. Task-aware memory: as soon as a sample
    with a task label above 0 arrives (a task-incremental stream, e.g.
    ``nc_benchmark(task_labels=True)``), groups are keyed by ``(task, class)`` (the groups kept
    so far become ``(0, class)``), with ``per_class`` exemplars per key, each ranked through its
    own task's head: tasks that reuse class labels (``class_ids_from_zero_in_each_exp=True``)
    keep one group per task instead of overwriting each other. ``buffer_groups`` and
    :meth:`exemplar_sources` are keyed accordingly.

    With Avalanche's ``ReplayPlugin``: ``ReplayPlugin(mem_size=buffer.max_size,
    storage_policy=buffer)`` (see the module docstring); :class:`LCMatReplayPlugin` does it.

    Save and restore with :meth:`state_dict` / :meth:`load_state_dict`; the state holds indices
    into the stream, with the labels and a fingerprint of the images, so a restore with another
    stream is refused.

    Args:
        per_class: exemplars per class (a growing memory).
        mem_size: the fixed total of the memory (Avalanche's sizing).
        selection_strategy: a selector name (ranked with its defaults), a
            :class:`SelectorExemplarsStrategy` (a selector with options, seed, statistics:
            ``SelectorExemplarsStrategy("lcmat-s", options={"eps": 0.05}, seed=1)``), or any
            Avalanche ``ExemplarsSelectionStrategy``.
    """

    def __init__(
        self,
        per_class: int | None = None,
        selection_strategy: str | ExemplarsSelectionStrategy = "lcmat-s",
        *,
        mem_size: int | None = None,
    ) -> None:
        per_class, mem_size = check_sizing(per_class, mem_size)
        if isinstance(selection_strategy, str):
            selection_strategy = SelectorExemplarsStrategy(selection_strategy)
        super().__init__(max_size=0, groupby="class", selection_strategy=selection_strategy)
        self.per_class = per_class
        self.mem_size = mem_size
        # per_class: grows by per_class with every class seen; mem_size: the fixed total
        self.max_size = 0 if mem_size is None else mem_size
        self._short_warned = False
        self.stream_name: str | None = None
        self.task_aware = False  # groups keyed by (task, class) once a task label > 0 is seen

    def get_group_lengths(self, num_groups: int) -> list[int]:
        if self.mem_size is not None:
            return split_total(self.mem_size, num_groups)
        return [self.per_class] * num_groups

    def post_adapt(self, agent, exp) -> None:
        data = exp.dataset
        if len(data) == 0:
            return
        self._note_stream(exp)
        targets, tasks = dataset_targets(data), dataset_task_labels(data)
        if not self.task_aware and bool((tasks > 0).any()):
            self._become_task_aware()
        pairs = torch.unique(torch.stack([tasks, targets], dim=1), dim=0).tolist()
        keys = [self._key(task, label) for task, label in pairs]
        order = list(self.buffer_groups) + [k for k in keys if k not in self.buffer_groups]
        sizes = dict(zip(order, self.get_group_lengths(len(order)), strict=True))
        self._warn_if_short(sizes)
        for key, group in self.buffer_groups.items():  # older groups shrink to their prefix
            if key not in keys:
                group.resize(agent, sizes[key])
        for (task, label), key in zip(pairs, keys, strict=True):
            idx = torch.nonzero((targets == label) & (tasks == task)).flatten()
            sources = torch.stack([torch.full_like(idx, exp.current_experience), idx], dim=1)
            group = self.buffer_groups.get(key)
            if group is None:
                group = _ClassExemplars(label, sizes[key], self.selection_strategy, task)
                self.buffer_groups[key] = group
            group.max_size = sizes[key]
            group.add(agent, data.subset(idx), sources)
            self.seen_groups.add(key)
        self._update_max_size()

    def _update_max_size(self) -> None:
        groups = len(self.buffer_groups)
        self.max_size = self.mem_size if self.mem_size is not None else self.per_class * groups

    def _warn_if_short(self, sizes: dict) -> None:
        empty = [k for k, n in sizes.items() if n == 0]
        if empty and not self._short_warned:
            self._short_warned = True
            warnings.warn(
                f"mem_size={self.mem_size} is smaller than the {len(sizes)} classes seen: "
                f"{len(empty)} of them (the last seen, e.g. {empty[0]}) keep no exemplar. "
                "Pass a larger mem_size, or per_class= for a memory that grows.",
                UserWarning,
                stacklevel=3,
            )

    def _key(self, task: int, label: int):
        """The group of a sample: its class, or (task, class) in a task-aware memory."""
        return (int(task), int(label)) if self.task_aware else int(label)

    def _become_task_aware(self) -> None:
        """Re-key the groups kept so far (all of task 0) as ``(0, class)``."""
        self.task_aware = True
        self.buffer_groups = {(0, int(k)): g for k, g in self.buffer_groups.items()}
        self.seen_groups = set(self.buffer_groups)

    def _note_stream(self, exp) -> None:
        name = getattr(getattr(exp, "origin_stream", None), "name", None)
        if self.stream_name is None:
            self.stream_name = name
        elif name is not None and name != self.stream_name:
            warnings.warn(
                f"this memory holds exemplars of the {self.stream_name!r} stream and now of the "
                f"{name!r} stream; their sources (experience id, index) mix two streams, so its "
                "state_dict() cannot be restored from one stream.",
                UserWarning,
                stacklevel=3,
            )

    def resize(self, strategy, new_size: int) -> None:
        """Avalanche semantics: ``new_size`` is the total, split equally over the seen classes.

        A ``mem_size`` memory keeps ``new_size`` as its fixed total (:func:`split_total`); a
        ``per_class`` memory takes ``new_size // classes`` as its new ``per_class``. Groups
        shrink to the prefix of their ranking (they cannot grow without their data)."""
        groups = max(1, len(self.buffer_groups))
        if self.mem_size is not None:
            self.mem_size = int(
                check_number("memory", "mem_size", new_size, integer=True, minimum=1)
            )
            sizes = self.get_group_lengths(groups)
            self._warn_if_short(dict(zip(self.buffer_groups, sizes, strict=False)))
            for group, size in zip(self.buffer_groups.values(), sizes, strict=False):
                group.resize(strategy, size)
            self._update_max_size()
            return
        per_class = new_size // groups
        if per_class < 1:
            raise ValueError(
                f"a total of {new_size} cannot hold one exemplar for each of {groups} classes; "
                f"pass at least {groups}."
            )
        self.per_class = per_class
        for group in self.buffer_groups.values():
            group.resize(strategy, per_class)
        self._update_max_size()

    def exemplar_sources(self) -> dict:
        """``{class: int64 [k, 2]}`` (``{(task, class): ...}`` in a task-aware memory):
        (experience id, index in its dataset) of each exemplar."""
        return {c: g.sources.clone() for c, g in self.buffer_groups.items()}

    def state_dict(self) -> dict:
        """The memory as plain tensors (loadable with ``torch.load(weights_only=True)``); see
        :func:`replay_lcmat.strategies.selection_state.selection_state`."""
        return selection_state(self)

    def load_state_dict(self, state: dict, stream) -> None:
        """Restore the memory of :meth:`state_dict` from the experiences of ``stream``: the
        stream the exemplars were taken from (the benchmark's ``train_stream``, same class order
        and number of experiences; ``test_stream`` or another split is refused).

        Every exemplar is checked: its experience and index exist in ``stream``, its label
        and task label are the saved ones (the group's key) and its image has the saved
        fingerprint; the buffer is left unchanged when a check fails.

        Raises:
            ValueError: not a selection-buffer state; no stream; another ``per_class`` or
                ``mem_size`` (build the buffer with the saved one, then :meth:`resize`);
                another stream.
        """
        check_selection_state(state, stream, self.per_class, self.mem_size)
        sizes = self.get_group_lengths(len(state["classes"]))

        def make_group(label: int, task: int, size: int) -> _ClassExemplars:
            return _ClassExemplars(label, size, self.selection_strategy, task)

        self.buffer_groups = restore_groups(state, stream, sizes, make_group)
        self.task_aware = bool(state["task_aware"])
        self.seen_groups = set(self.buffer_groups)
        name = getattr(stream, "name", None)
        self.stream_name = state["stream"] if state["stream"] is not None else name
        self._update_max_size()
