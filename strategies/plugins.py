"""One plugin for LCMat replay: it picks the selection- or condensation-based storage policy."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from avalanche.training.plugins import ReplayPlugin

from replay_lcmat.memory import memory_policy
from replay_lcmat.strategies.condensed_buffer import CondensedClassBuffer
from replay_lcmat.strategies.selection_policy import SelectionBuffer
from replay_lcmat.strategies.selector_strategy import SelectorExemplarsStrategy
from replay_lcmat.strategies.sizing import check_sizing


def make_storage_policy(
    policy: str,
    per_class: int | None = None,
    *,
    mem_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    batch_size: int = 256,
    stats: str | None = None,
    layer_name: str | None = None,
) -> SelectionBuffer | CondensedClassBuffer:
    """The storage policy of ``policy``, by the policy's kind: a :class:`SelectionBuffer` (of a
    :class:`SelectorExemplarsStrategy`) for a selector name (``"lcmat-s"``, ``"uniform"``,
    ...), a :class:`CondensedClassBuffer` for a condenser name (``"lcmat-c"``, ``"dm"``, ...).
    Every option is checked here.

    Args:
        policy: a selector or condenser name.
        per_class, mem_size: the sizing, exactly one of the two (see :class:`SelectionBuffer`).
        options: the selector's or condenser's own options (e.g. ``{"eps": 0.05}``;
            ``{"iterations": 10, "network_options": {"width": 32}}``). A condenser's default
            iterations are the papers' (GPU-scale; see :class:`CondensedClassBuffer` for the
            cost and CPU-sized settings).
        seed: seed of randomised selectors / of the condensation.
        device: where the model's outputs are taken / where condensation runs (``None``: the
            strategy's device).
        progress: a progress bar (``None``: the condensation's, not the selection's).
        batch_size: samples per batch when data are read.
        stats, layer_name: selection policies only: how the strategy's model is read (see
            :class:`SelectorExemplarsStrategy`); a condensation policy trains its own
            networks and refuses them.
    """
    kind = memory_policy(policy).kind
    check_sizing(per_class, mem_size)
    if kind == "condensation":
        for name, value in (("stats", stats), ("layer_name", layer_name)):
            if value is not None:
                raise ValueError(
                    f"{name} applies to selection policies; the condenser {policy!r} trains its "
                    f"own networks. Drop {name}=."
                )
        return CondensedClassBuffer(
            per_class,
            policy,
            mem_size=mem_size,
            options=options,
            device=device,
            seed=seed,
            progress=True if progress is None else progress,
            batch_size=batch_size,
        )
    strategy = SelectorExemplarsStrategy(
        policy,
        options=options,
        seed=seed,
        stats=stats,
        batch_size=batch_size,
        layer_name=layer_name,
        device=device,
    )
    return SelectionBuffer(per_class, strategy, mem_size=mem_size)


class MemoryStateMixin:
    """``state_dict`` / ``load_state_dict`` of a plugin's memory (its ``storage_policy``),
    saved next to the model and optimizer state, e.g.
    ``torch.save({"memory": plugin.state_dict(), "model": model.state_dict()}, path)``."""

    policy: str

    def state_dict(self) -> dict:
        """The memory: selected indices or condensed tensors, per class, and the policy name."""
        return {"policy": self.policy, "storage": self.storage_policy.state_dict()}

    def load_state_dict(self, state: dict, stream=None) -> None:
        """Restore :meth:`state_dict`; selection memories need ``stream`` (the train stream the
        memory was built from). The plugin must have the saved policy and ``per_class``;
        a memory that does not match ``stream`` is refused (see
        :meth:`SelectionBuffer.load_state_dict`)."""
        if not isinstance(state, dict) or "storage" not in state:
            raise ValueError("not a plugin memory state; pass the dict of plugin.state_dict().")
        if state.get("policy") != self.policy:
            raise ValueError(
                f"the saved memory was built by policy {state.get('policy')!r}, this plugin uses "
                f"{self.policy!r}; restore into a plugin with the same policy."
            )
        self.storage_policy.load_state_dict(state["storage"], stream)


class LCMatReplayPlugin(MemoryStateMixin, ReplayPlugin):
    """Experience replay whose memory is built by LCMat-S, LCMat-C or any registered policy.

    An Avalanche ``ReplayPlugin``: while training on an experience every mini-batch is the
    current data plus a mini-batch of memory (Avalanche's ``ReplayDataLoader``); after the
    experience the storage policy adds the exemplars of each new class. Two sizings, exactly
    one of which is given: ``per_class=k`` keeps ``k`` exemplars of every class seen (the memory
    grows; ``plugin.mem_size`` follows it, ``k`` x classes seen), ``mem_size=N`` is Avalanche's
    fixed total split evenly over the classes seen (older classes shrink to the prefix of their
    greedy ranking as new ones arrive). The memory is ``plugin.storage_policy.buffer``. Every
    option is checked here, before any training; a warning is given when training starts if
    another replay plugin (Avalanche's ``ReplayPlugin``, e.g. from its ``Replay`` strategy, or
    another of ours) is on the same strategy: each would add its own memory to the batches.

    Works with any Avalanche classifier (``SimpleMLP``, ``SimpleCNN``, torchvision models,
    ``IncrementalClassifier`` heads) and with multi-task models (``MTSimpleMLP``,
    ``MultiHeadClassifier``): the memory carries each exemplar's task label, and a selection
    policy ranks each sample through its task's head.

    The storage policies also work with Avalanche's own ``ReplayPlugin``:
    ``ReplayPlugin(mem_size=buffer.max_size, storage_policy=buffer)`` with
    ``buffer = SelectionBuffer(per_class, "lcmat-s")`` (its capacity grows per class, so it
    has no fixed total to give as ``mem_size``); this plugin does that for you.

    Cost: selection policies take one forward pass over each experience (seconds on a CPU).
    Condensation policies run the condenser's paper settings by default (LCMat-C: 1000
    iterations of a ConvNet-3 per experience; GPU-scale: on a CPU one to several minutes per
    iteration even on 8x8 digits, a day or more per experience, and a warning says so). To try
    them on a CPU pass smaller settings, e.g. ``LCMatReplayPlugin(10, "lcmat-c",
    options={"iterations": 10, "outer_loop": 1, "inner_loop": 1, "network_options": {"width":
    32, "depth": 2}})`` (about 30 s per digits experience); see :class:`CondensedClassBuffer`.
    A progress bar with the time left is shown while condensing.

    Args:
        per_class: exemplars per class (a growing memory).
        mem_size: the fixed total of the memory (Avalanche's sizing).
        policy: a selector name (real exemplars, ranked with the strategy's current model) or a
            condenser name (synthetic exemplars); see :func:`make_storage_policy`.
        batch_size, batch_size_mem, task_balanced_dataloader: as in ``ReplayPlugin``.
        options, seed, device, progress, stats, layer_name: see :func:`make_storage_policy`.
    """

    def __init__(
        self,
        per_class: int | None = None,
        policy: str = "lcmat-s",
        *,
        mem_size: int | None = None,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        options: Mapping[str, Any] | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        progress: bool | None = None,
        stats: str | None = None,
        layer_name: str | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("batch_size_mem", batch_size_mem)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be None or an integer >= 1; got {value!r}.")
        storage = make_storage_policy(
            policy,
            per_class,
            mem_size=mem_size,
            options=options,
            seed=seed,
            device=device,
            progress=progress,
            stats=stats,
            layer_name=layer_name,
        )
        super().__init__(
            mem_size=storage.max_size,
            batch_size=batch_size,
            batch_size_mem=batch_size_mem,
            task_balanced_dataloader=task_balanced_dataloader,
            storage_policy=storage,
        )
        self.policy = policy

    @property
    def per_class(self) -> int | None:
        """Exemplars per class of a ``per_class`` memory; the current share of a ``mem_size``
        memory (selection: ``None``, shares differ by one; see ``storage_policy``)."""
        return self.storage_policy.per_class

    def before_training(self, strategy, *args, **kwargs) -> None:
        others = [
            type(p).__name__
            for p in getattr(strategy, "plugins", [])
            if p is not self and isinstance(p, ReplayPlugin | MemoryStateMixin)
        ]
        if others and not getattr(self, "_stacked_warned", False):
            self._stacked_warned = True  # once per plugin, not at every train() call
            warnings.warn(
                f"another replay plugin is on this strategy ({', '.join(others)}) besides "
                f"LCMatReplayPlugin({self.policy!r}): each adds its own memory to the training "
                "batches. Keep one replay plugin (with Avalanche's Replay strategy, use Naive "
                "with this plugin instead).",
                UserWarning,
                stacklevel=2,
            )
        super().before_training(strategy, *args, **kwargs)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)
        self.mem_size = self.storage_policy.max_size

    def load_state_dict(self, state: dict, stream=None) -> None:
        super().load_state_dict(state, stream)
        self.mem_size = self.storage_policy.max_size
