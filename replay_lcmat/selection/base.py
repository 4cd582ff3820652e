"""What every selector shares: the registry, input checks, class budgets, the per-class loop,
the result."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from replay_lcmat import distributed
from replay_lcmat.registry import Registry, get_params
from replay_lcmat.validation import as_input_matrix

Budget = int | Mapping[int, int]
S = TypeVar("S", bound=type)

SELECTORS = Registry("selection method")
"""Every selector by name (filled by :func:`registered` in the family modules)."""


def registered(cls: S) -> S:
    """Class decorator: register a :class:`Selector` subclass under its ``name`` and ``paper``."""
    SELECTORS.register(cls.name, paper=cls.paper)(cls)
    return cls


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


def check_inputs(
    features: Tensor | None,
    logits: Tensor | None,
    labels: Tensor,
    needs: tuple[str, ...] = (),
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Validate the shared inputs; returns them detached, with one floating dtype.

    ``requires_grad`` inputs are detached (selection is not differentiable). Half precision is
    promoted to float32, and features and logits of different dtypes are both promoted to the
    wider one (float32 features with float64 logits: both float64).

    Raises:
        ValueError: wrong shape or dtype, mismatched lengths, NaN/inf, an input the method
            needs is missing, or a label outside ``[0, c)`` of the logits.
    """
    labels = as_input_matrix("labels", labels)
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    labels = labels.detach()
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor; got shape {tuple(labels.shape)} and dtype "
            f"{labels.dtype}. Convert with torch.as_tensor(labels, dtype=torch.int64)."
        )
    if len(labels) == 0:
        raise ValueError("no samples to select from: labels is empty. Pass a non-empty dataset.")
    labels = labels.long()
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0; found {int(labels.min())}. Remap to 0..C-1.")
    checked = {}
    for name, x in (("features", features), ("logits", logits)):
        x = as_input_matrix(name, x)
        if x is None:
            if name in needs:
                raise ValueError(
                    f"this method needs {name}; pass {name}=... (see "
                    "replay_lcmat.selection.extract_outputs)."
                )
            checked[name] = None
            continue
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be a 2-D float tensor [n, {'d' if name == 'features' else 'c'}]; "
                f"got {shape}. Flatten with .flatten(1) and convert with .float()."
            )
        if len(x) != len(labels):
            raise ValueError(
                f"{name} has {len(x)} rows but labels has {len(labels)}; pass one row per sample."
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(1).sum())
            raise ValueError(
                f"{name} contains NaN or inf in {bad} of {len(x)} rows; fix the model or drop "
                "those samples before selecting."
            )
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        checked[name] = x
    features, logits = checked["features"], checked["logits"]
    if features is not None and logits is not None and features.dtype != logits.dtype:
        common = torch.promote_types(features.dtype, logits.dtype)
        features, logits = features.to(common), logits.to(common)
    if logits is not None and int(labels.max()) >= logits.shape[1]:
        raise ValueError(
            f"label {int(labels.max())} is out of range for {logits.shape[1]} logits per sample; "
            "pass logits with one column per class."
        )
    return features, logits, labels


