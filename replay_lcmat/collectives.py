"""Tensor collectives of the distributed path (``torch.distributed``): sums over ranks, rows
computed on different ranks put together, rank 0's parameters broadcast. Each is a no-op in one
process (:func:`replay_lcmat.distributed.is_distributed`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from replay_lcmat.distributed import DistributedError, gather_objects, is_distributed


def _reduce_device(tensor: Tensor) -> torch.device:
    """Where a collective on ``tensor`` can run with the default backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (any device; moved for the backend if needed)."""
    if not is_distributed():
        return tensor
    where = _reduce_device(tensor)
    if tensor.device == where:
        dist.all_reduce(tensor)
    else:
        moved = tensor.to(where)
        dist.all_reduce(moved)
        tensor.copy_(moved)
    return tensor


def sum_gradient_(param: Tensor, loss: Tensor) -> float:
    """After each rank's ``loss.backward()`` over its share of a sum: make ``param.grad`` and
    the loss the totals over ranks (one all-reduce), so every rank takes the same step.

    A rank that computed nothing may leave ``param.grad`` unset (``None``: zeros). Without a
    group nothing changes.

    Returns:
        The total loss as a float.
    """
    if not is_distributed():
        return float(loss.detach())
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    packed = torch.cat([param.grad.reshape(-1), loss.detach().reshape(1).to(param.grad)])
    all_reduce_sum_(packed)
    param.grad.copy_(packed[:-1].view_as(param.grad))
    return float(packed[-1])


def merge_rows(local: Tensor | None, n: int) -> Tensor:
    """Rows computed on different ranks, put together: ``[n, ...]`` on every rank.

    Each rank passes a tensor ``[n, ...]`` holding its own rows and zeros elsewhere (or
    ``None`` if it computed no row); every row must come from exactly one rank. The values are
    exact: a row is its rank's value plus zeros.
    """
    if not is_distributed():
        if local is None:
            raise ValueError("merge_rows got no rows in a single process.")
        return local
    shapes = gather_objects(None if local is None else (tuple(local.shape), local.dtype))
    known = [s for s in shapes if s is not None]
    if not known:
        raise ValueError("merge_rows: no rank computed any row.")
    shape, dtype = known[0]
    if any(s != (shape, dtype) for s in known) or shape[0] != n:
        raise DistributedError(f"merge_rows: ranks hold different shapes {shapes}; expected n={n}.")
    if local is None:
        local = torch.zeros(shape, dtype=dtype)
    return all_reduce_sum_(local)


def broadcast_module_(module: nn.Module) -> nn.Module:
    """Copy rank 0's parameters and buffers into ``module`` on every rank, in place (as
    ``DistributedDataParallel`` does when it wraps a model); returns ``module``."""
    if not is_distributed():
        return module
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            data = tensor.data
            moved = data.to(_reduce_device(data))
            dist.broadcast(moved, src=0)
            if moved.data_ptr() != data.data_ptr():
                data.copy_(moved)
    return module
