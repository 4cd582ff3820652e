"""What every selector shares: input checks, class budgets, the per-class loop, the result."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

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

    Subclasses set ``name``, ``paper`` (one line), ``needs`` and ``takes_seed``, and implement
    :meth:`select_class`. Options are set in ``__init__``; :meth:`select` does the work.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    takes_seed: ClassVar[bool] = False  # whether __init__ accepts seed=...

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
        """
        features, logits, labels = check_inputs(features, logits, labels, self.needs)
        budgets = class_budgets(labels, per_class=per_class, fraction=fraction, take_all=take_all)
        self.start()
        indices, weights = [], []
        for label, budget in budgets.items():
            members = torch.nonzero(labels == label).flatten()
            part = ClassInputs(
                label=label,
                features=None if features is None else features[members],
                logits=None if logits is None else logits[members],
                labels=labels[members],
            )
            picks, w = self.select_class(part, budget)
            indices.append(members[picks.to(members.device)].cpu())
            weights.append(w)
        has_weights = all(w is not None for w in weights)
        return SelectionResult(
            indices=torch.cat(indices),
            weights=torch.cat([w.cpu() for w in weights]) if has_weights else None,
        )

    @property
    def uses_seed(self) -> bool:
        """Whether the picks depend on the seed with the current options."""
        return self.takes_seed

    def start(self) -> None:
        """Reset per-call state (e.g. a random generator) before the classes are visited."""

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        """Pick ``budget`` samples of one class: local int64 indices in pick order, weights."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"
