"""The memory a step may use: the smallest of the host's available memory, the memory cgroup's
room, the process's address-space limits and a user override (``REPLAY_LCMAT_MEMORY_LIMIT``);
:func:`require_memory` refuses a step that would not fit, before it allocates anything."""

from __future__ import annotations

import math
import os
import re

try:  # declared; a bare environment (e.g. a GPU node with torch only) still imports us
    import psutil
except ImportError:  # pragma: no cover
    psutil = None
import torch

# Process limits that cap what may be allocated whatever the host's free memory says (a
# container's cgroup, a ulimit); module attributes so tests can point them at files of their own.
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_STATUS = "/proc/self/status"
MEMORY_LIMIT_ENV = "REPLAY_LCMAT_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class NotEnoughMemoryError(MemoryError, ValueError):
    """A step would need more memory than is available; raised before it allocates anything."""


def parse_bytes(text: str, *, name: str = MEMORY_LIMIT_ENV) -> int:
    """``"12000000000"``, ``"12G"``, ``"512MiB"``, ``"1.5g"`` as bytes (binary units).

    Raises:
        ValueError: not a positive number of bytes, naming ``name`` and the accepted forms.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    value = float(match.group(1)) * _UNITS[match.group(2).upper()] if match else 0.0
    if not match or not math.isfinite(value) or value < 1:
        raise ValueError(
            f"{name}={text!r} is not a memory size; give a positive number of bytes, optionally "
            f"with a unit K, M, G or T (binary: 12G = 12 * 2**30), e.g. {name}=12G, or unset it."
        )
    return int(value)


def memory_limit_override() -> int | None:
    """The user's memory budget from :data:`MEMORY_LIMIT_ENV`, or ``None`` when unset/empty."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    return parse_bytes(text) if text else None


def _read_keys(path: str) -> dict[str, str]:
    """``key value`` or ``key: value`` lines of a small proc/cgroup file (empty when unreadable)."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":" if ":" in line else " ")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def _read_int(path: str) -> int | None:
    """A cgroup file holding one integer; ``None`` for ``max``, absent or unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text)
    except (OSError, ValueError):
        return None


def _cgroup_dirs() -> list[tuple[str, str]]:
    """``(version, folder)`` of this process's memory cgroup and its ancestors, innermost first.

    The path in ``/proc/self/cgroup`` is relative to the cgroup mount; inside a container the
    mount is often the container's own cgroup, so the mount root itself is tried too.
    """
    dirs = []
    try:
        with open(PROC_CGROUP) as f:
            lines = f.read().splitlines()
    except OSError:
        return dirs
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2: "0::/path"; on a hybrid v1/v2 host under unified/
            unified = os.path.join(CGROUP_ROOT, "unified")
            version, root = "v2", unified if os.path.isdir(unified) else CGROUP_ROOT
        elif "memory" in controllers.split(","):
            version, root = "v1", os.path.join(CGROUP_ROOT, "memory")
        else:
            continue
        rel = rel.strip("/")
        while True:
            dirs.append((version, os.path.join(root, rel) if rel else root))
            if not rel:
                break
            rel = os.path.dirname(rel)
    return list(dict.fromkeys(dirs))


def cgroup_available_bytes() -> int | None:
    """What the memory cgroup still allows: the smallest ``limit - usage`` over the cgroup and
    its ancestors (v2 ``memory.max - memory.current``, v1 ``memory.limit_in_bytes -
    memory.usage_in_bytes``), the usage less the inactive page cache the kernel reclaims
    before it kills (``inactive_file``). ``None`` when no limit is set or readable.
    """
    best = None
    for version, folder in _cgroup_dirs():
        if version == "v2":
            limit = _read_int(os.path.join(folder, "memory.max"))
            usage = _read_int(os.path.join(folder, "memory.current"))
            stat_key = "inactive_file"
        else:
            limit = _read_int(os.path.join(folder, "memory.limit_in_bytes"))
            usage = _read_int(os.path.join(folder, "memory.usage_in_bytes"))
            stat_key = "total_inactive_file"
            if limit is not None and limit >= 1 << 60:  # v1 writes "no limit" as ~2**63
                limit = None
        if limit is None or usage is None:
            continue
        try:
            reclaimable = int(_read_keys(os.path.join(folder, "memory.stat")).get(stat_key, 0))
        except ValueError:
            reclaimable = 0
        left = max(0, limit - max(0, usage - reclaimable))
        best = left if best is None else min(best, left)
    return best


