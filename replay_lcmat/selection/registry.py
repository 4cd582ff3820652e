"""Selectors by name."""

from __future__ import annotations

from replay_lcmat.selection.base import Selector
from replay_lcmat.selection.facility import AdaCore, Craig, LCMatS
from replay_lcmat.selection.geometry import ContextualDiversity, Herding, KCenter, Uniform
from replay_lcmat.selection.gradient import Glister, GradMatch
from replay_lcmat.selection.uncertainty import Entropy, LeastConfidence, Margin

SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        Uniform,
        Herding,
        KCenter,
        ContextualDiversity,
        LeastConfidence,
        Entropy,
        Margin,
        Craig,
        GradMatch,
        Glister,
        AdaCore,
        LCMatS,
    )
}


def available_selectors() -> dict[str, str]:
    """``{name: "one-line description (source paper)"}`` of every selector, in registry order."""
    return {
        name: f"{cls.__doc__.strip().splitlines()[0]} ({cls.paper})"
        for name, cls in SELECTORS.items()
    }


def make_selector(name: str, **options) -> Selector:
    """Build the selector ``name`` with its options, e.g. ``make_selector("lcmat-s", eps=0.05)``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or unknown option.
    """
    if name not in SELECTORS:
        raise ValueError(
            f"unknown selection method {name!r}; known methods: {', '.join(SELECTORS)}."
        )
    try:
        return SELECTORS[name](**options)
    except TypeError as err:
        raise ValueError(
            f"bad options for {name!r}: {err}. See help(replay_lcmat.selection.SELECTORS[{name!r}])."
        ) from None
