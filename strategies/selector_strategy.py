"""Avalanche exemplar ranking by any registered selector (:class:`SelectorExemplarsStrategy`),
on the strategy's current model, through the class-balanced selection engine.

Multi-task models (Avalanche's ``MultiTaskModule``: ``MTSimpleMLP``, ``MultiHeadClassifier``)
are run with each sample's task label, through the head of that task.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.models import MultiTaskModule
from avalanche.training.storage_policy import ExemplarsSelectionStrategy
from torch import Tensor, nn

from replay_lcmat.memory import SelectionPolicy, check_options, memory_policy, memory_selector
from replay_lcmat.selection import Selector, extract_outputs
from replay_lcmat.selection.extract import check_stats
from replay_lcmat.strategies.datasets import dataset_targets, dataset_tensors

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
        options: the selector's own options for a name, e.g. ``{"eps": 0.05}`` for LCMat-S
            (none: :data:`replay_lcmat.memory.MEMORY_DEFAULTS`; see
            :func:`replay_lcmat.memory.memory_selector`).
        seed: seed of randomised selectors (per class: ``derive_seed(seed, label)``).
        stats: normalisation statistics of the extraction: ``"running"`` (eval mode),
            ``"class-batch"`` (BatchNorm over batches of one class, as the LCMat reference
            code) or ``"class-center"``; ``None``:
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`.
        batch_size: samples per batch when the data are read.
        layer_name: the features are the output of this module of the model (a name of
            ``model.named_modules()``, e.g. ``"features.2"``), flattened, read in eval mode
            (BatchNorm running statistics; ``stats`` is not used), as the ``layer_name`` of
            Avalanche's herding strategy. Only for selectors that rank by features alone
            (``herding``, ``kcenter``): LCMat-S, Craig and the other gradient selectors take the
            last linear layer's gradients and curvature (LCMat Sec. 3), whose input is the
            default features. ``None``: the input of the last linear layer.
        device: where the model's outputs are taken (``None``: the strategy's device).
    """

    def __init__(
        self,
        name_or_selector: str | Selector = "lcmat-s",
        *,
        options: Mapping[str, Any] | None = None,
        seed: int = 0,
        stats: str | None = None,
        batch_size: int = 256,
        layer_name: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        stats = check_stats(stats)
        if layer_name is not None and not isinstance(layer_name, str):
            raise ValueError(f"layer_name must be a module name (str) or None; got {layer_name!r}.")
        for name, value in (("seed", seed), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer; got {value!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        options = check_options(options)
        if isinstance(name_or_selector, str):
            policy = memory_policy(name_or_selector)
            if not isinstance(policy, SelectionPolicy):
                raise ValueError(
                    f"{name_or_selector!r} is a {policy.kind} policy; use CondensedClassBuffer "
                    "(or LCMatReplayPlugin(policy=...)) for synthetic exemplars."
                )
            selector = memory_selector(policy.name, options, seed=seed)  # bad options fail here
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
        if layer_name is not None and self.needs != ("features",):
            raise ValueError(
                f"layer_name applies to selectors that rank by features alone (herding, kcenter); "
                f"{name_or_selector!r} uses {' and '.join(self.needs) or 'no model outputs'}: "
                "its gradients and curvature are the last linear layer's (LCMat Sec. 3), whose "
                "input is the default feature layer. Drop layer_name."
            )
        self.layer_name = layer_name
        self.seed = seed
        self.stats = stats
        self.batch_size = batch_size
        self.device = device
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
            labels = dataset_targets(data)
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
        device = strategy.device if self.device is None else self.device
        if self.layer_name is not None:
            return self._layer_features(model, x, tasks, device), None
        if not isinstance(model, MultiTaskModule):
            out = extract_outputs(model, x, labels=labels, stats=self.stats, device=device)
            return out.features, out.logits
        parts = []
        for task in torch.unique(tasks).tolist():
            rows = torch.nonzero(tasks == task).flatten()
            out = extract_outputs(
                TaskModel(model, task),
                x[rows],
                labels=labels[rows],
                stats=self.stats,
                device=device,
            )
            parts.append((rows, out))
        width = max(out.logits.shape[1] for _, out in parts)
        features = torch.empty(len(x), parts[0][1].features.shape[1])
        logits = torch.full((len(x), width), PAD_LOGIT)
        for rows, out in parts:
            features[rows] = out.features
            logits[rows, : out.logits.shape[1]] = out.logits
        return features, logits

    def _layer_features(self, model: nn.Module, x: Tensor, tasks: Tensor, device) -> Tensor:
        """The flattened output of the module ``layer_name`` for every sample, in eval mode, each
        sample run with its task label on a multi-task model; the model's mode is restored."""
        modules = dict(model.named_modules())
        layer = modules.get(self.layer_name)
        if layer is None:
            names = [n for n in modules if n][:12]
            raise ValueError(
                f"layer_name {self.layer_name!r} is not a module of {type(model).__name__}; its "
                f"modules include {names}."
            )
        captured: list[Tensor] = []
        # a copy: an in-place activation after the layer (ConvNet, torchvision) would overwrite it
        hook = layer.register_forward_hook(
            lambda _m, _i, out: captured.append(out.detach().clone())
        )
        modes = [(m, m.training) for m in model.modules()]  # restored module by module
        features = None
        try:
            model.eval()
            with torch.no_grad():
                for task in torch.unique(tasks).tolist():
                    rows = torch.nonzero(tasks == task).flatten()
                    for batch in rows.split(self.batch_size):
                        xb = x[batch].to(device)
                        captured.clear()
                        model(xb, task) if isinstance(model, MultiTaskModule) else model(xb)
                        out = captured[-1].flatten(1).float().cpu()
                        if features is None:
                            features = torch.empty(len(x), out.shape[1])
                        features[batch] = out
        finally:
            hook.remove()
            for module, training in modes:
                module.training = training
        return features

    def __repr__(self) -> str:
        layer = "" if self.layer_name is None else f", layer_name={self.layer_name!r}"
        return (
            f"SelectorExemplarsStrategy({self.selector!r}, seed={self.seed}, "
            f"stats={self.stats!r}{layer}, options={self.options})"
        )