def rlimit_available_bytes() -> int | None:
    """What ``ulimit -v`` / ``prlimit --as`` (``RLIMIT_AS``, minus the current virtual size) and
    ``RLIMIT_DATA`` (minus the current data size) still allow; ``None`` when neither is set."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    status = _read_keys(PROC_STATUS)

    def kib(key: str) -> int | None:
        try:
            return int(status[key].split()[0]) * 1024
        except (KeyError, ValueError, IndexError):
            return None

    best = None
    for which, key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(which)
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        used = kib(key)
        if used is None:
            used = kib("VmSize") or 0
        left = max(0, soft - used)
        best = left if best is None else min(best, left)
    return best


def _host_available_bytes() -> int | None:
    """The host's available memory (``psutil``: ``MemAvailable`` on Linux, the equivalent
    elsewhere); ``None`` when the platform does not say (or psutil is missing)."""
    if psutil is None:
        return None
    try:
        return int(psutil.virtual_memory().available)
    except (psutil.Error, OSError, RuntimeError, AttributeError):
        return None


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``, or ``None`` when unknown.

    ``REPLAY_LCMAT_MEMORY_LIMIT`` (bytes, or ``12G``, ``512M``), when set, is the answer for
    every device: it replaces what is detected. Otherwise, CUDA: free device memory plus what
    PyTorch's cache holds unused. CPU: the smallest of the host's available memory (``psutil``:
    ``MemAvailable`` on Linux), what the memory cgroup still allows
    (:func:`cgroup_available_bytes`: Docker, Kubernetes, SLURM) and what the address-space and
    data ulimits still allow (:func:`rlimit_available_bytes`); ``None`` when none is known.
    """
    override = memory_limit_override()
    if override is not None:
        return override
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    known = [
        v
        for v in (_host_available_bytes(), cgroup_available_bytes(), rlimit_available_bytes())
        if v is not None
    ]
    return min(known) if known else None


def budget_note(device: torch.device | str = "cpu") -> str:
    """Which limit :func:`available_memory_bytes` took, and how to change it, for messages."""
    if memory_limit_override() is not None:
        return f"set by {MEMORY_LIMIT_ENV}; raise or unset it if more is free"
    if torch.device(device).type != "cpu":
        return "free device memory"
    parts = {
        "free host memory": _host_available_bytes(),
        "the memory cgroup's limit (container / job limit)": cgroup_available_bytes(),
        "the process's ulimit (RLIMIT_AS / RLIMIT_DATA)": rlimit_available_bytes(),
    }
    known = {k: v for k, v in parts.items() if v is not None}
    which = min(known, key=known.get) if known else "unknown"
    return f"the smallest of free memory, cgroup and ulimit limits: {which}; {MEMORY_LIMIT_ENV} overrides it"


def require_memory(needed: int, *, what: str, device: torch.device | str = "cpu", fix: str) -> None:
    """Refuse, before allocating, a step that needs more than :func:`available_memory_bytes`.

    Args:
        needed: estimated bytes the step holds at once on ``device``.
        what: the step and what it allocates, e.g. ``"extract_outputs: features [n, d]"``.
        fix: how to make it fit (a smaller batch, streaming, ...); the message also names the
            limit that applied and the override variable (:func:`budget_note`).

    Raises:
        NotEnoughMemoryError: ``needed`` exceeds the budget; nothing is checked when the budget
            is unknown.
    """
    available = available_memory_bytes(device)
    if available is None or needed <= available:
        return
    mib = 1 << 20
    raise NotEnoughMemoryError(
        f"{what} needs about {needed / mib:.1f} MiB but only {available / mib:.1f} MiB is "
        f"available on {torch.device(device)} ({budget_note(device)}). {fix}"
    )


def is_allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is an allocator that ran out of memory (CPU or CUDA), not a check of ours."""
    if isinstance(err, NotEnoughMemoryError):
        return False
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )
