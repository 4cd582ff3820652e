"""The class-balanced engine: one per-class loop behind every selection entry point.

``Selector.select``, ``build_memory`` / ``select_exemplars``, the ``select`` command, the
Avalanche storage policies and a ``torch.distributed`` run all reach :func:`select_classes`,
so the same selector, budget and seed give the same picks through any of them:

- **Budgets** are resolved once (:func:`class_budgets`: ``per_class`` or ``fraction``).
- **A class smaller than its budget** is taken whole, ranked by the selector, with one
  warning per call that names each such class and its numbers (:func:`fit_budgets`).
- **Seeds**: class ``c`` draws from ``derive_seed(seed, c)`` (NumPy ``SeedSequence([seed, c])``),
  so a class's picks do not change when other classes are added, removed or reordered, or when
  the classes are shared out over processes.
- **Processes**: under ``torch.distributed`` each rank selects its share of the classes
  (:func:`replay_lcmat.distributed.map_classes`) and every rank returns the whole result.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from replay_lcmat import distributed
from replay_lcmat.seeding import derive_seed

Budget = int | Mapping[int, int]


@dataclass(frozen=True)
class SelectionResult:
    """Output of ``Selector.select``.

    Attributes:
        indices: int64 ``[m]`` into the inputs; classes in ascending label order, inside a class
            in the method's pick order (greedy order for greedy methods, so the first ``k`` of a
            class are its answer for budget ``k``).
        weights: float ``[m]`` aligned with ``indices`` for methods that define sample weights
            (Craig, AdaCore, GradMatch, weighted LCMat-S), else ``None``.
    """

    indices: Tensor
    weights: Tensor | None = None


@dataclass(frozen=True)
class ClassInputs:
    """The samples of one class, in ascending index order: ``[n_c, d]``, ``[n_c, c]``, ``[n_c]``."""

    label: int
    features: Tensor | None
    logits: Tensor | None
    labels: Tensor


class ClassSelector(Protocol):
    """What the engine needs of a selector (``Selector`` has both)."""

    name: str

    def start_class(self, seed: int) -> None: ...

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]: ...


def class_sizes(labels: Tensor) -> dict[int, int]:
    """``{label: number of samples}`` in ascending label order."""
    present, counts = torch.unique(torch.as_tensor(labels).cpu(), return_counts=True)
    return dict(zip(present.tolist(), counts.tolist(), strict=True))


def class_budgets(
    labels: Tensor, *, per_class: Budget | None = None, fraction: float | None = None
) -> dict[int, int]:
    """Number of picks asked for per class, ``{label: budget}`` in ascending label order.

    A budget may exceed its class; :func:`fit_budgets` applies the small-class rule.

    Args:
        labels: int64 ``[n]``.
        per_class: an int for every class present, or a mapping ``label -> int`` (classes
            missing from the mapping get no picks).
        fraction: in ``(0, 1]``: ``round(fraction * n_c)`` (half up), at least 1 per class.

    Raises:
        ValueError: both or neither of per_class / fraction, a budget <= 0, or a class in the
            mapping with no samples.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("pass exactly one of per_class=... (count) or fraction=... (share).")
    sizes = class_sizes(labels)
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}.")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1]; got {fraction}. E.g. 0.01 for 1%.")
        wanted = {c: max(1, math.floor(fraction * n + 0.5)) for c, n in sizes.items()}
    elif isinstance(per_class, Mapping):
        wanted = {int(c): per_class[c] for c in per_class}
        for c in wanted:
            if c not in sizes:
                raise ValueError(
                    f"class {c} has no samples (empty class); remove it from per_class or add "
                    "its samples."
                )
    else:
        wanted = {c: per_class for c in sizes}
    for c, m in wanted.items():
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m <= 0:
            raise ValueError(
                f"budget for class {c} must be a positive int; got {m!r}. To skip a class, pass a "
                "per_class mapping without it."
            )
    return {c: int(wanted[c]) for c in sorted(wanted)}


