"""Reading and writing files safely, and the error every unreadable data file raises.

:class:`CorruptDataError` is raised by the data loaders (a damaged archive, image or CIFAR
batch) and by :func:`read_torch_file` (a damaged checkpoint, synthetic set or class memory).

Every output is written by :func:`atomic_write` (a unique temporary name in the same folder,
then one rename), so a reader never sees half a file and a crash keeps the previous one; a run
holds :func:`exclusive_output` on its output for as long as it works on it, so a second run on
the same path stops with an error naming the first instead of replacing its file.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


class CorruptDataError(ValueError):
    """A data file exists but cannot be read: truncated, damaged, or not the format its name says.

    The message names the file (and the member inside an archive) and what to do about it.
    """


def read_torch_file(path: Path, what: str, written_by: str) -> Any:
    """``torch.load(path, weights_only=True)`` of a replay-lcmat file on the CPU.

    Raises:
        CorruptDataError: torch cannot read the file (zero bytes, truncated, garbage, a pickle
            of other objects); the message names the file, says it is corrupt or not a
            replay-lcmat ``what``, and which command writes one (``written_by``). The file is
            never unpickled unsafely.
    """
    try:
        with warnings.catch_warnings():
            # torch warns about the protocol of foreign pickles before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as err:
        # not chained: torch's message advises weights_only=False, unsafe for untrusted files
        raise CorruptDataError(
            f"{path} is corrupt or not a replay-lcmat {what} (torch.load failed with "
            f"{type(err).__name__}: the file is empty, truncated, damaged or of another kind); "
            f"write it again with {written_by}, or pass the right file."
        ) from None


def check_state_header(state: object, fmt: str, version: int, what: str, source: str) -> None:
    """Raise ``ValueError`` unless ``state`` is a dict with ``format == fmt`` and ``version``:
    the header every saved replay-lcmat state carries (memories, buffers, run checkpoints).

    Args:
        what: the kind, for messages (``"selection-buffer"``); source: what writes such a state
            (``"SelectionBuffer.state_dict()"``).
    """
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"not a replay-lcmat {what}; it comes from {source}.")
    if state.get("version") != version:
        raise ValueError(
            f"{what} version {state.get('version')!r}; this replay-lcmat reads version {version} "
            f"only: write it again with this version's {source}."
        )


class OutputInUseError(ValueError):
    """Another run holds the lock of an output path (see :func:`exclusive_output`)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a unique temporary file beside it, then rename.

    The temporary name is unique per call (two processes never share one), the data is flushed
    to disk before the rename, and the rename replaces ``path`` in one step: a reader sees the
    old file or the new one, never a mix; a crash leaves the old file (and no temporary).
    The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(path: str | os.PathLike, payload: Any) -> Path:
    """:func:`atomic_write` of ``torch.save(payload)``."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``OUT.lock`` beside it (left in place; delete it freely
    when no run is working on ``OUT``)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive_output(path: str | os.PathLike, *, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` for the ``with`` block.

    The lock is an OS file lock on ``OUT.lock`` (``filelock``: ``flock`` on POSIX, ``msvcrt``
    on Windows), so it is released when the process ends, however it ends; the file also
    records who holds it (process id, host, start time, command line).

    Raises:
        OutputInUseError: another process holds it; the message names that run and the fix.
    """
    from filelock import FileLock, Timeout

    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = lock_file.read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        raise OutputInUseError(
            f"{what} {path} is in use by another run ({holder or 'holder unknown'}); two runs "
            "writing one file would replace each other's results. Wait for that run to finish, "
            "stop it, or pass another output path."
        ) from None
    try:
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(sys.argv) or sys.executable
        with contextlib.suppress(OSError):
            with open(lock_file, "r+", encoding="utf-8") as handle:
                handle.truncate(0)
                handle.write(
                    f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
                )
        yield Path(path)
    finally:
        with contextlib.suppress(OSError):
            with open(lock_file, "r+", encoding="utf-8") as handle:
                handle.truncate(0)
        lock.release()
