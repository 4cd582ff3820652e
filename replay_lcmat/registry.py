"""Methods by name: one registry shape for selectors, condensers and memory policies.

A registry is a read-only mapping from a lower-case name to a factory (a class), with the paper
each comes from and the defaults the paper uses (:meth:`Registry.entry`). Names are matched
case-insensitively; an unknown name raises :class:`UnknownNameError` (a ``ValueError`` and a
``KeyError``) listing the known names and the closest match. Options are read from the
factory's signature (as scikit-learn's ``get_params``), never listed by hand.

    SELECTORS = Registry("selection method")

    @SELECTORS.register("lcmat-s", paper="Shin et al., AISTATS 2023")
    class LCMatS(Selector): ...
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered method.

    Attributes:
        name: the lower-case name it is looked up by.
        factory: the class built by :meth:`Registry.build`.
        paper: where the method comes from (one line).
        defaults: options the paper uses that differ from the factory's own defaults.
        summary: one line saying what the method does (first docstring line unless given).
    """

    name: str
    factory: Callable[..., Any]
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword options the factory accepts (see :func:`signature_parameters`)."""
        return signature_parameters(self.factory)

    def accepts(self, option: str) -> bool:
        return option in self.parameters()

    def describe(self) -> str:
        return f"{self.summary} ({self.paper})"


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping):
    """Name -> factory, in registration order; :meth:`entry` gives the paper and defaults.

    Args:
        kind: what the entries are, for messages (e.g. ``"selection method"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        paper: str,
        defaults: dict[str, Any] | None = None,
        summary: str | None = None,
    ) -> Callable[[T], T]:
        """Class decorator registering the class under ``name`` (lower case, unique).

        Register one class several times (stack the decorator) for variants that differ in
        their defaults, e.g. DC and DSA.
        """
        if not isinstance(name, str) or not name or name != name.lower():
            raise ValueError(f"register {self.kind} names in lower case; got {name!r}.")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name.")

        def add(factory: T) -> T:
            unknown = sorted(set(defaults or {}) - set(signature_parameters(factory)))
            if unknown:
                raise TypeError(f"defaults {unknown} of {name!r} are not options of {factory}.")
            doc = (summary or (inspect.getdoc(factory) or name).splitlines()[0]).rstrip(".")
            self._entries[name] = Entry(name, factory, paper, dict(defaults or {}), doc)
            return factory

        return add

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: "summary (paper)"}`` in registration order."""
        return {name: entry.describe() for name, entry in self._entries.items()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self.entry(name).factory

    def entry(self, name: str) -> Entry:
        """The entry of ``name`` (any case).

        Raises:
            UnknownNameError: unknown name; the message lists the known names and the closest.
        """
        if name not in self:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name.lower()]

    def build(self, name: str, **options: Any) -> Any:
        """``factory(**(defaults | options))`` of ``name``, after checking the option names.

        Raises:
            ValueError: unknown name, or an option the method does not take (the message lists
                the accepted ones).
        """
        entry = self.entry(name)
        accepted = entry.parameters()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {self.kind} {entry.name!r}; accepted: "
                f"{sorted(accepted)}."
            )
        return entry.factory(**(entry.defaults | options))


def unknown_name_message(kind: str, name: object, known: list[str]) -> str:
    """``unknown <kind> 'x'; did you mean 'y'? known: a, b, c.``"""
    close = difflib.get_close_matches(str(name).lower(), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}."


def signature_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Keyword options of a class's ``__init__`` (or a function), following ``**options``
    up the class hierarchy, in declaration order; ``self`` and ``*args`` excluded."""
    found: dict[str, inspect.Parameter] = {}
    classes = factory.__mro__ if isinstance(factory, type) else ()
    functions = [vars(c)["__init__"] for c in classes if "__init__" in vars(c)]
    for function in functions or [factory]:
        if function is object.__init__:
            break
        passes_on = False
        for p in inspect.signature(function).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                passes_on = True
            elif p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                found.setdefault(p.name, p)
        if not passes_on:
            break
    return found


def get_params(obj: Any) -> dict[str, Any]:
    """The options ``obj`` was built with, read from its class's signature: for each option
    name, the attribute of that name (scikit-learn's convention: ``__init__`` stores every
    option under its own name)."""
    params = {}
    for name in signature_parameters(type(obj)):
        if not hasattr(obj, name):
            raise AttributeError(
                f"{type(obj).__name__} takes option {name!r} but does not store it as "
                f"self.{name}; store every __init__ option under its own name."
            )
        params[name] = getattr(obj, name)
    return params
