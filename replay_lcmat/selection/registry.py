"""Selectors by name: the registry filled by the family modules, and the two verbs on it.

A new family module is imported here once; its classes register themselves (``@registered``).
"""

from __future__ import annotations

from replay_lcmat.selection import (  # noqa: F401 (importing a family registers its selectors)
    facility_selectors,
    geometry,
    gradient,
    uncertainty,
)
from replay_lcmat.selection.base import SELECTORS, Selector


def available_selectors() -> dict[str, str]:
    """``{name: "one-line description (source paper)"}`` of every selector, in registry order."""
    return SELECTORS.describe()


def make_selector(name: str, **options) -> Selector:
    """Build the selector ``name`` with its options, e.g. ``make_selector("lcmat-s", eps=0.05)``.

    Raises:
        ValueError: unknown name (the message lists the known ones and the closest) or an
            option the selector does not take (the message lists the accepted ones).
    """
    return SELECTORS.build(name, **options)
