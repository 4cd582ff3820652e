"""Shared machinery of the condensers: the registry, options, the memory check,
initialisation, the outer loop and NaN handling (the data of a run, its input checks and the
small-class rule: :mod:`replay_lcmat.condensation.task`; checkpoints and resume:
:mod:`replay_lcmat.condensation.checkpoints`). Methods only implement :meth:`Condenser._step`."""

from __future__ import annotations

import contextlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from replay_lcmat import distributed, resources
from replay_lcmat.condensation.checkpoints import Checkpointing
from replay_lcmat.condensation.storage import SyntheticSet
from replay_lcmat.condensation.task import NetworkFactory, Task, check_inputs, make_task
from replay_lcmat.data.dsa import DSA
from replay_lcmat.files import exclusive_output
from replay_lcmat.models import MODEL_NAMES, ConvNet, ModelFeatures, make_model
from replay_lcmat.registry import Registry, get_params
from replay_lcmat.validation import (
    check_choice,
    check_flag,
    check_number,
    check_seed,
    option_error,
)

# images per forward/backward pass on the CPU (see Condenser.chunk_size): ConvNet-3's largest
# activation is then 8 MB instead of 134 MB at 256 images
CPU_CHUNK = 16

CONDENSERS = Registry("condenser")
"""Every condenser by name, with its paper's defaults (registered next to each class)."""


@dataclass(frozen=True)
class CondensationResult:
    """Output of :meth:`Condenser.condense`.

    Attributes:
        images: float ``[m, C, H, W]`` on the condenser's device, sorted by class:
            ``per_class`` synthetic images of each condensed class, and all real images of a
            class with fewer than ``per_class`` (taken whole; ``m = k * per_class`` when there
            is none).
        labels: int64 ``[m]`` original class labels, aligned with ``images``.
        losses: the matching loss of every outer iteration run by this call (after a resume:
            of the whole run).
        options: the options of the run (plain values, as saved; includes ``per_class``).
        synthetic: the same set as a :class:`SyntheticSet` (on the CPU, with the resume state
            and the data fingerprint): ``result.synthetic.save(path)``.
    """

    images: Tensor
    labels: Tensor
    losses: list[float]
    options: dict[str, Any]
    synthetic: SyntheticSet


