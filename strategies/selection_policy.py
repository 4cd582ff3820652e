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
(:class:`LCMatReplayPlugin` passes the buffer's own value for you). For Avalanche's semantics (a fixed total
split equally over the classes seen) use Avalanche's ``ParametricBuffer`` with
:class:`SelectorExemplarsStrategy`::

    buffer = ParametricBuffer(100, groupby="class", selection_strategy=SelectorExemplarsStrategy())
    ReplayPlugin(mem_size=100, storage_policy=buffer)

(Avalanche never tells the strategy the budget, so a greedy selector then ranks whole groups.)

Multi-task models (Avalanche's ``MultiTaskModule``: ``MTSimpleMLP``, ``MultiHeadClassifier``)
are run with each sample's task label, through the head of that task.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from avalanche.benchmarks.utils import AvalancheDataset, concat_datasets
from avalanche.models import MultiTaskModule
from avalanche.training.storage_policy import (
    ExemplarsBuffer,
    ExemplarsSelectionStrategy,
    ParametricBuffer,
)
from torch import Tensor, nn

from replay_lcmat.memory import SelectionPolicy, check_per_class, memory_policy
from replay_lcmat.selection import extract_outputs, make_selector
from replay_lcmat.selection.engine import fit_budgets
from replay_lcmat.selection.extract import DEFAULT_STATS, check_stats
from replay_lcmat.strategies.datasets import dataset_tensors

STATE_FORMAT = "replay-lcmat/selection-buffer"
# The one state layout read back: per class the sources, labels and image fingerprints of the
# exemplars, and the stream name; any other version is refused.
STATE_VERSION = 2
# Logit given to the classes another task's head does not have, when the samples of one group
# come from heads of different widths: probability 0, like Avalanche's masking (-1000).
PAD_LOGIT = -1000.0


class TaskModel(nn.Module):
    """``model(x, task_label)`` of a multi-task model as a one-argument model: the head of one
    task (for :func:`replay_lcmat.selection.extract_outputs`). The model's train/eval flag is
    mirrored, not changed."""

    def __init__(self, model: nn.Module, task_label: int) -> None:
        super().__init__()
        self.model = model
        self.task_label = int(task_label)
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.task_label)


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


def _even_share(counts: Tensor, total: int) -> int:
    """A total as a per-class budget (a group may hold several classes): the smallest ``s``
    with ``sum(min(count, s)) >= min(total, samples)``, so a class smaller than ``s`` is taken
    whole and the total is still filled while the data has that many."""
    target = min(total, int(counts.sum()))
    share = math.ceil(target / len(counts))
    while int(counts.clamp(max=share).sum()) < target:
        share += 1
    return share


class SelectorExemplarsStrategy(ExemplarsSelectionStrategy):
    """Avalanche exemplar ranking by any registered selector, on the strategy's current model.

    Features and logits come from the model's last linear layer
    (:func:`replay_lcmat.selection.extract_outputs` with ``stats``), computed on the data's eval
    transform group; the model (mode, parameters, BatchNorm buffers) is left as it was. The
    split of the model is verified on the data (Avalanche's ``SimpleMLP``, torchvision models,
    ``IncrementalClassifier`` masking included; see :func:`replay_lcmat.models.split_head`). A
    multi-task model (Avalanche ``MultiTaskModule``) is run with each sample's task label, i.e.
    through that task's head. Selection is class-balanced; a group with several classes is
    returned interleaved by rank so that any prefix stays balanced.

    Options are checked here (the selector is built once), not at the first experience.

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
        for name, value in (("seed", seed), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer; got {value!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        if isinstance(name_or_selector, str):
            policy = memory_policy(name_or_selector)
            if not isinstance(policy, SelectionPolicy):
                raise ValueError(
                    f"{name_or_selector!r} is a {policy.kind} policy; use CondensedClassBuffer "
                    "(or LCMatReplayPlugin(policy=...)) for synthetic exemplars."
                )
            seeded = {"seed": seed} if policy.entry.accepts("seed") else {}
            selector = make_selector(policy.name, **seeded, **options)  # bad options fail here
        elif callable(getattr(name_or_selector, "select", None)):
            if options:
                raise ValueError("options apply to a selector name; configure the selector.")
            selector = name_or_selector
        else:
            raise ValueError(
                f"name_or_selector must be a selector name or a Selector; got {name_or_selector!r}."
            )
        self.selector = name_or_selector
        self._selector = selector
        self.needs = tuple(getattr(selector, "needs", ("features", "logits")))
        self.seed = seed
        self.stats = stats
        self.batch_size = batch_size
        self.options = options

    def make_sorted_indices(
        self, strategy, data: AvalancheDataset, total: int | None = None
    ) -> list[int]:
        """Indices of ``data`` in keep-first order.

        Args:
            strategy: the Avalanche strategy (its ``model`` and ``device`` are used).
            data: the group to rank (may be empty: returns ``[]``).
            total: how many exemplars of the group will be kept; ``None`` (Avalanche's own buffers never
                tell) ranks the whole group, which for greedy selectors costs a full greedy run.
        """
        n = len(data)
        if n == 0:
            return []
        if total is not None and total < 1:
            raise ValueError(f"total must be >= 1 or None; got {total}.")
        features = logits = None
        if self.needs:
            x, labels, tasks = dataset_tensors(data, batch_size=self.batch_size)
            features, logits = self._outputs(strategy, x, labels, tasks)
        else:
            labels = _targets(data)
        classes, counts = torch.unique(labels, return_counts=True)
        # total None: rank every class whole; else the total shared out evenly (_even_share)
        share = int(counts.max()) if total is None else _even_share(counts, total)
        per_class = {
            c: min(n, share) for c, n in zip(classes.tolist(), counts.tolist(), strict=True)
        }
        picks = self._selector.select(
            labels=labels, features=features, logits=logits, per_class=per_class
        ).indices
        order = _interleave_by_rank(picks, labels) if len(counts) > 1 else picks
        if total is not None:
            order = order[:total]
        return order.tolist()

    def _outputs(self, strategy, x: Tensor, labels: Tensor, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits of the strategy's model; a multi-task model per task label, with
        logits of narrower heads padded with :data:`PAD_LOGIT`."""
        model = strategy.model
        if not isinstance(model, MultiTaskModule):
            out = extract_outputs(model, x, labels=labels, stats=self.stats, device=strategy.device)
            return out.features, out.logits
        parts = []
        for task in torch.unique(tasks).tolist():
            rows = torch.nonzero(tasks == task).flatten()
            out = extract_outputs(
                TaskModel(model, task),
                x[rows],
                labels=labels[rows],
                stats=self.stats,
                device=strategy.device,
            )
            parts.append((rows, out))
        width = max(out.logits.shape[1] for _, out in parts)
        features = torch.empty(len(x), parts[0][1].features.shape[1])
        logits = torch.full((len(x), width), PAD_LOGIT)
        for rows, out in parts:
            features[rows] = out.features
            logits[rows, : out.logits.shape[1]] = out.logits
        return features, logits

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
        fit_budgets({self.label: len(data)}, {self.label: self.max_size})  # the small-class warning
        self._keep(strategy, data, sources, self.max_size)

    def _keep(self, strategy, data: AvalancheDataset, sources: Tensor, k: int) -> None:
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

    A ``ParametricBuffer`` grouped by class whose groups have a fixed size ``per_class``
    (Avalanche's own splits a fixed total over the groups). After each experience the new
    samples of each class are merged with its exemplars and the best ``per_class`` kept;
    the selection strategy is told that budget. A class with fewer samples is stored whole
    with a warning. ``max_size`` is the current capacity, ``per_class`` x classes seen
    (0 before the first experience).

    Groups are class labels, as in Avalanche's ``ParametricBuffer(groupby="class")``: in a
    benchmark whose tasks reuse class labels, a label's exemplars are chosen among the samples of
    all its tasks together, each ranked through its own task's head.

    With Avalanche's ``ReplayPlugin``: ``ReplayPlugin(mem_size=buffer.max_size,
    storage_policy=buffer)`` (see the module docstring); :class:`LCMatReplayPlugin` does it.

    Save and restore with :meth:`state_dict` / :meth:`load_state_dict`; the state holds indices
    into the stream, with the labels and a fingerprint of the images, so a restore with another
    stream is refused.

    Args:
        per_class: exemplars per class.
        selection_strategy: a selector name, a :class:`SelectorExemplarsStrategy`, or any
            Avalanche ``ExemplarsSelectionStrategy``.
        **selector_options: options of the selector when a name is given (e.g. ``seed=1``);
            checked here.
    """

    def __init__(self, per_class: int, selection_strategy="lcmat-s", **selector_options) -> None:
        per_class = check_per_class(per_class)
        if isinstance(selection_strategy, str):
            selection_strategy = SelectorExemplarsStrategy(selection_strategy, **selector_options)
        elif selector_options:
            raise ValueError("selector options apply to a selector name only.")
        super().__init__(max_size=0, groupby="class", selection_strategy=selection_strategy)
        self.per_class = per_class
        self.max_size = 0  # grows by per_class with every class seen
        self.stream_name: str | None = None

    @classmethod
    def from_policy(
        cls,
        policy: str,
        per_class: int,
        *,
        seed: int = 0,
        iterations: int | None = None,
        device=None,
        progress: bool | None = None,
        batch_size: int = 256,
        stats: str | None = None,
        **options,
    ) -> SelectionBuffer:
        """The buffer of a selection policy name (see
        :func:`replay_lcmat.strategies.make_storage_policy`); refuses condensation-only options."""
        for name, value in (("iterations", iterations), ("device", device)):
            if value is not None:
                raise ValueError(
                    f"{name} applies to condensation policies; the selector {policy!r} runs the "
                    f"strategy's model on the strategy's device. Drop {name}=."
                )
        if stats is not None:
            options["stats"] = stats
        strategy = SelectorExemplarsStrategy(policy, seed=seed, batch_size=batch_size, **options)
        return cls(per_class, strategy)

    def get_group_lengths(self, num_groups: int) -> list[int]:
        return [self.per_class] * num_groups

    def post_adapt(self, agent, exp) -> None:
        data = exp.dataset
        if len(data) == 0:
            return
        self._note_stream(exp)
        targets = _targets(data)
        for label in torch.unique(targets).tolist():
            idx = torch.nonzero(targets == label).flatten()
            sources = torch.stack([torch.full_like(idx, exp.current_experience), idx], dim=1)
            group = self.buffer_groups.get(label)
            if group is None:
                group = _ClassExemplars(label, self.per_class, self.selection_strategy)
                self.buffer_groups[label] = group
            group.add(agent, data.subset(idx), sources)
            self.seen_groups.add(label)
        self.max_size = self.per_class * len(self.buffer_groups)

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
        """Avalanche semantics: ``new_size`` is the total, split equally over the seen classes."""
        groups = max(1, len(self.buffer_groups))
        per_class = new_size // groups
        if per_class < 1:
            raise ValueError(
                f"a total of {new_size} cannot hold one exemplar for each of {groups} classes; "
                f"pass at least {groups}."
            )
        self.per_class = per_class
        for group in self.buffer_groups.values():
            group.resize(strategy, per_class)
        self.max_size = per_class * len(self.buffer_groups)

    def exemplar_sources(self) -> dict[int, Tensor]:
        """``{class: int64 [k, 2]}``: (experience id, index in its dataset) of each exemplar."""
        return {c: g.sources.clone() for c, g in self.buffer_groups.items()}

    def state_dict(self) -> dict:
        """The memory as plain tensors (loadable with ``torch.load(weights_only=True)``): per
        class, the sources of its exemplars in rank order, their labels and a fingerprint of
        their images (:func:`image_fingerprint`), and the name of the stream they come from."""
        classes = list(self.buffer_groups)
        groups = [self.buffer_groups[c] for c in classes]
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "per_class": self.per_class,
            "stream": self.stream_name,
            "classes": classes,
            "sources": [g.sources.clone() for g in groups],
            "ranked": [g.ranked for g in groups],
            "labels": [_targets(g.buffer) for g in groups],
            "fingerprints": [image_fingerprint(g.buffer) for g in groups],
        }

    def load_state_dict(self, state: dict, stream) -> None:
        """Restore the memory of :meth:`state_dict` from the experiences of ``stream``: the
        stream the exemplars were taken from (the benchmark's ``train_stream``, same class order
        and number of experiences; ``test_stream`` or another split is refused).

        Every exemplar is checked: its experience and index exist in ``stream``, its label is
        the saved one and its image has the saved fingerprint; the buffer is left unchanged when
        a check fails.

        Raises:
            ValueError: not a selection-buffer state; no stream; another ``per_class``
                (build the buffer with the saved one, then :meth:`resize`); another stream.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "not a selection-buffer state; pass the dict of SelectionBuffer.state_dict()."
            )
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"selection-buffer state version {state.get('version')!r}; this replay-lcmat "
                f"reads version {STATE_VERSION} only. Rebuild the memory with this version."
            )
        if stream is None:
            raise ValueError(
                "a selection memory stores indices into the stream: pass stream=<the benchmark's "
                "train_stream> to restore it."
            )
        saved_per_class = state["per_class"]
        if saved_per_class != self.per_class:
            raise ValueError(
                f"the saved memory keeps {saved_per_class} exemplars per class, this buffer "
                f"{self.per_class}; restore into a buffer (or plugin) built with "
                f"per_class={saved_per_class}, then resize it if you want another size."
            )
        saved_name, name = state["stream"], getattr(stream, "name", None)
        # a memory built from an unnamed stream only refuses the test stream
        other = name != saved_name if saved_name is not None else name == "test"
        if name is not None and other:
            raise ValueError(
                f"the memory was built from the {saved_name or 'train'!r} stream, this is the "
                f"{name!r} stream; restore with the stream the exemplars were taken from "
                "(benchmark.train_stream for a memory built while training)."
            )
        rows = zip(
            state["classes"],
            state["sources"],
            state["ranked"],
            state["labels"],
            state["fingerprints"],
            strict=True,
        )
        experiences = _experiences(stream, state["sources"])
        groups = {}
        for label, sources, ranked, saved_labels, saved_print in rows:
            group = _ClassExemplars(label, saved_per_class, self.selection_strategy)
            group.buffer, group.sources = _gather(experiences, sources, name), sources.clone()
            _check_group(label, group, saved_labels, saved_print)
            group.ranked = ranked
            groups[label] = group
        self.buffer_groups = groups
        self.seen_groups = set(groups)
        self.stream_name = saved_name if saved_name is not None else name
        self.max_size = self.per_class * len(groups)


