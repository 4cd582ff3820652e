"""Policy specs: a method name with options in one string, for command lines and result tables.

parse_policy("lcmat-s")                            -> ("lcmat-s", {})
parse_policy("lcmat-s[eps=0.05,stats=class-batch]") -> ("lcmat-s", {"eps": 0.05, "stats": "class-batch"})
"""

from __future__ import annotations

import json
import re

from replay_lcmat.memory import memory_policy

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
