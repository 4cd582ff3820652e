"""Exemplars of a labelled set, by method name: the selector or condenser a memory uses.

:func:`select_exemplars` gives indices of real samples (a registered selector, run per class
by the class-balanced engine, :func:`replay_lcmat.selection.engine.select_classes`);
:func:`condense_exemplars` gives synthetic images (a registered condenser). A method's own
keyword arguments travel as one mapping, ``options``, checked against its signature by
:func:`replay_lcmat.selection.make_selector` / :func:`replay_lcmat.condensation.make_condenser`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from replay_lcmat.condensation import CONDENSERS, make_condenser
from replay_lcmat.selection import SELECTORS, Selector, make_selector
from replay_lcmat.selection.engine import class_sizes, fit_budgets
from replay_lcmat.validation import check_number

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
(e.g. ``{"eps": 0.01}``) configures the selector from its own defaults instead."""


def check_per_class(per_class: object, owner: str = "memory") -> int:
    """The budget check of every memory: ``per_class`` exemplars per class, an int >= 1."""
    return int(check_number(owner, "per_class", per_class, integer=True, minimum=1))


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a new dict (``None``: none); anything but a mapping of names is refused."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ValueError(
            f"options must be a mapping of option names to values, e.g. {{'eps': 0.05}}; "
            f"got {options!r}."
        )
    return dict(options)


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


def memory_selector(
    name: str, options: Mapping[str, Any] | None = None, *, seed: int = 0
) -> Selector:
    """The selector a memory ranks with: ``make_selector(name, seed=seed, **options)``.

    With no option at all the policy's :data:`MEMORY_DEFAULTS` apply; ``seed`` is given only
    to selectors that take one (an explicit ``options["seed"]`` wins).

    Raises:
        ValueError: ``name`` is a condenser or unknown; an option the selector does not take.
    """
    if name in CONDENSERS and name not in SELECTORS:
        raise ValueError(f"{name!r} is a condensation policy; use condense_exemplars.")
    entry = SELECTORS.entry(name)
    chosen = check_options(options) or dict(MEMORY_DEFAULTS.get(entry.name, {}))
    if entry.accepts("seed"):
        chosen = {"seed": seed, **chosen}
    return make_selector(entry.name, **chosen)


def select_exemplars(
    policy: str | Selector,
    *,
    labels: Tensor,
    features: Tensor | None = None,
    logits: Tensor | None = None,
    per_class: int,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    with_weights: bool = False,
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
        options: the selector's options for a policy name (e.g. ``{"eps": 0.05}`` for
            LCMat-S; see :func:`memory_selector`).
        seed: base seed of a policy name's selector.
        with_weights: also return the selector's sample weights.

    Returns:
        int64 ``[m]`` indices into the inputs: classes ascending, each in rank (greedy) order.
        ``with_weights``: ``(indices, weights)``, weights float64 ``[m]`` aligned with them when
        the selector gives weights (e.g. ``weighted=True``: cluster sizes), else ``None``.
    """
    per_class = check_per_class(per_class)
    if isinstance(policy, str):
        selector = memory_selector(policy, options, seed=seed)
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
    options: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """``per_class`` synthetic images of every class, learned by the condenser ``policy``.

    All classes with more than ``per_class`` samples are condensed in one call (seed
    ``seed``); small classes follow the rule of :func:`split_small_classes`.

    Args:
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        options: the condenser's options (e.g. ``{"iterations": 200, "network_options":
            {"width": 32}}``); unset ones take the paper's values
            (``CONDENSERS.entry(policy).defaults``).
        device, seed, progress: where it runs, its seed and its progress bar.

    Returns:
        ``(images [m, C, H, W] float on the CPU, labels int64 [m])``, classes ascending.
    """
    per_class = check_per_class(per_class)
    if policy in SELECTORS and policy not in CONDENSERS:
        raise ValueError(f"{policy!r} is a selection policy; use select_exemplars.")
    name = CONDENSERS.entry(policy).name
    options = check_options(options)
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
        condenser = make_condenser(name, device=device, seed=seed, progress=progress, **options)
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
