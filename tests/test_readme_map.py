"""The README's module map lists every module of the core, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _listed() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- module map")
    table = text[start:].split("\n\n", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)


def test_module_map_matches_the_code():
    listed = _listed()
    assert listed, "no module map found in README.md"
    missing_paths = [p for p in listed if not (REPO / p).exists()]
    assert not missing_paths, f"README lists modules that do not exist: {missing_paths}"
    folders = [p for p in listed if p.endswith("/")]
    modules = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "replay_lcmat").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    unlisted = [m for m in modules if m not in listed and not any(m.startswith(f) for f in folders)]
    assert not unlisted, f"README's module map misses {unlisted}; add a row for each"
