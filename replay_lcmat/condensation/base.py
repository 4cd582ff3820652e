"""Shared machinery of the condensers: input checks, initialisation, the outer loop,
checkpoints, resume and NaN handling. Methods only implement :meth:`Condenser._step`."""

from __future__ import annotations

import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from replay_lcmat.condensation.dsa import DSA
from replay_lcmat.condensation.storage import SyntheticSet, load_synthetic
from replay_lcmat.models import make_model, split_head
from replay_lcmat.seeding import seeded

NetworkFactory = Callable[..., nn.Module]
"""Called as ``factory(in_channels=C, num_classes=k, image_size=H)``; returns a model whose last
module is an ``nn.Linear`` head (see :func:`replay_lcmat.models.split_head`)."""

# options that may differ between a run and its resumption
_RESUMABLE_DIFFERENCES = {"iterations", "device", "checkpoint", "checkpoint_every", "network"}


@dataclass
class Task:
    """The data one :meth:`Condenser.condense` call works on.

    Class ``j`` of the synthetic set is original label ``classes[j]``; the matching networks see
    labels ``0..k-1``. ``by_class[j]`` indexes ``images`` (which may stay on the CPU).
    """

    images: Tensor
    by_class: list[Tensor]
    classes: Tensor
    generator: torch.Generator
    device: torch.device
    network: NetworkFactory

    @property
    def num_classes(self) -> int:
        return len(self.by_class)

    def real_batch(self, j: int, size: int) -> Tensor:
        """Up to ``size`` distinct random real images of class ``j``, on the device."""
        idx = self.by_class[j]
        pick = torch.randperm(len(idx), generator=self.generator)[:size]
        return self.images[idx[pick]].to(self.device)

    def real_mixed_batch(self, size: int) -> tuple[Tensor, Tensor]:
        """Up to ``size`` random real images of all classes and their labels ``0..k-1``."""
        pool = torch.cat(self.by_class)
        local = torch.cat([torch.full((len(i),), j) for j, i in enumerate(self.by_class)])
        pick = torch.randperm(len(pool), generator=self.generator)[:size]
        return self.images[pool[pick]].to(self.device), local[pick].to(self.device)

    def new_network(self) -> tuple[nn.Module, nn.Module, nn.Linear]:
        """A freshly initialised network (seeded from the task generator) and its two parts."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        _, channels, height, _ = self.images.shape
        with seeded(seed):
            net = self.network(
                in_channels=channels, num_classes=self.num_classes, image_size=height
            )
        net = net.to(self.device)
        features, head = split_head(net)
        return net, features, head


class Condenser(ABC):
    """Learns ``ipc`` synthetic images per class; configure here, then call :meth:`condense`.

    Args:
        ipc: synthetic images per class (>= 1).
        iterations: outer iterations (a fresh network each); 0 returns the initialisation.
        device: where networks and synthetic images live.
        seed: the only source of randomness (init, batches, networks, augmentation).
        method: name recorded in saved sets.
        init: ``"noise"`` (standard normal pixels) or ``"real"`` (random real images).
        lr_img, momentum_img: SGD on the synthetic pixels.
        batch_real: real images per class in each matching step.
        augment: ``True`` for :class:`DSA` defaults, a :class:`DSA` instance, or ``False``.
        network: model name for :func:`replay_lcmat.models.make_model` (default ``"convnet"``,
            i.e. ConvNet-3) or a factory ``f(in_channels=, num_classes=, image_size=)``.
        network_options: keyword options of a named model (e.g. ``{"width": 64}``).
        classes: labels to condense (default: those present); each must have samples.
        checkpoint: file to save the set (with resume state) every ``checkpoint_every``
            iterations and at the end.
        callback: ``callback(iteration, loss)`` after every iteration (1-based).
        progress: show a tqdm bar with the matching loss.
    """

    def __init__(
        self,
        *,
        ipc: int,
        iterations: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        method: str = "condenser",
        init: str = "noise",
        lr_img: float = 0.1,
        momentum_img: float = 0.5,
        batch_real: int = 256,
        augment: bool | DSA = True,
        network: str | NetworkFactory = "convnet",
        network_options: dict[str, Any] | None = None,
        classes: Sequence[int] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        callback: Callable[[int, float], None] | None = None,
        progress: bool = True,
    ) -> None:
        if isinstance(ipc, bool) or not isinstance(ipc, numbers.Integral) or ipc < 1:
            raise ValueError(f"ipc (images per class) must be an integer >= 1, got {ipc!r}.")
        if (
            isinstance(iterations, bool)
            or not isinstance(iterations, numbers.Integral)
            or iterations < 0
        ):
            raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}.")
        if init not in ("noise", "real"):
            raise ValueError(f"init must be 'noise' or 'real', got {init!r}.")
        for name, value in (("lr_img", lr_img), ("batch_real", batch_real)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
        if not (isinstance(network, str) or callable(network)):
            raise TypeError(
                "network must be a model name for replay_lcmat.models.make_model or a factory "
                f"f(in_channels=, num_classes=, image_size=); got {network!r}."
            )
        self.ipc, self.iterations = int(ipc), int(iterations)
        self.seed, self.method = seed, method
        self.device = torch.device(device)
        self.init, self.lr_img, self.momentum_img = init, lr_img, momentum_img
        self.batch_real = batch_real
        self.augment = DSA() if augment is True else (augment or None)
        if self.augment is not None and not isinstance(self.augment, DSA):
            raise TypeError(f"augment must be True, False or a DSA instance, got {augment!r}.")
        if network_options and not isinstance(network, str):
            raise ValueError("network_options apply to a model name; put them in your factory.")
        self.network, self.network_options = network, dict(network_options or {})
        self.classes = None if classes is None else [int(c) for c in classes]
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.callback, self.progress = callback, progress
        self.losses_: list[float] = []

    # ----------------------------------------------------------------- subclass interface
    def class_batches(self, syn: Tensor, task: Task) -> Iterator[tuple[int, Tensor, Tensor]]:
        """``(j, real, synthetic)`` for every class ``j``: a real batch of ``batch_real`` images
        and the class's ``ipc`` synthetic images, both under one shared DSA draw (if any)."""
        size = (syn.shape[-2], syn.shape[-1])
        for j in range(task.num_classes):
            real = task.real_batch(j, self.batch_real)
            fake = syn[j * self.ipc : (j + 1) * self.ipc]
            if self.augment is not None:
                params = self.augment.sample(size, task.generator)
                real, fake = self.augment.apply(real, params), self.augment.apply(fake, params)
            yield j, real, fake

    @abstractmethod
    def _step(self, syn: Tensor, optimizer: torch.optim.Optimizer, task: Task) -> float:
        """One outer iteration: update ``syn`` (a leaf, ``ipc`` images per class in class
        order) through ``optimizer``; return the iteration's matching loss."""

    def _min_real_per_class(self) -> int:
        return 1

    def options(self) -> dict[str, Any]:
        """Plain-value options, saved with the set and compared on resume."""
        return {
            "ipc": self.ipc,
            "iterations": self.iterations,
            "device": str(self.device),
            "init": self.init,
            "lr_img": self.lr_img,
            "momentum_img": self.momentum_img,
            "batch_real": self.batch_real,
            "augment": None if self.augment is None else repr(self.augment),
            "network": self.network if isinstance(self.network, str) else repr(self.network),
            "network_options": self.network_options,
            "classes": self.classes,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "checkpoint_every": self.checkpoint_every,
        }

    # ----------------------------------------------------------------------- the verb
    def condense(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        resume: str | os.PathLike | SyntheticSet | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Learn the synthetic set.

        Args:
            images: float ``[n, C, H, W]``, already normalised (any device).
            labels: int64 ``[n]``.
            resume: a checkpoint (path or :class:`SyntheticSet`) of a run of this condenser
                with the same seed and options; continues from its iteration and gives the
                same result as an uninterrupted run.

        Returns:
            ``(syn_images [k*ipc, C, H, W] on the device, syn_labels [k*ipc])``, sorted by
            class, ``ipc`` images of each of the ``k`` condensed classes. Also stored as
            ``self.synthetic_`` (a :class:`SyntheticSet`); per-iteration losses in
            ``self.losses_``.
        """
        _check_inputs(images, labels)
        task = self._make_task(images, labels)
        syn = self._initialise(task).requires_grad_(True)
        optimizer = torch.optim.SGD([syn], lr=self.lr_img, momentum=self.momentum_img)
        start, self.losses_ = 0, []
        if resume is not None:
            start = self._restore(resume, syn, optimizer, task)

        bar = tqdm(
            total=self.iterations, initial=start, desc=self.method, disable=not self.progress
        )
        last_saved = start if resume is not None else None
        try:
            for it in range(start, self.iterations):
                loss = self._step(syn, optimizer, task)
                if not (math.isfinite(loss) and torch.isfinite(syn).all()):
                    if self.checkpoint is None:
                        kept = "no checkpoint was written (pass checkpoint= to keep one)"
                    elif last_saved is None:
                        kept = f"no checkpoint had been written to {self.checkpoint} yet"
                    else:
                        kept = (
                            f"the last good checkpoint (iteration {last_saved}) is kept at "
                            f"{self.checkpoint}"
                        )
                    raise FloatingPointError(
                        f"{self.method}: the matching loss or the synthetic images became "
                        f"non-finite at iteration {it + 1}; {kept}. Lower lr_img or check the "
                        "input images for extreme values."
                    )
                self.losses_.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                if self.callback is not None:
                    self.callback(it + 1, loss)
                done = it + 1 == self.iterations
                if self.checkpoint is not None and ((it + 1) % self.checkpoint_every == 0 or done):
                    self._snapshot(syn, optimizer, task, it + 1).save(self.checkpoint)
                    last_saved = it + 1
        finally:
            bar.close()
        self.synthetic_ = self._snapshot(syn, optimizer, task, max(start, self.iterations))
        if self.checkpoint is not None and self.iterations == start:
            self.synthetic_.save(self.checkpoint)
        return syn.detach().clone(), self.synthetic_.labels.to(self.device)

    # ------------------------------------------------------------------------ helpers
    def _network_factory(self) -> NetworkFactory:
        if callable(self.network):
            return self.network
        name, options = self.network, self.network_options

        def build(**shape: int) -> nn.Module:
            return make_model(name, **shape, **options)

        return build

    def _make_task(self, images: Tensor, labels: Tensor) -> Task:
        present = torch.unique(labels.cpu()).tolist()
        classes = present if self.classes is None else self.classes
        labels_cpu = labels.cpu()
        by_class = []
        for c in classes:
            idx = (labels_cpu == c).nonzero().squeeze(1)
            if len(idx) == 0:
                raise ValueError(
                    f"class {c} has no samples (present: {present}); pass images of every class "
                    "to condense or leave it out of classes=."
                )
            need = max(self._min_real_per_class(), self.ipc if self.init == "real" else 1)
            if len(idx) < need:
                why = (
                    f"init='real' needs ipc={self.ipc} distinct real images"
                    if self.init == "real" and self.ipc >= need
                    else f"{self.method} needs at least {need} real images per class"
                )
                raise ValueError(
                    f"class {c} has {len(idx)} samples but {why}; lower ipc, use init='noise', "
                    "or provide more images of that class."
                )
            by_class.append(idx)
        return Task(
            images=images,
            by_class=by_class,
            classes=torch.tensor(classes, dtype=torch.long),
            generator=torch.Generator().manual_seed(self.seed),
            device=self.device,
            network=self._network_factory(),
        )

    def _initialise(self, task: Task) -> Tensor:
        _, channels, height, width = task.images.shape
        if self.init == "noise":
            shape = (task.num_classes * self.ipc, channels, height, width)
            syn = torch.randn(shape, generator=task.generator, dtype=task.images.dtype)
            return syn.to(self.device)
        return torch.cat([task.real_batch(j, self.ipc) for j in range(task.num_classes)])

    def _snapshot(
        self, syn: Tensor, optimizer: torch.optim.Optimizer, task: Task, iteration: int
    ) -> SyntheticSet:
        return SyntheticSet(
            images=syn.detach().cpu().clone(),
            labels=task.classes.repeat_interleave(self.ipc),
            method=self.method,
            options=self.options(),
            seed=self.seed,
            iteration=iteration,
            state={
                "generator": task.generator.get_state(),
                "optimizer": optimizer.state_dict(),
                "losses": list(self.losses_),
            },
        )

    def _restore(
        self,
        resume: str | os.PathLike | SyntheticSet,
        syn: Tensor,
        optimizer: torch.optim.Optimizer,
        task: Task,
    ) -> int:
        saved = resume if isinstance(resume, SyntheticSet) else load_synthetic(resume)
        mine = self.options()
        diffs = {
            k: (saved.options.get(k), v)
            for k, v in mine.items()
            if k not in _RESUMABLE_DIFFERENCES and saved.options.get(k) != v
        }
        if saved.method != self.method or saved.seed != self.seed or diffs:
            raise ValueError(
                f"cannot resume: the checkpoint was made by {saved.method!r} with seed "
                f"{saved.seed}; this condenser is {self.method!r} with seed {self.seed}; "
                f"differing options (saved, now): {diffs}. Resume with the same method, seed and "
                "options (only iterations may grow)."
            )
        if saved.iteration > self.iterations:
            raise ValueError(
                f"the checkpoint is at iteration {saved.iteration}, beyond iterations="
                f"{self.iterations}; pass iterations >= {saved.iteration}."
            )
        if not saved.state:
            raise ValueError("the set holds no resume state; it cannot be continued.")
        if saved.images.shape != syn.shape or not torch.equal(
            saved.labels, task.classes.repeat_interleave(self.ipc)
        ):
            raise ValueError(
                f"the checkpoint holds images {tuple(saved.images.shape)} of classes "
                f"{saved.labels.unique().tolist()}, but this data gives {tuple(syn.shape)} of "
                f"classes {task.classes.tolist()}; resume on the same data."
            )
        with torch.no_grad():
            syn.copy_(saved.images.to(syn.device))
        optimizer.load_state_dict(saved.state["optimizer"])
        task.generator.set_state(saved.state["generator"])
        self.losses_ = list(saved.state["losses"])
        return saved.iteration


def _check_inputs(images: Tensor, labels: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a 4-D float tensor [n, C, H, W], got {shape}; add a channel "
            "dimension with images.unsqueeze(1) for grey images."
        )
    if not images.is_floating_point():
        raise TypeError(
            f"images must be float (normalised), got {images.dtype}; use ImageData.normalized()."
        )
    if len(images) == 0:
        raise ValueError("images is empty; pass at least ipc images of every class.")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or len(labels) != len(images):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"labels must be a 1-D int64 tensor with one label per image ({len(images)}), got "
            f"{shape}."
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}.")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf; clean or drop those images first.")