def image_fingerprint(data: AvalancheDataset) -> Tensor | None:
    """float64 ``[k, 2]``: per sample, the sum and the sum of squares of its image as read in the
    eval transform group; ``None`` when the images are not tensors. Cheap, and tells which
    sample differs."""
    if len(data) == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    try:
        x, _, _ = dataset_tensors(data)
    except ValueError:
        return None
    flat = x.flatten(1).double()
    return torch.stack([flat.sum(1), flat.square().sum(1)], dim=1)


def _experiences(stream, sources: list[Tensor]) -> dict[int, AvalancheDataset]:
    """``{experience id: dataset}`` of the experiences the sources refer to (any stream,
    including generator streams without ``len``)."""
    needed = {int(e) for s in sources for e in s[:, 0].tolist()}
    found: dict[int, AvalancheDataset] = {}
    if needed:
        for exp in stream:
            e = int(exp.current_experience)
            if e in needed:
                found[e] = exp.dataset
                if len(found) == len(needed):
                    break
    missing = sorted(needed - set(found))
    if missing:
        raise ValueError(
            f"the memory refers to experience(s) {missing}, which the "
            f"{getattr(stream, 'name', 'given')!r} stream does not hold; restore with the train "
            "stream of the same benchmark (same class order and number of experiences)."
        )
    return found


