"""The decode cache: one ``.npz`` of decoded arrays per source, keyed by its path and content,
written atomically (a unique temporary file, then a rename)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

CACHE_VERSION = 3
_STALE_TMP_S = 24 * 3600  # a temporary cache file this old was left by a killed run


def default_cache_dir() -> Path:
    """``$REPLAY_LCMAT_CACHE`` if set, else ``~/.cache/replay-lcmat``."""
    env = os.environ.get("REPLAY_LCMAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "replay-lcmat"


def cache_file(source: Path, cache_dir: Path, folder: Any | None) -> Path:
    """``<name>-<path hash>-<content hash>.npz``; ``folder``: the listing (``.entries``) and
    plan (``.plan``) of a folder source, ``None`` for an archive.

    The content hash covers a folder's image files (name, size, mtime, ctime: adding, editing or
    removing one changes it) or an archive's size and mtime.
    """
    resolved = str(source.resolve())
    if folder is not None:
        wanted = {
            n for classes in folder.plan.values() for names in classes.values() for n in names
        }
        content = "\n".join(
            f"{e.name}|{e.size}|{e.stamp}" for e in sorted(folder.entries) if e.name in wanted
        )
    else:
        st = source.stat()
        content = f"{st.st_size}|{st.st_mtime_ns}"
    path_hash = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    key = hashlib.sha256(f"{resolved}|{content}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    return cache_dir / f"{source.name.split('.')[0]}-{path_hash}-{key}.npz"


def read_cache(cache: Path, required: set[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, damaged or lacks one of the
    ``required`` arrays (then it is rebuilt)."""
    try:
        with np.load(cache) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if required <= arrays.keys() else None


def write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write under a unique temporary name, then rename: concurrent writers never collide and a
    killed run never leaves a half-written cache. Older caches of the same source are removed."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.stem}.", suffix=".tmp")
    except OSError as err:
        warnings.warn(
            f"could not write the decode cache in {cache.parent} ({err}); the next load will "
            "decode again. Pass a writable cache_dir (--cache-dir) or set $REPLAY_LCMAT_CACHE.",
            stacklevel=3,
        )
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    source_prefix = glob.escape(cache.name.rsplit("-", 1)[0])
    for old in cache.parent.glob(source_prefix + "-*.npz"):
        if old.name != cache.name:
            with contextlib.suppress(OSError):
                old.unlink()
    for stale in cache.parent.glob(f".{source_prefix}-*.tmp"):  # left by killed runs
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
                stale.unlink()
