"""Real exemplars ranked by a registered selector (LCMat-S, Craig, Herding, ...) inside Avalanche.

:class:`SelectorExemplarsStrategy` is an Avalanche ``ExemplarsSelectionStrategy``: it works inside
Avalanche's own ``ParametricBuffer``. :class:`SelectionBuffer` is a ``ParametricBuffer`` that keeps
``mem_per_class`` exemplars of every class seen so far and tells the strategy the budget, so a
greedy selector picks only ``k`` samples and a group that already fits is never re-ranked.
"""

from __future__ import annotations

import math

import torch
from avalanche.benchmarks.utils import AvalancheDataset, concat_datasets
from avalanche.training.storage_policy import (
    ExemplarsBuffer,
    ExemplarsSelectionStrategy,
    ParametricBuffer,
)
from torch import Tensor

from replay_lcmat.buffers import check_budget, policy_kind, select_exemplars, warn_small_class
from replay_lcmat.selection import SELECTORS, extract_outputs
from replay_lcmat.selection.extract import DEFAULT_STATS, check_stats
from replay_lcmat.strategies.datasets import dataset_tensors

STATE_FORMAT = "replay-lcmat/selection-buffer"


def _targets(data: AvalancheDataset) -> Tensor:
    return torch.tensor([int(v) for v in data.targets], dtype=torch.int64)


def _interleave_by_rank(picks: Tensor, labels: Tensor) -> Tensor:
    """Reorder class-sorted picks as rank 0 of every class, then rank 1, ... (prefixes stay
    class-balanced)."""
    ranks = torch.zeros(len(picks), dtype=torch.int64)
    picked = labels[picks]
    for c in torch.unique(picked):
        where = torch.nonzero(picked == c).flatten()
        ranks[where] = torch.arange(len(where))
    order = sorted(range(len(picks)), key=lambda i: (int(ranks[i]), int(picked[i])))
    return picks[torch.tensor(order, dtype=torch.int64)]


def _even_share(counts: Tensor, budget: int) -> int:
    """The smallest per-class budget ``s`` with ``sum(min(count, s)) >= min(budget, total)``:
    a class smaller than its share hands the rest to the others, so a budget of ``budget``
    items is always filled while the data has that many."""
    target = min(budget, int(counts.sum()))
    share = math.ceil(target / len(counts))
    while int(counts.clamp(max=share).sum()) < target:
        share += 1
    return share