def _gather(experiences: dict[int, AvalancheDataset], sources: Tensor, name) -> AvalancheDataset:
    """The samples at ``sources`` [k, 2] (experience id, index), in that order."""
    if len(sources) == 0:
        return concat_datasets([])
    used = torch.unique(sources[:, 0]).tolist()
    offsets, total = {}, 0
    for e in used:
        size = len(experiences[e])
        bad = sources[(sources[:, 0] == e) & (sources[:, 1] >= size), 1]
        if len(bad):
            raise ValueError(
                f"the memory refers to sample {int(bad[0])} of experience {e}, which has only "
                f"{size} samples in the {name!r} stream; restore with the stream the memory was "
                "built from (the train stream, same class order and number of experiences)."
            )
        offsets[e], total = total, total + size
    index = torch.tensor([offsets[int(e)] + int(i) for e, i in sources.tolist()])
    return concat_datasets([experiences[e] for e in used]).subset(index)


def _check_group(label: int, group: _ClassExemplars, saved_labels, saved_print) -> None:
    """Raise unless the restored exemplars of class ``label`` have the saved labels and images."""
    got = _targets(group.buffer)
    expected = saved_labels
    wrong = torch.nonzero(got != expected).flatten()
    if len(wrong):
        j = int(wrong[0])
        e, i = group.sources[j].tolist()
        raise ValueError(
            f"the stream does not match the memory: class {label}'s exemplar at experience {e}, "
            f"sample {i} is a sample of class {int(got[j])} in this stream ({len(wrong)} of "
            f"{len(got)} exemplars differ). The memory was built from another stream (other class "
            "order, number of experiences or split); restore with that stream."
        )
    if saved_print is None:
        return
    now = image_fingerprint(group.buffer)
    if now is None:
        return
    close = torch.isclose(now, saved_print, rtol=1e-5, atol=1e-6).all(1)
    if not close.all():
        j = int(torch.nonzero(~close).flatten()[0])
        e, i = group.sources[j].tolist()
        raise ValueError(
            f"the stream does not match the memory: class {label}'s exemplar at experience {e}, "
            f"sample {i} has another image than when the memory was saved ({int((~close).sum())} "
            f"of {len(close)} differ): other data, another split or other eval transforms. "
            "Restore with the stream the memory was built from."
        )
