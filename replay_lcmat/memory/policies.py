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

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from replay_lcmat.memory.store import ClassMemory
from replay_lcmat.registry import Entry, unknown_name_message
from replay_lcmat.seeding import derive_seed
from replay_lcmat.selection.engine import class_sizes, fit_budgets
from replay_lcmat.validation import check_number


def check_per_class(per_class: object, owner: str = "memory") -> int:
    """The budget check of every memory: ``per_class`` exemplars per class, an int >= 1."""
    return int(check_number(owner, "per_class", per_class, integer=True, minimum=1))


def split_small_classes(labels: Tensor, per_class: int) -> tuple[list[int], list[int]]:
    """``(classes to condense, classes kept whole)``, both ascending.

    A class with at most ``per_class`` samples is kept whole; one with fewer is reported by
    the small-class rule of every entry point
    (:func:`replay_lcmat.selection.engine.fit_budgets`: one warning naming the classes).
    """
    sizes = class_sizes(labels)
    fit_budgets(sizes, dict.fromkeys(sizes, per_class))  # warns
    return [c for c, n in sizes.items() if n > per_class], [
        c for c, n in sizes.items() if n <= per_class
    ]


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

    def check_options(self, **options: Any) -> None:
        """Raise ValueError for an option the method does not take or a bad value."""
        raise NotImplementedError

    def build(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        per_class: int,
        outputs=None,
        model=None,
        stats: str | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = False,
        **options: Any,
    ) -> ClassMemory:
        """The memory of the classes in ``labels``; see :func:`build_memory`."""
        ranked_with = {"outputs": outputs, "model": model, "stats": stats}
        return self._fill(
            images, labels, check_per_class(per_class), ranked_with, seed, device, progress, options
        )

    def _fill(
        self,
        images: Tensor,
        labels: Tensor,
        per_class: int,
        ranked_with: dict[str, Any],
        seed: int,
        device: torch.device | str,
        progress: bool,
        options: dict[str, Any],
    ) -> ClassMemory:
        """:meth:`build` of one kind; ``ranked_with``: the ``outputs``, ``model`` and ``stats``
        given (selection policies that rank with a model use them)."""
        raise NotImplementedError


MEMORY_DEFAULTS: dict[str, dict[str, Any]] = {
    # LCMat-S as a replay memory: greedy mean matching of features, last-layer gradients and
    # curvature (objective="joint", Sec. 3 / Eq. 7 terms added to herding's feature term), the
    # setting with the best validation accuracy in the continual protocol on CIFAR-10
    # (benchmarks/results/continual_evidence_val.md); the facility-location LCMat-S of the paper
    # stays the selector's own default.
    "lcmat-s": {"objective": "joint", "gradient_weight": 0.5, "curvature_weight": 0.0},
}
"""Options a selection policy uses when a memory is built with NO selector option at all
(``build_memory("lcmat-s", ...)``, ``LCMatReplayPlugin(10, "lcmat-s")``); any option given
(e.g. ``eps=0.01``) configures the selector from its own defaults instead."""


