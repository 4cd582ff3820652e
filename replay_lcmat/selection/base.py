"""What every selector shares: the registry, the input checks and ``Selector``, whose
:meth:`~Selector.select` runs the class-balanced engine (:mod:`replay_lcmat.selection.engine`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from replay_lcmat.registry import Registry, get_params
from replay_lcmat.selection.engine import (  # noqa: F401 (ClassInputs, SelectionResult: re-exported)
    Budget,
    ClassInputs,
    SelectionResult,
    class_budgets,
    select_classes,
)
from replay_lcmat.validation import as_input_matrix

S = TypeVar("S", bound=type)

SELECTORS = Registry("selection method")
"""Every selector by name (filled by :func:`registered` in the family modules)."""


def registered(cls: S) -> S:
    """Class decorator: register a :class:`Selector` subclass under its ``name`` and ``paper``."""
    SELECTORS.register(cls.name, paper=cls.paper)(cls)
    return cls


def _all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite: its extremes are (min and max propagate NaN), one
    pass without an ``x``-sized mask."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return math.isfinite(float(low)) and math.isfinite(float(high))


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
        if not _all_finite(x):
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
    ) -> SelectionResult:
        """Select class-balanced samples.

        Args:
            labels: int64 ``[n]``.
            features: penultimate features ``[n, d]`` (methods that use them).
            logits: ``[n, c]`` (methods that use them).
            per_class / fraction: the budget, see :func:`class_budgets`. A class smaller
                than its budget is taken whole, with a warning.

        Returns:
            :class:`SelectionResult` (indices on the CPU). Class ``c`` is selected with the seed
            ``derive_seed(seed, c)`` (selectors that take a ``seed``), so its picks do not depend
            on the other classes in the call.

        Under ``torch.distributed`` (:mod:`replay_lcmat.distributed`) call it with the same
        inputs on every rank: each rank selects its share of the classes and every rank returns
        the whole result, identical to one process's.
        """
        features, logits, labels = check_inputs(features, logits, labels, self.needs)
        return select_classes(
            self,
            labels=labels,
            features=features,
            logits=logits,
            budgets=class_budgets(labels, per_class=per_class, fraction=fraction),
            seed=self.get_params().get("seed", 0),
        )

    def get_params(self) -> dict[str, Any]:
        """The options of ``__init__`` and their values (see :func:`replay_lcmat.registry.get_params`)."""
        return get_params(self)

    def start_class(self, seed: int) -> None:
        """Set up the random state of one class from its seed (``derive_seed(seed, label)``,
        see :func:`replay_lcmat.selection.engine.select_classes`); no-op for deterministic
        selectors."""

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, Tensor | None]:
        """Pick ``budget`` samples of one class: local int64 indices in pick order, weights."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({options})"
