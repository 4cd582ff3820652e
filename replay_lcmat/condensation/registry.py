"""Condensers by name: ``make_condenser(name, ...)`` with each paper's defaults."""

from __future__ import annotations

from typing import Any

from replay_lcmat.condensation import distribution_matching, gradient_matching  # noqa: F401, I001
from replay_lcmat.condensation.base import CONDENSERS, Condenser


def available_condensers() -> dict[str, str]:
    """``{name: "one-line description (source paper)"}`` of every condenser."""
    return CONDENSERS.describe()


def make_condenser(name: str, **options: Any) -> Condenser:
    """Build condenser ``name`` (see :func:`available_condensers`) with its paper's defaults
    (``CONDENSERS.entry(name).defaults``, e.g. 1000 iterations for DC/DSA/LCMat-C and 20000 for
    DM) overridden by ``options``, e.g.
    ``make_condenser("lcmat-c", iterations=200, device="cuda", seed=0)``; then call
    ``.condense(images, labels, per_class=10)``.

    Every option is a keyword argument of the condenser's ``__init__`` (see
    :class:`replay_lcmat.condensation.Condenser`) and is checked here, before any work.

    Raises:
        ValueError: unknown name (the message lists the known ones and the closest), an option
            the condenser does not take (the message lists the accepted ones), or a bad value.
    """
    entry = CONDENSERS.entry(name)
    if "method" in options:
        raise ValueError(f"method is the registered name ({entry.name!r}); do not pass it.")
    return CONDENSERS.build(entry.name, method=entry.name, **options)
