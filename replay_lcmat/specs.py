"""Policy specs: a method name with options in one string, for command lines and result tables.

parse_policy("lcmat-s")                            -> ("lcmat-s", {})
parse_policy("lcmat-s[eps=0.05,stats=class-batch]") -> ("lcmat-s", {"eps": 0.05, "stats": "class-batch"})
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from replay_lcmat.memory import MemoryPolicy, memory_policy
from replay_lcmat.selection.extract import check_stats

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[(.*)\])?\s*$")


def parse_options(pairs: list[str], flag: str = "--option") -> dict:
    """``["eps=0.05", "greedy=lazy"]`` -> ``{"eps": 0.05, "greedy": "lazy"}``.

    Values are read as JSON (numbers, booleans, lists), else kept as text; ``-`` in a key
    becomes ``_``. ``flag`` names the source in error messages.
    """
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r} is not KEY=VALUE; write e.g. {flag} eps=0.05.")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value.strip()
    return options


def parse_policy(spec: str) -> tuple[str, dict]:
    """``"name[key=value,...]"`` -> ``(name, options)`` (see :func:`parse_options`)."""
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"policy {spec!r} is not NAME or NAME[KEY=VALUE,...]; write e.g. "
            "'lcmat-s[eps=0.05,stats=class-batch]'."
        )
    name, body = match.group(1), match.group(2)
    pairs = [p for p in (body or "").split(",") if p.strip()]
    return name, parse_options(pairs, flag=f"in {spec!r},")


def format_policy(name: str, options: dict) -> str:
    """Inverse of :func:`parse_policy` (keys in the given order)."""
    if not options:
        return name
    body = ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items())
    return f"{name}[{body}]"


def expand_stats(policies: list[str], modes: list[str]) -> list[str]:
    """One spec per statistics mode for every policy that ranks with a model and does not pin
    ``stats`` itself: ``["craig"]`` x ``[running, class-batch]`` ->
    ``["craig[stats=running]", "craig[stats=class-batch]"]``; other policies are kept as given."""
    out = []
    for spec in policies:
        name, options = parse_policy(spec)
        if "stats" in options or not memory_policy(name).needs_model:
            out.append(spec)
            continue
        out += [format_policy(name, {**options, "stats": mode}) for mode in modes]
    return out


class MemorySpec(NamedTuple):
    """What a policy spec asks of a memory: the policy, its method's own options, the
    statistics its model is read with (``None``: it uses no model) and the power of the replay
    weights (0: unweighted)."""

    policy: MemoryPolicy
    options: dict[str, Any]
    stats: str | None
    weight_power: float


def memory_spec(
    spec: str,
    *,
    policy_options: Mapping[str, Mapping[str, Any]] | None = None,
    iterations: int | Mapping[str, int] | None = None,
    stats: str | None = None,
) -> MemorySpec:
    """A policy spec read for a memory (:func:`replay_lcmat.continual.memory_only_run`).

    ``stats`` and ``weight_power`` in the spec are the memory's, the other keys the method's
    options, over ``policy_options[spec]`` (or ``[name]``). ``weight_power=a`` (selection
    policies with weights) sets ``weighted=True``; a condensation policy takes
    ``iterations`` (one number or ``{spec or name: number}``) unless the spec sets it;
    ``stats`` is the default statistics of policies that rank with a model.
    """
    name, options = parse_policy(spec)
    policy = memory_policy(name)
    given = policy_options or {}
    options = {**given.get(spec, given.get(name, {})), **options}
    chosen = options.pop("stats", None)
    power = float(options.pop("weight_power", 0))
    if power < 0:
        raise ValueError(f"{spec!r}: weight_power must be >= 0 (0: unweighted replay).")
    if power and policy.kind != "selection":
        raise ValueError(f"{spec!r}: weight_power applies to selection policies.")
    if power:  # replay each pick with the size of its cluster, to the power
        options.setdefault("weighted", True)
    if policy.needs_model:
        chosen = check_stats(chosen or stats)
    elif chosen is not None:
        raise ValueError(f"{spec!r}: stats applies to selection policies that use a model.")
    wanted = (
        iterations.get(spec, iterations.get(name))
        if isinstance(iterations, Mapping)
        else iterations
    )
    if wanted is not None and policy.kind == "condensation":
        options.setdefault("iterations", wanted)
    return MemorySpec(policy, options, chosen, power)
