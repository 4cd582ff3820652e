"""Saving and loading synthetic sets, with the state needed to resume a run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT = "replay-lcmat/synthetic-set"
VERSION = 1


@dataclass
class SyntheticSet:
    """A synthetic set and how it was made.

    Attributes:
        images: float ``[m, C, H, W]`` on the CPU, sorted by class (``ipc`` per class).
        labels: int64 ``[m]``, the original class labels.
        method: condenser name (``"dc"``, ``"dsa"``, ``"dm"``, ``"lcmat-c"``).
        options: the condenser's options (plain values; callables recorded by name).
        seed: the seed the run used.
        iteration: outer iterations completed.
        state: optimiser and RNG state to resume from (empty once not needed).
    """

    images: Tensor
    labels: Tensor
    method: str
    options: dict[str, Any]
    seed: int
    iteration: int
    state: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash while writing keeps the previous file intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "method": self.method,
            "options": self.options,
            "seed": self.seed,
            "iteration": self.iteration,
            "state": self.state,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)


def load_synthetic(path: str | os.PathLike) -> SyntheticSet:
    """Read a set written by :meth:`SyntheticSet.save` (or a condenser checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no synthetic set at {path}; pass the file written by condense (--out / checkpoint=)."
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a replay-lcmat synthetic set; pass a file written by "
            "SyntheticSet.save or by a condenser's checkpoint."
        )
    if payload["version"] != VERSION:
        raise ValueError(f"{path} has format version {payload['version']}; expected {VERSION}.")
    return SyntheticSet(
        images=payload["images"],
        labels=payload["labels"],
        method=payload["method"],
        options=payload["options"],
        seed=payload["seed"],
        iteration=payload["iteration"],
        state=payload["state"],
    )