class SelectorExemplarsStrategy(ExemplarsSelectionStrategy):
    """Avalanche exemplar ranking by any registered selector, on the strategy's current model.

    Features and logits come from the model's last linear layer
    (:func:`replay_lcmat.selection.extract_outputs` with ``stats``), computed on the data's eval
    transform group; the model (mode, parameters, BatchNorm buffers) is left as it was. Selection is class-balanced; a group with
    several classes is returned interleaved by rank so that any prefix stays balanced.

    Args:
        name_or_selector: a selector name (``"lcmat-s"``, ``"craig"``, ``"herding"``, ...) or a
            :class:`replay_lcmat.selection.Selector`.
        seed: seed of randomised selectors (per class: ``derive_seed(seed, label)``).
        stats: normalisation statistics of the extraction: ``"running"`` (eval mode),
            ``"class-batch"`` (BatchNorm over batches of one class, as the LCMat reference
            code) or ``"class-center"``; default
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`.
        batch_size: samples per batch when the data are read.
        **options: selector options, e.g. ``eps=0.05`` for LCMat-S.
    """

    def __init__(
        self,
        name_or_selector="lcmat-s",
        *,
        seed: int = 0,
        stats: str = DEFAULT_STATS,
        batch_size: int = 256,
        **options,
    ) -> None:
        check_stats(stats)
        if isinstance(name_or_selector, str):
            if policy_kind(name_or_selector) != "selection":
                raise ValueError(
                    f"{name_or_selector!r} is a condensation policy; use CondensedClassBuffer "
                    "(or LCMatReplayPlugin(policy=...)) for synthetic exemplars."
                )
            needs = SELECTORS[name_or_selector].needs
        elif callable(getattr(name_or_selector, "select", None)):
            if options:
                raise ValueError("options apply to a selector name; configure the selector.")
            needs = getattr(name_or_selector, "needs", ("features", "logits"))
        else:
            raise ValueError(
                f"name_or_selector must be a selector name or a Selector; got {name_or_selector!r}."
            )
        self.selector = name_or_selector
        self.needs = tuple(needs)
        self.seed = seed
        self.stats = stats
        self.batch_size = batch_size
        self.options = options

    def make_sorted_indices(
        self, strategy, data: AvalancheDataset, budget: int | None = None
    ) -> list[int]:
        """Indices of ``data`` in keep-first order.

        Args:
            strategy: the Avalanche strategy (its ``model`` and ``device`` are used).
            data: the group to rank (may be empty: returns ``[]``).
            budget: how many exemplars will be kept; ``None`` (Avalanche's own buffers never
                tell) ranks the whole group, which for greedy selectors costs a full greedy run.
        """
        n = len(data)
        if n == 0:
            return []
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1 or None; got {budget}.")
        features = logits = None
        if self.needs:
            x, labels, _ = dataset_tensors(data, batch_size=self.batch_size)
            outputs = extract_outputs(
                strategy.model, x, labels=labels, stats=self.stats, device=strategy.device
            )
            features, logits = outputs.features, outputs.logits
        else:
            labels = _targets(data)
        counts = torch.unique(labels, return_counts=True)[1]
        per_class = int(counts.max()) if budget is None else _even_share(counts, budget)
        picks = select_exemplars(
            self.selector,
            labels=labels,
            features=features,
            logits=logits,
            per_class=per_class,
            seed=self.seed,
            rank_small=True,
            **self.options,
        )
        order = _interleave_by_rank(picks, labels) if len(counts) > 1 else picks
        if budget is not None:
            order = order[:budget]
        return order.tolist()

    def __repr__(self) -> str:
        return (
            f"SelectorExemplarsStrategy({self.selector!r}, seed={self.seed}, "
            f"stats={self.stats!r}, {self.options})"
        )


