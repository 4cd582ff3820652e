"""The header every saved buffer state carries: a ``format`` name and a ``version``."""

from __future__ import annotations


def check_state_header(state: object, fmt: str, version: int, what: str, source: str) -> None:
    """Raise ``ValueError`` unless ``state`` is a dict with ``format == fmt`` and ``version``.

    Args:
        what: the kind, for messages (``"selection-buffer"``); source: where such a state comes
            from (``"SelectionBuffer.state_dict()"``).
    """
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"not a {what} state; pass the dict of {source}.")
    if state.get("version") != version:
        raise ValueError(
            f"{what} state version {state.get('version')!r}; this replay-lcmat reads version "
            f"{version} only. Rebuild the memory with this version."
        )