def fit_budgets(sizes: Mapping[int, int], budgets: Mapping[int, int]) -> dict[int, int]:
    """The small-class rule, the one for every entry point: a class with fewer samples than
    its budget is taken whole (budget lowered to its size), with one ``UserWarning`` per call
    naming each such class, its size and its budget.

    Args:
        sizes: ``{label: samples}``; budgets: ``{label: picks asked for}`` (labels of ``sizes``).

    Returns:
        ``{label: picks}`` in the order of ``budgets``.
    """
    short = [(c, sizes[c], b) for c, b in budgets.items() if sizes[c] < b]
    if short:
        named = "; ".join(
            f"class {c} has only {n} sample(s), fewer than the {b} asked for" for c, n, b in short
        )
        warnings.warn(f"{named}: all of them are kept.", UserWarning, stacklevel=4)
    return {c: min(b, sizes[c]) for c, b in budgets.items()}


# Whether select_classes shows a progress bar over classes (set by class_progress).
_CLASS_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "replay_lcmat_class_progress", default=False
)


@contextlib.contextmanager
def class_progress(enabled: bool = True) -> Iterator[None]:
    """Inside the block, every :func:`select_classes` (any selector's ``select``) shows a tqdm
    bar over its classes, with the time left; for long greedy selections (a command line's
    select step). Off by default, so library calls stay quiet."""
    token = _CLASS_PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _CLASS_PROGRESS.reset(token)


def select_classes(
    selector: ClassSelector,
    *,
    labels: Tensor,
    features: Tensor | None,
    logits: Tensor | None,
    budgets: Mapping[int, int],
    seed: int,
) -> SelectionResult:
    """Run ``selector`` on every class of ``budgets``: the per-class loop of every entry point.

    Each class gets its own inputs, its budget (lowered to its size by :func:`fit_budgets`) and
    its own seed ``derive_seed(seed, label)`` (``selector.start_class`` is called with it before
    ``selector.select_class``). Under ``torch.distributed`` the classes are shared out over the
    ranks, the heaviest (``n_c²``) first; the result is the same.

    Args:
        selector: e.g. a :class:`replay_lcmat.selection.Selector`.
        labels: int64 ``[n]``; features ``[n, d]`` / logits ``[n, c]`` or ``None``, already
            checked (:func:`replay_lcmat.selection.base.check_inputs`).
        budgets: ``{label: picks}`` for the classes to select from (others get none).
        seed: the user's seed; classes derive theirs from it.

    Returns:
        :class:`SelectionResult`, classes ascending, indices on the CPU; weights only when the
        selector gives them for every class.
    """
    sizes = class_sizes(labels)
    budgets = fit_budgets(sizes, dict(sorted(budgets.items())))

    def one_class(label: int) -> tuple[Tensor, Tensor | None]:
        members = torch.nonzero(labels == label).flatten()
        part = ClassInputs(
            label=label,
            features=None if features is None else features[members],
            logits=None if logits is None else logits[members],
            labels=labels[members],
        )
        selector.start_class(derive_seed(seed, label))
        picks, weights = selector.select_class(part, budgets[label])
        return members[picks.to(members.device)].cpu(), None if weights is None else weights.cpu()

    keys = list(budgets)
    bar = None
    if _CLASS_PROGRESS.get():  # under torch.distributed: this rank's share of the classes
        bar = tqdm(total=len(keys), desc=f"{selector.name} selection", unit="class")

        def one_class_shown(label: int, run=one_class) -> tuple[Tensor, Tensor | None]:
            out = run(label)
            bar.update(1)
            return out

        one_class = one_class_shown
    try:
        results = distributed.map_classes(
            one_class,
            keys,
            weights=[sizes[c] ** 2 for c in keys],
            what=f"{selector.name} selection",
        )
    finally:
        if bar is not None:
            bar.close()
    weights = [w for _, w in results]
    has_weights = all(w is not None for w in weights)
    return SelectionResult(
        indices=torch.cat([picks for picks, _ in results]),
        weights=torch.cat(weights) if has_weights else None,
    )
