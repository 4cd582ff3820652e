"""Saving and loading synthetic sets, with the state needed to resume a run and a fingerprint
of the data the run was made on."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from replay_lcmat.files import CorruptDataError, atomic_torch_save, read_torch_file

FORMAT = "replay-lcmat/synthetic-set"
VERSION = 1
# keys every saved set has (sets saved before the data fingerprint lack "fingerprint")
_REQUIRED = ("images", "labels", "method", "options", "seed", "iteration", "state")
_SAMPLE = 1 << 16  # pixel values hashed by data_fingerprint


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
        fingerprint: :func:`data_fingerprint` of the images and labels the set was made from
            (empty in sets saved before replay-lcmat recorded it).
        complete: ``False`` for a checkpoint of a run that has not reached its last iteration
            (:func:`load_synthetic` warns about it); sets saved before the flag are complete.
    """

    images: Tensor
    labels: Tensor
    method: str
    options: dict[str, Any]
    seed: int
    iteration: int
    state: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a unique temporary file, then a rename): a crash while writing
        keeps the previous file intact, and no reader sees half a file."""
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
            "fingerprint": self.fingerprint,
            "complete": self.complete,
        }
        atomic_torch_save(path, payload)


def load_synthetic(path: str | os.PathLike, *, allow_incomplete: bool = False) -> SyntheticSet:
    """Read a set written by :meth:`SyntheticSet.save` (or a condenser checkpoint).

    A checkpoint of an unfinished run (``complete=False``: the run was stopped or is still
    going) is returned with a warning that its images are not the final ones, unless
    ``allow_incomplete`` (resuming from it).

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptDataError: (a ValueError) the file is truncated, corrupt or not a replay-lcmat
            synthetic set.
        ValueError: a synthetic set of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no synthetic set at {path}; pass the file written by condense (--out / checkpoint=)."
        )
    payload = read_torch_file(
        path, "synthetic set", "condense (--out / checkpoint=) or SyntheticSet.save"
    )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptDataError(
            f"{path} is not a replay-lcmat synthetic set; pass a file written by "
            "SyntheticSet.save or by a condenser's checkpoint."
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has format version {payload.get('version')!r}; expected {VERSION}."
        )
    missing = [key for key in _REQUIRED if key not in payload]
    images, labels = payload.get("images"), payload.get("labels")
    if missing or not (
        isinstance(images, Tensor)
        and isinstance(labels, Tensor)
        and images.dim() == 4
        and labels.dim() == 1
        and len(images) == len(labels)
        and isinstance(payload["options"], dict)
        and isinstance(payload["state"], dict)
    ):
        why = f"missing {missing}" if missing else "its images, labels or options are malformed"
        raise CorruptDataError(
            f"{path} is a corrupt replay-lcmat synthetic set ({why}); write it again with "
            "condense or SyntheticSet.save."
        )
    complete = payload.get("complete", True) is not False
    if not complete and not allow_incomplete:
        total = payload["options"].get("iterations", "?")
        warnings.warn(
            f"{path} is the checkpoint of an unfinished condensation (iteration "
            f"{payload['iteration']} of {total}): its images are not the final result. Finish "
            f"the run with `replay-lcmat condense ... --resume {path}` (or resume=...), or use "
            "the file written when the run completes.",
            UserWarning,
            stacklevel=2,
        )
    return SyntheticSet(
        images=images,
        labels=labels,
        method=payload["method"],
        options=payload["options"],
        seed=payload["seed"],
        iteration=payload["iteration"],
        state=payload["state"],
        fingerprint=payload.get("fingerprint") or {},
        complete=complete,
    )


def data_fingerprint(images: Tensor, labels: Tensor) -> dict[str, Any]:
    """A cheap fingerprint of a data set: shape, dtype, the labels (exactly), and the pixels
    (a hash of an evenly strided sample of about 65k values, their sum and L2 norm).

    Equal data always gives an equal fingerprint (on any device, up to the tolerance of
    :func:`fingerprint_differences`); another data set, another order, another
    normalisation or another split is caught; an edit of a few pixels may not be.
    """
    flat = images.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    sample = flat[::step].to(device="cpu", dtype=torch.float64).contiguous()
    labels_cpu = labels.detach().cpu().to(torch.int64).contiguous()
    present, counts = torch.unique(labels_cpu, return_counts=True)
    return {
        "shape": list(images.shape),
        "dtype": str(images.dtype).removeprefix("torch."),
        "label_counts": dict(zip(present.tolist(), counts.tolist(), strict=True)),
        "labels_sha256": hashlib.sha256(labels_cpu.numpy().tobytes()).hexdigest(),
        "pixel_sample_sha256": hashlib.sha256(sample.numpy().tobytes()).hexdigest(),
        # per-image float32 sums added in float64: one pass, no float64 copy of the images
        "pixel_sum": float(images.detach().flatten(1).sum(1).to(torch.float64).sum()),
        "pixel_norm": float(torch.linalg.vector_norm(flat)),
    }


def fingerprint_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :func:`data_fingerprint` results, one phrase per difference
    (empty when they match). Pixel sums are compared with a tolerance for the rounding of
    another device."""
    if saved.get("shape") != now["shape"]:
        return [f"images: saved shape {saved.get('shape')}, now {now['shape']}"]
    found = []
    if saved.get("dtype") != now["dtype"]:
        found.append(f"images: saved dtype {saved.get('dtype')}, now {now['dtype']}")
    if saved.get("labels_sha256") != now["labels_sha256"]:
        if saved.get("label_counts") == now["label_counts"]:
            found.append("labels: the same count per class but in another order")
        else:
            found.append(
                f"labels (count per class): saved {saved.get('label_counts')}, now "
                f"{now['label_counts']}"
            )
    numel = math.prod(now["shape"])
    norm = now["pixel_norm"]
    sums_close = math.isclose(
        saved.get("pixel_sum", math.nan),
        now["pixel_sum"],
        rel_tol=0,
        abs_tol=1e-5 * norm * numel**0.5 + 1e-6,
    ) and math.isclose(saved.get("pixel_norm", math.nan), norm, rel_tol=1e-5, abs_tol=1e-6)
    if saved.get("pixel_sample_sha256") != now["pixel_sample_sha256"] or not sums_close:
        old_sum, old_norm = saved.get("pixel_sum", math.nan), saved.get("pixel_norm", math.nan)
        before = f"sum {old_sum:.6g}, norm {old_norm:.6g}"
        found.append(
            f"pixel values: same shape but other content (saved {before}; now sum "
            f"{now['pixel_sum']:.6g}, norm {norm:.6g}); another data set, order, split or "
            "normalisation?"
        )
    return found
