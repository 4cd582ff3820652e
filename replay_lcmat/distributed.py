"""Running over ``torch.distributed``: who owns what, gathering results, agreeing on failure.

Every function here works without a process group too: then there is one rank (0), it owns
everything, gathering returns the local value and :func:`phase` only runs its body. With a
group initialised (``torchrun --nproc-per-node N``, then :func:`init_from_env`, or the caller's
own ``torch.distributed.init_process_group``) the library shards its work:

- feature extraction (:func:`replay_lcmat.selection.extract_outputs`) by batches;
- selection (:meth:`replay_lcmat.selection.Selector.select`) by classes (:func:`map_classes`);
- condensation by classes inside each matching step, the synthetic gradient summed over ranks.

Every rank must call the same library functions with the same data, in the same order (they
are collective calls). A failure on one rank inside a :func:`phase` is reported to all ranks,
which all raise (no rank hangs waiting for the failed one). A rank that dies outright or
hangs in its own work is noticed at the next exchange (:func:`check_peers`, a monitored
barrier): the others stop with a :class:`DistributedError` naming that rank and the work,
after at most :data:`TIMEOUT_ENV` seconds (default ten minutes), instead of an abort.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

TIMEOUT_ENV = "REPLAY_LCMAT_DIST_TIMEOUT"
"""Seconds a collective call waits for the other ranks before failing (default 600: ten
minutes; raise it when one rank's share of a phase can take that much longer than another's)."""
DEFAULT_TIMEOUT_S = 600.0
THREADS_ENV = "REPLAY_LCMAT_THREADS"  # CPU threads per rank; default: an even share of the host
# what torchrun (and torch.multiprocessing launchers following its convention) sets
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_started_here = False  # init_from_env created the default group (teardown destroys it)
_local_depth = 0  # > 0 inside local(): this process works as if alone
_object_groups: dict[int, Any] = {}  # gloo side group for objects, per default NCCL group


class DistributedError(RuntimeError):
    """Raised on every rank when a phase failed on some rank; names the rank and its error."""


# ------------------------------------------------------------------------------- who am I
def _grouped() -> bool:
    return _local_depth == 0 and dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised (and this is not
    inside :func:`local`)."""
    return _grouped() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 without a group, or inside :func:`local`)."""
    return dist.get_rank() if _grouped() else 0


def world_size() -> int:
    """Number of ranks in the default group (1 without a group, or inside :func:`local`)."""
    return dist.get_world_size() if _grouped() else 1


@contextmanager
def local() -> Iterator[None]:
    """Inside, this process works as if alone (no sharding, no collective calls): for work one
    rank does on its own, e.g. the per-key function of :func:`map_classes`, which may itself
    call library functions that would otherwise shard (and wait for the other ranks)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def is_writer() -> bool:
    """True on the process that writes files and prints results: rank 0 of the default group
    (also inside :func:`local`), or the only process."""
    grouped = dist.is_available() and dist.is_initialized()
    return not grouped or dist.get_rank() == 0


# ------------------------------------------------------------------------------ sharding
def owners(weights: Sequence[float], ranks: int | None = None) -> list[int]:
    """Rank owning each item: heaviest first, each to the least loaded rank (ties: lower item
    index, then lower rank). Deterministic, so every rank computes the same split.

    Args:
        weights: cost of each item (e.g. ``n_c²`` for a class's similarity matrix); equal
            weights give a round-robin split.
        ranks: number of ranks (default :func:`world_size`).

    Returns:
        ``[len(weights)]`` ranks in ``0..ranks-1``.
    """
    ranks = world_size() if ranks is None else ranks
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1; got {ranks}.")
    load = [0.0] * ranks
    owner = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += float(weights[i])
    return owner


def shard(items: Sequence[T], weights: Sequence[float] | None = None) -> list[T]:
    """The items this rank owns (see :func:`owners`), in their original order."""
    weights = [1.0] * len(items) if weights is None else weights
    if len(weights) != len(items):
        raise ValueError(f"got {len(weights)} weights for {len(items)} items; pass one per item.")
    me = rank()
    return [item for item, r in zip(items, owners(weights), strict=True) if r == me]


# ----------------------------------------------------------------------------- exchange
def _object_group() -> Any:
    """The group objects travel on: the default one, or a gloo twin of a default NCCL group
    (so pickled objects stay on the CPU)."""
    if dist.get_backend() != "nccl":
        return None
    key = id(dist.group.WORLD)
    if key not in _object_groups:
        _object_groups[key] = dist.new_group(backend="gloo", timeout=_timeout())
    return _object_groups[key]


def check_peers(what: str) -> None:
    """Wait until every rank reaches this point, or stop with an error naming the ranks that
    did not within :data:`TIMEOUT_ENV` seconds (dead, or hung in their own work).

    A gloo monitored barrier (on the gloo twin of an NCCL group): rank 0 collects every other
    rank and names the missing ones; another rank names rank 0 when rank 0 does not answer.
    No-op without a group.

    Raises:
        DistributedError: naming ``what``, the missing rank(s), the timeout and the fix.
    """
    if not is_distributed():
        return
    timeout = _timeout()
    try:
        dist.monitored_barrier(group=_object_group(), timeout=timeout, wait_all_ranks=True)
    except RuntimeError as err:
        text = " ".join(str(err).split())
        found = re.search(r"Ranks? ([0-9][0-9, ]*) failed", text) or re.search(
            r"from rank ([0-9]+)", text
        )
        if found:
            who = f"rank {found.group(1).strip()}"
        else:  # a dead peer's connection closed before the timeout: gloo names its address only
            who = f"rank {1 - rank()}" if world_size() == 2 else "another rank"
        if "connection closed" in text.lower() or "connection reset" in text.lower():
            why = "(its connection closed: it died)"
        else:
            why = f"within {timeout.total_seconds():.0f} s (it died or hangs)"
        raise DistributedError(
            f"{what}: {who} did not reach it {why}, so rank {rank()} stops here instead of "
            f"waiting. Look at {who}'s output for "
            f"its error; if its share of the work is just slower, raise {TIMEOUT_ENV} (seconds). "
            f"[{text[:300]}]"
        ) from None