class _ClassExemplars(ExemplarsBuffer):
    """The exemplars of one class, in rank order, with their sources ``[k, 2]`` =
    (experience id, index in that experience's dataset)."""

    def __init__(self, label: int, max_size: int, selection_strategy) -> None:
        super().__init__(max_size)
        self.label = label
        self.selection_strategy = selection_strategy
        self.sources = torch.zeros(0, 2, dtype=torch.int64)
        self.ranked = True

    def add(self, strategy, data: AvalancheDataset, sources: Tensor) -> None:
        """Merge new samples of the class and keep the best ``max_size`` of old + new."""
        if len(self.buffer):
            data, sources = self.buffer.concat(data), torch.cat([self.sources, sources])
        if len(data) < self.max_size:
            warn_small_class(self.label, len(data), self.max_size)
        self._keep(strategy, data, sources, self.max_size)

    def _keep(self, strategy, data: AvalancheDataset, sources: Tensor, k: int) -> None:
        if len(data) <= k:  # fits: stored as is, ranked only if it must shrink later
            self.buffer, self.sources, self.ranked = data, sources, len(data) <= 1
            return
        if isinstance(self.selection_strategy, SelectorExemplarsStrategy):
            order = self.selection_strategy.make_sorted_indices(strategy, data, budget=k)
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
    """``mem_per_class`` real exemplars of every class seen so far, chosen by a selector.

    A ``ParametricBuffer`` grouped by class whose groups have a fixed size ``mem_per_class``
    (Avalanche's own splits a fixed total over the groups). After each experience the new
    samples of each class are merged with its exemplars and the best ``mem_per_class`` kept;
    the selection strategy is told that budget. A class with fewer samples is stored whole
    with a warning. ``max_size`` is the current capacity, ``mem_per_class`` x classes seen.

    Args:
        mem_per_class: exemplars per class.
        selection_strategy: a selector name, a :class:`SelectorExemplarsStrategy`, or any
            Avalanche ``ExemplarsSelectionStrategy``.
        **selector_options: options of the selector when a name is given (e.g. ``seed=1``).
    """

    def __init__(
        self, mem_per_class: int, selection_strategy="lcmat-s", **selector_options
    ) -> None:
        check_budget(mem_per_class, "mem_per_class")
        if isinstance(selection_strategy, str):
            selection_strategy = SelectorExemplarsStrategy(selection_strategy, **selector_options)
        elif selector_options:
            raise ValueError("selector options apply to a selector name only.")
        super().__init__(max_size=0, groupby="class", selection_strategy=selection_strategy)
        self.mem_per_class = mem_per_class

    def get_group_lengths(self, num_groups: int) -> list[int]:
        return [self.mem_per_class] * num_groups

    def post_adapt(self, agent, exp) -> None:
        data = exp.dataset
        if len(data) == 0:
            return
        targets = _targets(data)
        for label in torch.unique(targets).tolist():
            idx = torch.nonzero(targets == label).flatten()
            sources = torch.stack([torch.full_like(idx, exp.current_experience), idx], dim=1)
            group = self.buffer_groups.get(label)
            if group is None:
                group = _ClassExemplars(label, self.mem_per_class, self.selection_strategy)
                self.buffer_groups[label] = group
            group.add(agent, data.subset(idx), sources)
            self.seen_groups.add(label)
        self.max_size = self.mem_per_class * len(self.buffer_groups)

    def resize(self, strategy, new_size: int) -> None:
        """Avalanche semantics: ``new_size`` is the total, split equally over the seen classes."""
        groups = max(1, len(self.buffer_groups))
        per_class = new_size // groups
        if per_class < 1:
            raise ValueError(
                f"a total of {new_size} cannot hold one exemplar for each of {groups} classes; "
                f"pass at least {groups}."
            )
        self.mem_per_class = per_class
        for group in self.buffer_groups.values():
            group.resize(strategy, per_class)
        self.max_size = per_class * len(self.buffer_groups)

    def exemplar_sources(self) -> dict[int, Tensor]:
        """``{class: int64 [k, 2]}``: (experience id, index in its dataset) of each exemplar."""
        return {c: g.sources.clone() for c, g in self.buffer_groups.items()}

    def state_dict(self) -> dict:
        """The memory as plain tensors: per class, the sources of its exemplars in rank order."""
        classes = list(self.buffer_groups)
        return {
            "format": STATE_FORMAT,
            "mem_per_class": self.mem_per_class,
            "classes": classes,
            "sources": [self.buffer_groups[c].sources.clone() for c in classes],
            "ranked": [self.buffer_groups[c].ranked for c in classes],
        }

    def load_state_dict(self, state: dict, stream) -> None:
        """Restore the memory of :meth:`state_dict` from the experiences of ``stream`` (the
        benchmark's train stream the exemplars were taken from)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "not a selection-buffer state; pass the dict of SelectionBuffer.state_dict()."
            )
        if stream is None:
            raise ValueError(
                "a selection memory stores indices into the stream: pass stream=<the benchmark's "
                "train_stream> to restore it."
            )
        self.buffer_groups = {}
        self.mem_per_class = state["mem_per_class"]
        for label, sources, ranked in zip(
            state["classes"], state["sources"], state["ranked"], strict=True
        ):
            group = _ClassExemplars(label, self.mem_per_class, self.selection_strategy)
            group.buffer, group.sources = _gather(stream, sources), sources.clone()
            group.ranked = ranked
            self.buffer_groups[label] = group
        self.seen_groups = set(self.buffer_groups)
        self.max_size = self.mem_per_class * len(self.buffer_groups)


def _gather(stream, sources: Tensor) -> AvalancheDataset:
    """The samples at ``sources`` [k, 2] (experience id, index), in that order."""
    if len(sources) == 0:
        return concat_datasets([])
    experiences = torch.unique(sources[:, 0]).tolist()
    datasets, offsets, total = [], {}, 0
    for e in experiences:
        if e >= len(stream) or stream[e].current_experience != e:
            raise ValueError(
                f"the memory refers to experience {e}, which this stream does not hold; restore "
                "with the train stream of the same benchmark (same class order)."
            )
        datasets.append(stream[e].dataset)
        offsets[e], total = total, total + len(stream[e].dataset)
    index = torch.tensor([offsets[int(e)] + int(i) for e, i in sources.tolist()])
    return concat_datasets(datasets).subset(index)
