"""One plugin for LCMat replay: it picks the selection- or condensation-based storage policy."""

from __future__ import annotations

import torch
from avalanche.training.plugins import ReplayPlugin

from replay_lcmat.buffers import policy_kind
from replay_lcmat.strategies.condensed_buffer import CondensedClassBuffer
from replay_lcmat.strategies.selection_policy import SelectionBuffer, SelectorExemplarsStrategy


def make_storage_policy(
    policy: str,
    mem_per_class: int,
    *,
    seed: int = 0,
    iterations: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    batch_size: int = 256,
    stats: str | None = None,
    **options,
) -> SelectionBuffer | CondensedClassBuffer:
    """The storage policy of ``policy``: a :class:`SelectionBuffer` for a selector name
    (``"lcmat-s"``, ``"uniform"``, ...), a :class:`CondensedClassBuffer` for a condenser name
    (``"lcmat-c"``, ``"dm"``, ...).

    Args:
        seed: seed of randomised selectors / of the condensation.
        iterations, device, progress: condensation only (device: default the strategy's).
        batch_size: samples per batch when data are read.
        stats: selection only: the normalisation statistics of the extraction (see
            :class:`SelectorExemplarsStrategy`).
        **options: selector or condenser options (e.g. ``eps=0.05``, ``network_options=...``).
    """
    if policy_kind(policy) == "selection":
        if iterations is not None:
            raise ValueError(
                f"iterations applies to condensation policies, not to the selector {policy!r}."
            )
        if stats is not None:
            options["stats"] = stats
        strategy = SelectorExemplarsStrategy(policy, seed=seed, batch_size=batch_size, **options)
        return SelectionBuffer(mem_per_class, strategy)
    if stats is not None:
        raise ValueError(
            f"stats applies to selection policies; the condenser {policy!r} trains its own "
            "networks. Drop stats=."
        )
    return CondensedClassBuffer(
        mem_per_class,
        policy,
        iterations=iterations,
        device=device,
        seed=seed,
        progress=progress,
        batch_size=batch_size,
        **options,
    )


class MemoryStateMixin:
    """``state_dict`` / ``load_state_dict`` of a plugin's memory (its ``storage_policy``),
    saved next to the model and optimizer state, e.g.
    ``torch.save({"memory": plugin.state_dict(), "model": model.state_dict()}, path)``."""

    policy: str

    def state_dict(self) -> dict:
        """The memory: selected indices or condensed tensors, per class, and the policy name."""
        return {"policy": self.policy, "storage": self.storage_policy.state_dict()}

    def load_state_dict(self, state: dict, stream=None) -> None:
        """Restore :meth:`state_dict`; selection memories need ``stream`` (the train stream)."""
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
    experience the storage policy adds ``mem_per_class`` exemplars of each new class. The memory
    is ``plugin.storage_policy.buffer``; ``mem_size`` follows its capacity
    (``mem_per_class`` x classes seen).

    Args:
        mem_per_class: exemplars per class.
        policy: a selector name (real exemplars, ranked with the strategy's current model) or a
            condenser name (synthetic exemplars); see :func:`make_storage_policy`.
        batch_size, batch_size_mem, task_balanced_dataloader: as in ``ReplayPlugin``.
        seed, iterations, device, progress, **policy_options: see :func:`make_storage_policy`.
    """

    def __init__(
        self,
        mem_per_class: int = 10,
        policy: str = "lcmat-s",
        *,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        seed: int = 0,
        iterations: int | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        **policy_options,
    ) -> None:
        storage = make_storage_policy(
            policy,
            mem_per_class,
            seed=seed,
            iterations=iterations,
            device=device,
            progress=progress,
            **policy_options,
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
    def mem_per_class(self) -> int:
        return self.storage_policy.mem_per_class

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)
        self.mem_size = self.storage_policy.max_size

    def load_state_dict(self, state: dict, stream=None) -> None:
        super().load_state_dict(state, stream)
        self.mem_size = self.storage_policy.max_size