class Condenser(Checkpointing, ABC):
    """Learns synthetic images per class; configure here, then call :meth:`condense`.

    Every option is checked here (type, finiteness, range), before any work; the budget is
    given to :meth:`condense`. Options are keyword arguments of ``__init__``, each stored under
    its own name (:meth:`get_params`); they are saved with the set and compared on resume.
    Subclasses are registered with ``@CONDENSERS.register(name, paper=..., defaults=...)``.

    Args:
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
        checkpoint: file to save the set (with resume state and a fingerprint of the data)
            every ``checkpoint_every`` iterations and at the end. If the file exists and holds
            another run (other method, seed, options, network or data), :meth:`condense`
            refuses to overwrite it before any work, unless ``overwrite`` or it resumes from it.
        overwrite: replace an existing ``checkpoint`` file even if it holds another run.
        callback: ``callback(iteration, loss)`` after every iteration (1-based).
        progress: show a tqdm bar with the matching loss.
    """

    def __init__(
        self,
        *,
        iterations: int = 1000,
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
        overwrite: bool = False,
        checkpoint_every: int = 10,
        callback: Callable[[int, float], None] | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(method, str) or not method:
            raise option_error("condenser", "method", "a non-empty name", method)
        owner = method
        self.iterations = check_number(owner, "iterations", iterations, integer=True, minimum=0)
        self.seed = check_seed(owner, seed)
        self.init = check_choice(owner, "init", init, ("noise", "real"))
        self.lr_img = check_number(owner, "lr_img", lr_img, exclusive_minimum=0)
        self.momentum_img = check_number(
            owner, "momentum_img", momentum_img, minimum=0, exclusive_maximum=1
        )
        self.batch_real = check_number(owner, "batch_real", batch_real, integer=True, minimum=1)
        self.checkpoint_every = check_number(
            owner, "checkpoint_every", checkpoint_every, integer=True, minimum=1
        )
        self.overwrite = check_flag(owner, "overwrite", overwrite)
        self.progress = check_flag(owner, "progress", progress)
        if callback is not None and not callable(callback):
            raise option_error(owner, "callback", "callable(iteration, loss) or None", callback)
        if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
            raise option_error(owner, "checkpoint", "a file path or None", checkpoint)
        if network_options is not None and not isinstance(network_options, dict):
            raise option_error(owner, "network_options", "a dict or None", network_options)
        if classes is not None:
            if isinstance(classes, str | Tensor) or not isinstance(classes, Sequence):
                raise option_error(owner, "classes", "a list of int labels or None", classes)
            classes = [
                check_number(owner, f"classes[{i}]", c, integer=True) for i, c in enumerate(classes)
            ]
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(
                    f"{owner} option classes must be distinct labels, at least one; got "
                    f"{classes}. Leave it out to condense every class present."
                )
        if not (isinstance(network, str) or callable(network)):
            raise option_error(
                owner,
                "network",
                "a model name for replay_lcmat.models.make_model or a factory "
                "f(in_channels=, num_classes=, image_size=)",
                network,
            )
        if isinstance(network, str) and network not in MODEL_NAMES:
            raise ValueError(
                f"unknown network {network!r}; choose one of {', '.join(MODEL_NAMES)} or pass a "
                "factory f(in_channels=, num_classes=, image_size=)."
            )
        self.method = method
        self.device = torch.device(device)
        if not (isinstance(augment, bool) or isinstance(augment, DSA)):
            raise option_error(owner, "augment", "True, False or a DSA instance", augment)
        self.augment = augment
        if network_options and not isinstance(network, str):
            raise ValueError("network_options apply to a model name; put them in your factory.")
        self.network, self.network_options = network, dict(network_options or {})
        self.classes = classes
        self.checkpoint, self.callback = checkpoint, callback

    @property
    def augmentation(self) -> DSA | None:
        """The DSA transform applied to real and synthetic batches (``None``: none)."""
        return DSA() if self.augment is True else (self.augment or None)

    # ----------------------------------------------------------------- subclass interface
    def class_batches(
        self, syn: Tensor, task: Task, classes: Container[int] | None = None
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """``(j, real, synthetic)`` for every class ``j``: a real batch of ``batch_real`` images
        and the class's ``per_class`` synthetic images, both under one shared DSA draw (if any).

        With ``classes`` (class positions ``j``, e.g. this rank's share under torch.distributed)
        only those are yielded, but the random draws of every class are made, so the generator
        ends where a pass over all classes leaves it."""
        size = (syn.shape[-2], syn.shape[-1])
        augment, m = self.augmentation, task.per_class
        for j in range(task.num_classes):
            if classes is not None and j not in classes:
                task.real_indices(j, self.batch_real)
                if augment is not None:
                    augment.sample(size, task.generator)
                continue
            real = task.real_batch(j, self.batch_real)
            fake = syn[j * m : (j + 1) * m]
            if augment is not None:
                params = augment.sample(size, task.generator)
                real, fake = augment.apply(real, params), augment.apply(fake, params)
            yield j, real, fake

    @staticmethod
    def chunk_size(net: nn.Module, device: torch.device) -> int | None:
        """Images per pass of a batch without gradient to the images (real class batches,
        network steps; ``None``: the whole batch at once).

        On the CPU, ``CPU_CHUNK`` images at a time keep the activations small (about a third
        less CPU time for a 256-image step of ConvNet-3, at 1 or 2 threads); the gradients of
        the chunks' summed losses over the batch size add up to the batch-mean gradient, the
        same function, because the library's ConvNet without batch norm treats every image on
        its own (instance norm is per image); forward-only passes (DM's real embeddings) give
        the same values. Other networks (MLPs gain nothing), batch norm and other devices take
        the batch whole. ``net``: the network or its features part
        (:class:`~replay_lcmat.models.ModelFeatures`).
        """
        if isinstance(net, ModelFeatures):  # the features part of a split model
            net = net.model
        if device.type != "cpu" or not isinstance(net, ConvNet):
            return None
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            return None
        return CPU_CHUNK

    @abstractmethod
    def _step(self, syn: Tensor, optimizer: torch.optim.Optimizer, task: Task) -> float:
        """One outer iteration: update ``syn`` (a leaf, ``ipc`` images per class in class
        order) through ``optimizer``; return the iteration's matching loss."""

    def check_budget(self, per_class: object) -> int:
        """``per_class`` as an int, after checking it (an int >= 1, plus the method's own
        limits); called by :meth:`condense`, and by the CLI before it loads any data.

        Raises:
            ValueError: a bad budget; the message names the fix.
        """
        return int(check_number(self.method, "per_class", per_class, integer=True, minimum=1))

    def get_params(self) -> dict[str, Any]:
        """The options of ``__init__`` and their values (see :func:`replay_lcmat.registry.get_params`)."""
        return get_params(self)

    # ----------------------------------------------------------------------- the verb
    def condense(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        per_class: int,
        resume: str | os.PathLike | SyntheticSet | None = None,
    ) -> CondensationResult:
        """Learn ``per_class`` synthetic images of every class.

        Args:
            images: float ``[n, C, H, W]``, already normalised (any device).
            labels: int64 ``[n]``.
            per_class: synthetic images per class (>= 1). A class with fewer real images
                is taken whole, its real images instead of synthetic ones, with a warning
                naming it (the small-class rule of every selection entry point,
                :func:`replay_lcmat.selection.engine.fit_budgets`).
            resume: a checkpoint (path or :class:`SyntheticSet`) of a run of this condenser
                with the same seed, options, budget and network, on the same data (checked
                against its fingerprint); continues from its iteration and gives the same
                result as an uninterrupted run.

        Returns:
            :class:`CondensationResult`.

        Raises:
            OutputInUseError: another run holds ``checkpoint`` (its lock, ``checkpoint.lock``,
                is held for the whole run by the process that writes it).
        """
        per_class = self.check_budget(per_class)
        check_inputs(images, labels)
        with contextlib.ExitStack() as hold:
            if self.checkpoint is not None and distributed.is_writer():
                hold.enter_context(exclusive_output(self.checkpoint, what="checkpoint"))
            return self._condense(images, labels, per_class, resume)

    def _condense(
        self,
        images: Tensor,
        labels: Tensor,
        per_class: int,
        resume: str | os.PathLike | SyntheticSet | None,
    ) -> CondensationResult:
        task = self._make_task(images, labels, per_class)
        self._check_memory(task)
        self.check_checkpoint(resume, fingerprint=task.fingerprint, per_class=per_class)
        syn = self._initialise(task).requires_grad_(True)
        optimizer = torch.optim.SGD([syn], lr=self.lr_img, momentum=self.momentum_img)
        start, losses = 0, []
        if resume is not None:
            start, losses = self._restore(resume, syn, optimizer, task)

        bar = tqdm(
            total=self.iterations, initial=start, desc=self.method, disable=not self.progress
        )
        last_saved = start if resume is not None else None
        end = self.iterations if task.num_classes else start  # every class kept whole: no work
        try:
            for it in range(start, end):
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
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                if self.callback is not None:
                    self.callback(it + 1, loss)
                done = it + 1 == self.iterations
                due = (it + 1) % self.checkpoint_every == 0 or done
                if self.checkpoint is not None and due and distributed.is_writer():
                    self._snapshot(syn, optimizer, task, it + 1, losses).save(self.checkpoint)
                    last_saved = it + 1
        finally:
            bar.close()
        synthetic = self._snapshot(syn, optimizer, task, max(start, self.iterations), losses)
        if self.checkpoint is not None and end == start and distributed.is_writer():
            synthetic.save(self.checkpoint)
        return CondensationResult(
            images=task.assemble(syn.detach().clone())[0],
            labels=synthetic.labels.to(self.device),
            losses=list(losses),
            options=synthetic.options,
            synthetic=synthetic,
        )

    # ------------------------------------------------------------------------ helpers
    def _network_factory(self) -> NetworkFactory:
        if callable(self.network):
            return self.network
        name, options = self.network, self.network_options

        def build(**shape: int) -> nn.Module:
            return make_model(name, **shape, **options)

        return build

    def _make_task(self, images: Tensor, labels: Tensor, per_class: int) -> Task:
        return make_task(
            images,
            labels,
            per_class,
            classes=self.classes,
            seed=self.seed,
            device=self.device,
            network=self._network_factory(),
        )

    def _check_memory(self, task: Task) -> None:
        """Refuse, before it is allocated, a working set that the memory budget of the device
        cannot hold: the synthetic set ``[k * per_class, C, H, W]`` three times (the images,
        their gradient, the momentum buffer) and a real class batch twice (it and its
        augmented copy)."""
        if task.num_classes == 0:
            return
        _, channels, height, width = task.images.shape
        image_bytes = channels * height * width * task.images.element_size()
        syn = task.num_classes * task.per_class
        real = min(self.batch_real, max(len(idx) for idx in task.by_class))
        resources.require_memory(
            image_bytes * (3 * syn + 2 * real),
            what=f"{self.method}: the synthetic set ({task.num_classes} classes x "
            f"{task.per_class} images of {channels}x{height}x{width}, with its gradient and "
            f"momentum) and a real batch of {real} images",
            device=self.device,
            fix="Lower per_class or batch_real, or condense fewer classes per run (classes=).",
        )

    def _initialise(self, task: Task) -> Tensor:
        _, channels, height, width = task.images.shape
        if self.init == "noise" or task.num_classes == 0:
            shape = (task.num_classes * task.per_class, channels, height, width)
            syn = torch.randn(shape, generator=task.generator, dtype=task.images.dtype)
            return syn.to(self.device)
        return torch.cat([task.real_batch(j, task.per_class) for j in range(task.num_classes)])