class SelectionPolicy(MemoryPolicy):
    """Real exemplars ranked by a selector; each class is ranked on its own with the seed
    ``derive_seed(seed, label)`` (selectors that take a seed), so its picks do not depend on
    the other classes of the call. With no selector option, :data:`MEMORY_DEFAULTS` apply."""

    kind = "selection"

    def selector_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The selector options of a memory: ``options`` as given, or the policy's
        :data:`MEMORY_DEFAULTS` when none is given."""
        return dict(options) if options else dict(MEMORY_DEFAULTS.get(self.name, {}))

    @property
    def needs_model(self) -> bool:
        return bool(self.entry.factory.needs)

    def experience_seed(self, seed: int, experience: int) -> int:
        return seed  # each class derives its own seed from its label

    def check_options(self, **options: Any) -> None:
        from replay_lcmat.selection import make_selector

        make_selector(self.name, **options)

    def _fill(self, images, labels, per_class, ranked_with, seed, device, progress, options):
        outputs, model, stats = (ranked_with[k] for k in ("outputs", "model", "stats"))
        if outputs is not None and (model is not None or stats is not None):
            raise ValueError(
                "pass either outputs=... or model=... (with stats=...), not both: the outputs "
                "were already taken with some statistics."
            )
        if outputs is None and model is not None and self.needs_model:
            from replay_lcmat.selection.extract import DEFAULT_STATS, extract_outputs

            outputs = extract_outputs(
                model, images, labels, stats=stats or DEFAULT_STATS, device=device
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
        picks, weights = select_exemplars(
            self.name,
            labels=labels,
            features=None if outputs is None else outputs.features,
            logits=None if outputs is None else outputs.logits,
            per_class=per_class,
            seed=seed,
            with_weights=True,
            **options,
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

    def check_options(self, **options: Any) -> None:
        from replay_lcmat.condensation import make_condenser

        make_condenser(self.name, **options)

    def _fill(self, images, labels, per_class, ranked_with, seed, device, progress, options):
        if any(value is not None for value in ranked_with.values()):
            raise ValueError(
                f"{self.name!r} is a condensation policy: it trains its own networks, so "
                "outputs=, model= and stats= do not apply; drop them."
            )
        syn, syn_labels = condense_exemplars(
            self.name,
            images,
            labels,
            per_class=per_class,
            device=device,
            seed=seed,
            progress=progress,
            **options,
        )
        memory = ClassMemory()
        for c in torch.unique(syn_labels).tolist():
            memory.put(c, syn[syn_labels == c])
        return memory


def _registries():
    from replay_lcmat.condensation import CONDENSERS
    from replay_lcmat.selection import SELECTORS

    return {SelectionPolicy: SELECTORS, CondensationPolicy: CONDENSERS}


def memory_policies() -> dict[str, MemoryPolicy]:
    """Every policy by name: the registered selectors, then the registered condensers."""
    return {
        name: kind(name, registry.entry(name))
        for kind, registry in _registries().items()
        for name in registry
    }


def memory_policy(policy: str | MemoryPolicy) -> MemoryPolicy:
    """The :class:`MemoryPolicy` of a name (any case).

    Raises:
        ValueError: unknown name; the message lists the known ones and the closest.
    """
    if isinstance(policy, MemoryPolicy):
        return policy
    for kind, registry in _registries().items():
        if policy in registry:
            return kind(registry.entry(policy).name, registry.entry(policy))
    raise ValueError(unknown_name_message("memory policy", policy, list(memory_policies())))


def select_exemplars(
    policy,
    *,
    labels: Tensor,
    features: Tensor | None = None,
    logits: Tensor | None = None,
    per_class: int,
    seed: int = 0,
    with_weights: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """Class-balanced real exemplars picked by a selector.

    The selector's ``select`` runs the class-balanced engine
    (:func:`replay_lcmat.selection.engine.select_classes`): each class is ranked on its own,
    with the seed ``derive_seed(seed, label)`` where the selector takes a seed, and under
    ``torch.distributed`` the classes are shared out over the ranks (same result). A class
    smaller than ``per_class`` is taken whole, with a warning.

    Args:
        policy: a selection policy name or a :class:`replay_lcmat.selection.Selector`
            instance (used as configured, with its own ``seed``).
        labels: int64 ``[n]``.
        features, logits: ``[n, d]`` / ``[n, c]`` of the selection model (see
            :func:`replay_lcmat.selection.extract_outputs`), for selectors that use them.
        per_class: exemplars per class.
        options: selector options for a policy name (e.g. ``eps=0.05`` for LCMat-S).
        with_weights: also return the selector's sample weights.

    Returns:
        int64 ``[m]`` indices into the inputs: classes ascending, each in rank (greedy) order.
        ``with_weights``: ``(indices, weights)``, weights float64 ``[m]`` aligned with them when
        the selector gives weights (e.g. ``weighted=True``: cluster sizes), else ``None``.
    """
    from replay_lcmat.selection import make_selector

    per_class = check_per_class(per_class)
    if isinstance(policy, str):
        entry = memory_policy(policy)
        if not isinstance(entry, SelectionPolicy):
            raise ValueError(f"{policy!r} is a {entry.kind} policy; use condense_exemplars.")
        options = entry.selector_options(options)
        if entry.entry.accepts("seed"):
            options = {"seed": seed, **options}
        selector = make_selector(entry.name, **options)
    elif callable(getattr(policy, "select", None)):
        if options:
            raise ValueError("options apply to a policy name; configure the selector instead.")
        selector = policy
    else:
        raise ValueError(f"policy must be a selector name or a Selector; got {policy!r}.")
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) == 0:
        raise ValueError("no samples to select from: labels is empty.")
    result = selector.select(labels=labels, features=features, logits=logits, per_class=per_class)
    if not with_weights:
        return result.indices
    return result.indices, None if result.weights is None else result.weights.double()


def condense_exemplars(
    policy: str,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    **options,
) -> tuple[Tensor, Tensor]:
    """``per_class`` synthetic images of every class, learned by the condenser ``policy``.

    All classes with more than ``per_class`` samples are condensed in one call (seed
    ``seed``); small classes follow the rule of :func:`split_small_classes`.

    Args:
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        options: condenser options (e.g. ``iterations=200``, ``network_options={"width": 32}``);
            unset ones take the paper's values (``CONDENSERS.entry(policy).defaults``).

    Returns:
        ``(images [m, C, H, W] float on the CPU, labels int64 [m])``, classes ascending.
    """
    from replay_lcmat.condensation import make_condenser

    per_class = check_per_class(per_class)
    entry = memory_policy(policy)
    if not isinstance(entry, CondensationPolicy):
        raise ValueError(f"{policy!r} is a {entry.kind} policy; use select_exemplars.")
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a float normalised tensor [n, C, H, W].")
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) != len(images) or len(labels) == 0:
        raise ValueError(
            f"need one label per image and at least one image; got {len(images)} "
            f"images and {len(labels)} labels."
        )
    big, whole = split_small_classes(labels, per_class)
    parts: dict[int, Tensor] = {}
    if big:
        keep = torch.isin(labels, torch.tensor(big))
        condenser = make_condenser(
            entry.name, device=device, seed=seed, progress=progress, **options
        )
        result = condenser.condense(
            images[keep.to(images.device)], labels[keep], per_class=per_class
        )
        syn, syn_labels = result.images.detach().cpu(), result.labels.cpu()
        parts = {c: syn[syn_labels == c] for c in big}
    for c in whole:
        parts[c] = images[(labels == c).to(images.device)].detach().cpu()
    order = sorted(parts)
    out_labels = [torch.full((len(parts[c]),), c, dtype=torch.int64) for c in order]
    return torch.cat([parts[c] for c in order]), torch.cat(out_labels)


def build_memory(
    policy: str | MemoryPolicy,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int,
    outputs=None,
    model=None,
    stats: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **options,
) -> ClassMemory:
    """The memory of ``policy`` for the classes in ``labels``.

    Args:
        policy: a policy name (see :func:`memory_policies`) or a :class:`MemoryPolicy`.
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        per_class: exemplars per class (small classes: :func:`split_small_classes`).
        outputs: selection policies that rank with a model:
            :class:`replay_lcmat.selection.ModelOutputs` of the selection model on ``images``.
        model, stats: instead of ``outputs``, the selection model; its outputs are taken by
            :func:`replay_lcmat.selection.extract_outputs` with ``stats`` (default
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`) on ``device``.
        seed: selection: each class is seeded with ``derive_seed(seed, label)``;
            condensation: the seed of the one condensation run.
        device, progress: where condensation runs, and its progress bar.
        options: selector or condenser options (e.g. ``eps=0.05``; ``iterations=200``).

    Returns:
        A :class:`ClassMemory`; selected exemplars carry their index into ``images`` as source.
    """
    return memory_policy(policy).build(
        images,
        labels,
        per_class=per_class,
        outputs=outputs,
        model=model,
        stats=stats,
        seed=seed,
        device=device,
        progress=progress,
        **options,
    )
