"""What every reference shares: the registered names, :class:`Reference` and the table
``REFERENCES`` the topic modules fill (see ``tests/references.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replay_lcmat.condensation import CONDENSERS
from replay_lcmat.selection import SELECTORS


# ------------------------------------------------------------------ what is registered
def registered_selectors() -> list[str]:
    """Names of every registered selector (``replay_lcmat.selection.SELECTORS``)."""
    return list(SELECTORS)


def registered_condensers() -> list[str]:
    """Names of every registered condenser (``replay_lcmat.condensation.CONDENSERS``)."""
    return list(CONDENSERS)


@dataclass(frozen=True)
class Reference:
    """A registered method, its independent reference and how to compare them."""

    what: str
    run_method: Callable[[], Any]
    run_reference: Callable[[Any], Any]
    compare: Callable[[Any, Any], None]
    wrong: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


REFERENCES: dict[str, Reference] = {}
