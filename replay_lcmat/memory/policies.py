"""Memory policies: how the exemplars of a class are chosen.

A policy is the name of a registered selector (real exemplars: ``"lcmat-s"``, ``"uniform"``,
``"herding"``, ...) or condenser (synthetic exemplars: ``"lcmat-c"``, ``"dm"``, ...).
:func:`memory_policy` gives its :class:`MemoryPolicy`, which knows its kind, whether it ranks
with a model, its paper's defaults, and builds a :class:`ClassMemory`:

    memory = build_memory("lcmat-s", images, labels, per_class=10, model=model)

One rule for small classes holds for every policy: a class with fewer than ``per_class``
samples is stored whole, with a warning (selection: ranked by the selector, as every class;
condensation: its real images, index order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from replay_lcmat.condensation import CONDENSERS, make_condenser
from replay_lcmat.memory.exemplars import (
    check_options,
    check_per_class,
    condense_exemplars,
    memory_selector,
    select_exemplars,
)
from replay_lcmat.memory.store import ClassMemory
from replay_lcmat.registry import Entry, unknown_name_message
from replay_lcmat.seeding import derive_seed
from replay_lcmat.selection import SELECTORS, ModelOutputs, extract_outputs
from replay_lcmat.selection.extract import check_stats


@dataclass(frozen=True)
class MemoryPolicy:
    """A registered method seen as a way to fill a replay memory.

    Attributes:
        name: the registered name.
        entry: the selector's or condenser's registry entry (factory, paper, defaults).
        kind: ``"selection"`` (real exemplars) or ``"condensation"`` (synthetic ones).
        needs_model: whether it ranks with a model's features or logits.
    """

    name: str
    entry: Entry = field(repr=False)
    kind: ClassVar[str] = ""

    @property
    def needs_model(self) -> bool:
        return False

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.entry.defaults)

    def experience_seed(self, seed: int, experience: int) -> int:
        """The seed passed to :meth:`build` for experience ``experience`` of a run."""
        raise NotImplementedError

    def check_options(self, options: Mapping[str, Any] | None) -> None:
        """Raise ValueError for an option the method does not take or a bad value."""
        raise NotImplementedError

    def build(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        per_class: int,
        options: Mapping[str, Any] | None = None,
        outputs: ModelOutputs | None = None,
        model: nn.Module | None = None,
        stats: str | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> ClassMemory:
        """The memory of the classes in ``labels``; see :func:`build_memory`."""
        outputs = self._ranking_outputs(images, labels, outputs, model, stats, device)
        per_class = check_per_class(per_class)
        return self._fill(images, labels, per_class, options, outputs, seed, device, progress)

    def _ranking_outputs(self, images, labels, outputs, model, stats, device):
        """The model outputs the policy ranks with (``None`` when it uses none); refuses
        ``outputs``, ``model`` or ``stats`` that do not apply."""
        raise NotImplementedError

    def _fill(self, images, labels, per_class, options, outputs, seed, device, progress):
        """The memory of the classes in ``labels``, once the arguments are checked."""
        raise NotImplementedError


class SelectionPolicy(MemoryPolicy):
    """Real exemplars ranked by a selector; each class is ranked on its own with the seed
    ``derive_seed(seed, label)`` (selectors that take a seed), so its picks do not depend on
    the other classes of the call. With no selector option,
    :data:`replay_lcmat.memory.exemplars.MEMORY_DEFAULTS` apply."""

    kind = "selection"

    @property
    def needs_model(self) -> bool:
        return bool(self.entry.factory.needs)

    def experience_seed(self, seed: int, experience: int) -> int:
        return seed  # each class derives its own seed from its label

    def check_options(self, options: Mapping[str, Any] | None) -> None:
        memory_selector(self.name, options)

    def _ranking_outputs(self, images, labels, outputs, model, stats, device):
        if outputs is not None and (model is not None or stats is not None):
            raise ValueError(
                "pass either outputs=... or model=... (with stats=...), not both: the outputs "
                "were already taken with some statistics."
            )
        if outputs is None and model is not None and self.needs_model:
            outputs = extract_outputs(
                model, images, labels, stats=check_stats(stats), device=device
            )
        if outputs is None and self.needs_model:
            raise ValueError(
                f"policy {self.name!r} ranks with a model: pass model=<a model trained on these "
                "images> (and stats=...), or outputs=extract_outputs(model, images, labels) "
                "(replay_lcmat.selection)."
            )
        if outputs is not None and len(outputs.labels) != len(labels):
            raise ValueError(
                f"outputs cover {len(outputs.labels)} samples but there are {len(labels)} images; "
                "extract them from the same images."
            )
        return outputs

    def _fill(self, images, labels, per_class, options, outputs, seed, device, progress):
        picks, weights = select_exemplars(
            self.name,
            labels=labels,
            features=None if outputs is None else outputs.features,
            logits=None if outputs is None else outputs.logits,
            per_class=per_class,
            options=options,
            seed=seed,
            with_weights=True,
        )
        memory = ClassMemory()
        picked_labels = torch.as_tensor(labels).cpu()[picks]
        for c in torch.unique(picked_labels).tolist():
            mine = picked_labels == c
            idx = picks[mine]
            w = None if weights is None else weights[mine]
            memory.put(c, images[idx.to(images.device)], sources=idx, weights=w)
        return memory


class CondensationPolicy(MemoryPolicy):
    """Synthetic exemplars learned by a condenser; all classes of a call are condensed
    together with one seed (per experience: ``derive_seed(seed, experience)``)."""

    kind = "condensation"

    def experience_seed(self, seed: int, experience: int) -> int:
        return derive_seed(seed, experience)

    def check_options(self, options: Mapping[str, Any] | None) -> None:
        make_condenser(self.name, **check_options(options))

    def _ranking_outputs(self, images, labels, outputs, model, stats, device):
        if any(value is not None for value in (outputs, model, stats)):
            raise ValueError(
                f"{self.name!r} is a condensation policy: it trains its own networks, so "
                "outputs=, model= and stats= do not apply; drop them."
            )
        return None

    def _fill(self, images, labels, per_class, options, outputs, seed, device, progress):
        syn, syn_labels = condense_exemplars(
            self.name,
            images,
            labels,
            per_class=per_class,
            options=options,
            device=device,
            seed=seed,
            progress=progress,
        )
        memory = ClassMemory()
        for c in torch.unique(syn_labels).tolist():
            memory.put(c, syn[syn_labels == c])
        return memory


# The registry of each kind of policy.
REGISTRIES = {SelectionPolicy: SELECTORS, CondensationPolicy: CONDENSERS}


def memory_policies() -> dict[str, MemoryPolicy]:
    """Every policy by name: the registered selectors, then the registered condensers."""
    return {
        name: kind(name, registry.entry(name))
        for kind, registry in REGISTRIES.items()
        for name in registry
    }


def memory_policy(policy: str | MemoryPolicy) -> MemoryPolicy:
    """The :class:`MemoryPolicy` of a name (any case).

    Raises:
        ValueError: unknown name; the message lists the known ones and the closest.
    """
    if isinstance(policy, MemoryPolicy):
        return policy
    for kind, registry in REGISTRIES.items():
        if policy in registry:
            return kind(registry.entry(policy).name, registry.entry(policy))
    raise ValueError(unknown_name_message("memory policy", policy, list(memory_policies())))


def build_memory(
    policy: str | MemoryPolicy,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int,
    options: Mapping[str, Any] | None = None,
    outputs: ModelOutputs | None = None,
    model: nn.Module | None = None,
    stats: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ClassMemory:
    """The memory of ``policy`` for the classes in ``labels``.

    Args:
        policy: a policy name (see :func:`memory_policies`) or a :class:`MemoryPolicy`.
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        per_class: exemplars per class (small classes: taken whole, with a warning).
        options: the selector's or condenser's own options (e.g. ``{"eps": 0.05}``;
            ``{"iterations": 200}``), checked against its signature.
        outputs: selection policies that rank with a model:
            :class:`replay_lcmat.selection.ModelOutputs` of the selection model on ``images``.
        model, stats: instead of ``outputs``, the selection model; its outputs are taken by
            :func:`replay_lcmat.selection.extract_outputs` with ``stats`` (``None``:
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`) on ``device``.
        seed: selection: each class is seeded with ``derive_seed(seed, label)``;
            condensation: the seed of the one condensation run.
        device, progress: where condensation runs, and its progress bar.

    Returns:
        A :class:`ClassMemory`; selected exemplars carry their index into ``images`` as source.
    """
    return memory_policy(policy).build(
        images,
        labels,
        per_class=per_class,
        options=options,
        outputs=outputs,
        model=model,
        stats=stats,
        seed=seed,
        device=device,
        progress=progress,
    )