def gather_objects(obj: Any, *, what: str = "exchanging results") -> list[Any]:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` without a group).

    Objects are pickled: move tensors to the CPU first (:func:`to_cpu`). Every rank is first
    checked to be there (:func:`check_peers`), so a dead or hung rank gives an error naming it,
    not a wait and an abort.
    """
    if not is_distributed():
        return [obj]
    check_peers(what)
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_object_group())
    return out


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(to_cpu(x) for x in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(x) for x in obj)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return obj


def agree(error: BaseException | None, payload: Any = None, *, what: str = "work") -> list[Any]:
    """Exchange this rank's status (and ``payload``); raise on every rank if any rank failed.

    Args:
        error: the exception this rank caught in its local work, or ``None``.
        payload: a picklable value to gather with the status (CPU tensors).
        what: the work, for the message.

    Returns:
        The payloads of all ranks, in rank order.

    Raises:
        The local ``error`` itself on a rank that failed; :class:`DistributedError` naming the
        first failed rank and its message on the others.
    """
    status = None if error is None else f"{type(error).__name__}: {error}"
    statuses = gather_objects((status, payload), what=what)
    failed = [(r, message) for r, (message, _) in enumerate(statuses) if message is not None]
    if error is not None:
        raise error
    if failed:
        first, message = failed[0]
        others = f" (and on {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DistributedError(f"{what} failed on rank {first}{others}: {message}")
    return [p for _, p in statuses]


@contextmanager
def phase(what: str) -> Iterator[None]:
    """Run a block of local work, then check with every rank that none failed.

    Without a group this only runs the block. With one, every rank must enter the phase (it
    ends with a collective call); an exception inside is re-raised on its rank and turned into
    a :class:`DistributedError` on the others, so all ranks stop together.
    """
    if not is_distributed():
        yield
        return
    try:
        yield
    except Exception as err:
        agree(err, what=what)
        raise  # agree re-raises err; kept for clarity
    agree(None, what=what)


def map_classes(
    fn: Callable[[K], T],
    keys: Sequence[K],
    *,
    weights: Sequence[float] | None = None,
    what: str = "per-class work",
) -> list[T]:
    """``[fn(k) for k in keys]``, each ``k`` computed on one rank, the results on every rank.

    ``fn`` must give the same value for a key whichever rank computes it and whatever was
    computed before it (no state carried between keys, e.g. one random generator consumed
    class after class). It runs inside :func:`local`, so library calls in it (a selector's
    ``select`` on one class) do not shard again. Results are pickled to be gathered: tensors
    come back on the CPU.

    Args:
        fn: the per-key computation (e.g. one class's selection).
        keys: the same sequence on every rank (checked).
        weights: cost per key for :func:`owners` (default: equal).
        what: the work, for error messages.

    Returns:
        The results in the order of ``keys``.

    Raises:
        DistributedError: the ranks were given different keys, or ``fn`` failed on another
            rank (the failing rank raises its own error).
    """
    keys = list(keys)
    if not is_distributed():
        return [fn(k) for k in keys]
    seen = gather_objects(keys)
    if any(other != keys for other in seen):
        raise DistributedError(
            f"{what}: the ranks were given different keys ({[len(s) for s in seen]} per rank); "
            "call it with the same data on every rank."
        )
    mine = set(shard(range(len(keys)), weights))
    error, done = None, {}
    try:
        with local():  # fn runs on this rank alone: library calls inside it must not shard
            for i in sorted(mine):
                done[i] = to_cpu(fn(keys[i]))
    except Exception as err:  # reported to every rank by agree
        error = err
    merged: dict[int, T] = {}
    for part in agree(error, done, what=what):
        merged.update(part)
    return [merged[i] for i in range(len(keys))]


# --------------------------------------------------------------------- start and stop
def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds; got {raw!r}.") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive; got {raw!r}.")
    return timedelta(seconds=seconds)


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (its environment
    variables are set and ``WORLD_SIZE`` > 1)."""
    if not all(name in os.environ for name in _LAUNCH_ENV):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer; got {os.environ['WORLD_SIZE']!r} (set by torchrun)."
        ) from None


def threads_per_rank(threads: int, local_world_size: int) -> int:
    """CPU threads for one of ``local_world_size`` ranks on a host whose processes would each
    use ``threads``: an even share, at least one, so the ranks do not oversubscribe the cores."""
    return max(1, threads // max(1, local_world_size))


def split_threads() -> int:
    """Set this rank's torch threads (and so the compiled kernels') to its share of the host:
    :func:`threads_per_rank` of ``torch.get_num_threads()`` over ``LOCAL_WORLD_SIZE`` (set by
    ``torchrun``). ``REPLAY_LCMAT_THREADS`` overrides it. Returns the threads set."""
    raw = os.environ.get(THREADS_ENV)
    if raw is not None:
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer; got {raw!r}.") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer; got {raw!r}.")
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = threads_per_rank(torch.get_num_threads(), local)
    torch.set_num_threads(threads)
    return threads


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Initialise the default process group from ``torchrun``'s environment, if present.

    The backend is NCCL when ``device`` is CUDA (each rank then uses ``cuda:LOCAL_RANK``),
    else gloo. Collective calls time out after :data:`TIMEOUT_ENV` seconds. Each rank takes
    its share of the host's CPU threads (:func:`split_threads`): two ranks with two threads each
    on two cores would wait on each other's threads.

    Returns:
        True when this call created the group (call :func:`teardown` at the end); False when
        not launched by torchrun with several processes, or a group already exists.
    """
    global _started_here
    if not launched() or not dist.is_available() or dist.is_initialized():
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=_timeout())
    split_threads()
    _started_here = True
    return True


def teardown() -> None:
    """Destroy the default group if :func:`init_from_env` created it."""
    global _started_here
    if _started_here and dist.is_initialized():
        dist.destroy_process_group()
        _object_groups.clear()
    _started_here = False
