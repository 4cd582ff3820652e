"""Checkpoints of a condensation run: what is saved with a synthetic set (its options as plain
values), refusing to overwrite another run, and resuming one (:class:`Checkpointing`, a base of
:class:`~replay_lcmat.condensation.base.Condenser`)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from replay_lcmat.condensation.storage import (
    SyntheticSet,
    fingerprint_differences,
    load_synthetic,
)

if TYPE_CHECKING:  # annotations only: base imports this module
    from replay_lcmat.condensation.task import Task

# options that do not change the result: they may differ between a run and its rerun
_RERUN_DIFFERENCES = {
    "device",
    "checkpoint",
    "checkpoint_every",
    "overwrite",
    "progress",
    "callback",
}
# ... and between a run and its resumption, which may also run longer
_RESUMABLE_DIFFERENCES = _RERUN_DIFFERENCES | {"iterations"}


class Checkpointing:
    """Saving, checking and resuming a condenser's run; the condenser provides ``method``,
    ``seed``, ``iterations``, ``checkpoint``, ``overwrite`` and ``get_params``."""

    def saved_options(self, per_class: int) -> dict[str, Any]:
        """:meth:`get_params` as plain values (saved with the set, compared on resume), plus
        ``per_class``; ``method`` and ``seed`` are saved beside them."""
        plain = {
            key: _plain(value)
            for key, value in self.get_params().items()
            if key not in ("method", "seed")
        }
        return {"per_class": per_class} | plain

    def _snapshot(
        self,
        syn: Tensor,
        optimizer: torch.optim.Optimizer,
        task: Task,
        iteration: int,
        losses: list[float],
    ) -> SyntheticSet:
        images, labels = task.assemble(syn.detach().cpu().clone())
        return SyntheticSet(
            images=images,
            labels=labels,
            method=self.method,
            options=self.saved_options(task.per_class),
            seed=self.seed,
            iteration=iteration,
            state={
                "generator": task.generator.get_state(),
                "optimizer": optimizer.state_dict(),
                "losses": list(losses),
            },
            fingerprint=task.fingerprint,
            complete=iteration >= self.iterations,
        )

    def check_checkpoint(
        self,
        resume: str | os.PathLike | SyntheticSet | None = None,
        *,
        fingerprint: dict[str, Any] | None = None,
        per_class: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        """Refuse, before any work, to overwrite a ``checkpoint`` file that holds another run.

        ``path``: check that file instead of ``checkpoint`` (the command line checks its
        ``--out`` this way, its checkpoints being ``OUT.ckpt``).

        :meth:`condense` calls it with the data's fingerprint; call it earlier (without one,
        options only) to fail before loading the data. Passes when there is no checkpoint, no
        file yet, ``overwrite=True``, ``resume`` is that same file, or the file holds an
        identical run (same method, seed, options, network and, when both are known, data),
        which the rerun reproduces.

        Raises:
            ValueError: the path is a directory, or the file holds another run or is not a
                synthetic set; the message says what differs and how to keep or replace it.
        """
        if path is None and self.checkpoint is None:
            return
        path = Path(self.checkpoint if path is None else path)
        if path.is_dir():
            raise ValueError(
                f"checkpoint {path} is a directory; pass a file path, e.g. {path / 'syn.pt'}."
            )
        if self.overwrite or not path.exists():
            return
        if isinstance(resume, str | os.PathLike) and _same_file(resume, path):
            return  # continuing the run in place; _restore checks it is the same run
        keep = (
            f"To keep it, choose another checkpoint file (CLI: --out) or continue it with "
            f"resume={str(path)!r} (CLI: --resume); to replace it, pass overwrite=True (CLI: "
            "--overwrite)."
        )
        try:
            saved = load_synthetic(path, allow_incomplete=True)
        except ValueError as err:
            raise ValueError(
                f"checkpoint {path} already exists and is not a synthetic set of replay-lcmat "
                f"({err}) To keep it, choose another checkpoint file (CLI: --out); to replace "
                "it, pass overwrite=True (CLI: --overwrite)."
            ) from None
        found = self._differences(saved, _RERUN_DIFFERENCES, per_class)
        if fingerprint is not None and saved.fingerprint:
            found += fingerprint_differences(saved.fingerprint, fingerprint)
        if found:
            raise ValueError(
                f"checkpoint {path} already holds another run ({saved.method!r}, seed "
                f"{saved.seed}, at iteration {saved.iteration}) that this one would overwrite; "
                f"it differs in {'; '.join(found)}. {keep}"
            )
        if fingerprint is not None and not saved.fingerprint:
            warnings.warn(
                f"checkpoint {path} predates the data fingerprint, so whether it was made on "
                "the same data cannot be checked; it holds a run with the same method, seed and "
                "options, which this run overwrites (pass another checkpoint file to keep it).",
                UserWarning,
                stacklevel=3,
            )

    def _differences(
        self, saved: SyntheticSet, ignore: set[str], per_class: int | None
    ) -> list[str]:
        """``"key: saved X, now Y"`` for method, seed and each option not in ``ignore``."""
        found = [
            f"{key}: saved {old!r}, now {new!r}"
            for key, old, new in (
                ("method", saved.method, self.method),
                ("seed", saved.seed, self.seed),
            )
            if old != new
        ]
        old_options = dict(saved.options)
        options = self.saved_options(per_class)
        if per_class is None:  # options only: the budget is not known yet
            ignore = ignore | {"per_class"}
        for key, new in options.items():
            old = old_options.get(key)
            if key not in ignore and old != new:
                found.append(f"{key}: saved {old!r}, now {new!r}")
        return found

    def _restore(
        self,
        resume: str | os.PathLike | SyntheticSet,
        syn: Tensor,
        optimizer: torch.optim.Optimizer,
        task: Task,
    ) -> tuple[int, list[float]]:
        saved = (
            resume
            if isinstance(resume, SyntheticSet)
            else load_synthetic(resume, allow_incomplete=True)
        )
        source = "the given set" if isinstance(resume, SyntheticSet) else str(resume)
        found = self._differences(saved, _RESUMABLE_DIFFERENCES, task.per_class)
        if found:
            raise ValueError(
                f"cannot resume from {source}: it was made by {saved.method!r} with seed "
                f"{saved.seed} and differs from this run in {'; '.join(found)}. Resume with "
                "the same method, seed, network and options (only iterations may grow; device "
                "and checkpointing may change)."
            )
        if not saved.fingerprint:
            warnings.warn(
                f"{source} predates the data fingerprint (saved by an older replay-lcmat), so "
                "whether it was made on these images and labels cannot be checked; resuming "
                "anyway. Make sure the data is the same as that run's.",
                UserWarning,
                stacklevel=3,
            )
        else:
            found = fingerprint_differences(saved.fingerprint, task.fingerprint)
            if found:
                raise ValueError(
                    f"cannot resume from {source}: it was made on other data ("
                    f"{'; '.join(found)}). Resume on the same images and labels, in the same "
                    "order and normalisation, or start a new run with another checkpoint file."
                )
        if saved.iteration > self.iterations:
            raise ValueError(
                f"the checkpoint is at iteration {saved.iteration}, beyond iterations="
                f"{self.iterations}; pass iterations >= {saved.iteration}."
            )
        if not saved.state:
            raise ValueError(f"{source} holds no resume state; it cannot be continued.")
        missing = sorted({"optimizer", "generator", "losses"} - set(saved.state))
        if missing:
            raise ValueError(
                f"{source} is a corrupt checkpoint: its resume state lacks {missing}; start a "
                "new run (overwrite=True, CLI: --overwrite)."
            )
        # the condensed classes' rows (a class taken whole is saved as its real images)
        condensed = torch.isin(saved.labels, task.classes)
        if saved.images[condensed].shape != syn.shape or not torch.equal(
            saved.labels[condensed], task.classes.repeat_interleave(task.per_class)
        ):
            raise ValueError(
                f"the checkpoint holds images {tuple(saved.images.shape)} of classes "
                f"{saved.labels.unique().tolist()}, but this data gives {tuple(syn.shape)} of "
                f"classes {task.classes.tolist()}; resume on the same data."
            )
        with torch.no_grad():
            syn.copy_(saved.images[condensed].to(syn.device))
        optimizer.load_state_dict(saved.state["optimizer"])
        task.generator.set_state(saved.state["generator"])
        return saved.iteration, list(saved.state["losses"])


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _plain(value: Any) -> Any:
    """An option as a plain value that ``torch.load(weights_only=True)`` reads back and that is
    the same in every process: devices and paths as strings, other objects (a network
    factory, a DSA instance, a callback) as their repr without memory addresses."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.device | os.PathLike):
        return str(value)
    return _without_addresses(repr(value))


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