def class_budgets(
    labels: Tensor,
    *,
    per_class: Budget | None = None,
    fraction: float | None = None,
    take_all: bool = False,
) -> dict[int, int]:
    """Number of picks per class, ``{label: budget}`` in ascending label order.

    Args:
        labels: int64 ``[n]``.
        per_class: an int for every class present, or a mapping ``label -> int`` (classes
            missing from the mapping get no picks).
        fraction: in ``(0, 1]``: ``round(fraction * n_c)`` (half up), at least 1 per class.
        take_all: a budget larger than its class keeps the whole class instead of raising.

    Raises:
        ValueError: both or neither of per_class / fraction, a budget <= 0, a class in the
            mapping with no samples, or a budget larger than its class (unless ``take_all``).
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("pass exactly one of per_class=... (count) or fraction=... (share).")
    present, counts = torch.unique(labels, return_counts=True)
    sizes = dict(zip(present.tolist(), counts.tolist(), strict=True))
    if fraction is not None:
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
    budgets = {}
    for c in sorted(wanted):
        m = wanted[c]
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m <= 0:
            raise ValueError(
                f"budget for class {c} must be a positive int; got {m!r}. To skip a class, pass a "
                "per_class mapping without it."
            )
        if m > sizes[c]:
            if not take_all:
                raise ValueError(
                    f"budget {m} is larger than class {c}, which has {sizes[c]} samples; lower "
                    "the budget, or pass take_all=True (CLI: --take-all) to keep the whole class."
                )
            m = sizes[c]
        budgets[c] = int(m)
    return budgets


class Selector:
    """Base of every selector: validates, splits by class, calls :meth:`select_class`.

    Subclasses set ``name``, ``paper`` (one line) and ``needs``, implement :meth:`select_class`,
    and are registered with :func:`registered`. Options are keyword arguments of ``__init__``,
    each stored under its own name (:meth:`get_params` reads them back, as scikit-learn does);
    a selector with randomness takes ``seed``. :meth:`select` does the work.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()

    def select(
        self,
        *,
        labels: Tensor,
        features: Tensor | None = None,
        logits: Tensor | None = None,
        per_class: Budget | None = None,
        fraction: float | None = None,
        take_all: bool = False,
    ) -> SelectionResult:
        """Select class-balanced samples.

        Args:
            labels: int64 ``[n]``.
            features: penultimate features ``[n, d]`` (methods that use them).
            logits: ``[n, c]`` (methods that use them).
            per_class / fraction / take_all: see :func:`class_budgets`.

        Returns:
            :class:`SelectionResult` (indices on the CPU).

        Under ``torch.distributed`` (:mod:`replay_lcmat.distributed`) call it with the same
        inputs on every rank: each rank selects its share of the classes and every rank returns
        the whole result, identical to one process's.
        """
        features, logits, labels = check_inputs(features, logits, labels, self.needs)
        budgets = class_budgets(labels, per_class=per_class, fraction=fraction, take_all=take_all)

        def one_class(label: int) -> tuple[Tensor, Tensor | None, bool]:
            members = torch.nonzero(labels == label).flatten()
            part = ClassInputs(
                label=label,
                features=None if features is None else features[members],
                logits=None if logits is None else logits[members],
                labels=labels[members],
            )
            before = self._generator_states()
            picks, w = self.select_class(part, budgets[label])
            after = self._generator_states()
            drew = len(before) != len(after) or any(
                not torch.equal(a, b) for a, b in zip(before, after, strict=True)
            )
            return members[picks.to(members.device)].cpu(), w, drew

        # Under torch.distributed each rank selects its share of the classes (cost ~ n_c²).
        # A selector that drew from a generator carried from class to class (uniform, k-center,
        # stochastic greedy) depends on the classes before, so it reruns every class in order.
        self.start()
        sizes = [int((labels == label).sum()) ** 2 for label in budgets]
        results = distributed.map_classes(
            one_class, list(budgets), weights=sizes, what=f"{self.name} selection"
        )
        if distributed.is_distributed() and any(drew for _, _, drew in results):
            self.start()
            results = [one_class(label) for label in budgets]
        indices = [picks for picks, _, _ in results]
        weights = [w for _, w, _ in results]
        has_weights = all(w is not None for w in weights)
        return SelectionResult(
            indices=torch.cat(indices),
            weights=torch.cat([w.cpu() for w in weights]) if has_weights else None,
        )

    def get_params(self) -> dict[str, Any]:
        """The options of ``__init__`` and their values (see :func:`replay_lcmat.registry.get_params`)."""
        return get_params(self)

    def start(self) -> None:
        """Reset per-call state (e.g. a random generator) before the classes are visited."""

    def _generator_states(self) -> list[Tensor]:
        """States of the random generators among this selector's attributes (``[]`` if none)."""
        return [g.get_state() for g in vars(self).values() if isinstance(g, torch.Generator)]

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        """Pick ``budget`` samples of one class: local int64 indices in pick order, weights."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({options})"
