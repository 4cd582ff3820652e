"""The data one condensation run works on (:class:`Task`): input checks, the classes to
condense with the indices of their real images, the small-class rule, and random real batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from replay_lcmat.condensation.storage import data_fingerprint
from replay_lcmat.models import split_head
from replay_lcmat.seeding import seeded
from replay_lcmat.selection.engine import fit_budgets
from replay_lcmat.validation import check_channels_first

NetworkFactory = Callable[..., nn.Module]
"""Called as ``factory(in_channels=C, num_classes=k, image_size=H)``; returns a model whose last
module is an ``nn.Linear`` head (see :func:`replay_lcmat.models.split_head`)."""


@dataclass
class Task:
    """The data one :meth:`Condenser.condense` call works on.

    Class ``j`` of the synthetic set is original label ``classes[j]`` and holds ``per_class``
    images (rows ``j * per_class`` to ``(j + 1) * per_class``); the matching networks see labels
    ``0..k-1``. ``by_class[j]`` indexes ``images`` (which may stay on the CPU).
    ``fingerprint`` is :func:`data_fingerprint` of the images and labels (saved, checked on
    resume). ``kept_images`` / ``kept_labels``: the real images of the classes with fewer than
    ``per_class`` of them, taken whole instead of condensed (:func:`make_task`).
    """

    images: Tensor
    by_class: list[Tensor]
    classes: Tensor
    per_class: int
    generator: torch.Generator
    device: torch.device
    network: NetworkFactory
    fingerprint: dict[str, Any] = field(default_factory=dict)
    kept_images: Tensor | None = None
    kept_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return len(self.by_class)

    def real_indices(self, j: int, size: int) -> Tensor:
        """Indices into ``images`` of up to ``size`` distinct random real images of class ``j``
        (one draw from the generator, whether or not the images are then used)."""
        idx = self.by_class[j]
        return idx[torch.randperm(len(idx), generator=self.generator)[:size]]

    def real_batch(self, j: int, size: int) -> Tensor:
        """Up to ``size`` distinct random real images of class ``j``, on the device."""
        return self.images[self.real_indices(j, size)].to(self.device)

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

    def assemble(self, syn: Tensor) -> tuple[Tensor, Tensor]:
        """The whole set: ``syn`` (``per_class`` images of every condensed class) and the kept
        real images, sorted by label (stable); ``(images [m, C, H, W] on syn's device, labels
        int64 [m] on the CPU)``."""
        labels = self.classes.repeat_interleave(self.per_class)
        if self.kept_images is None or len(self.kept_labels) == 0:
            return syn, labels
        images = torch.cat([syn, self.kept_images.to(syn.device, syn.dtype)])
        labels = torch.cat([labels, self.kept_labels])
        order = torch.sort(labels, stable=True).indices
        return images[order.to(images.device)], labels[order]


def make_task(
    images: Tensor,
    labels: Tensor,
    per_class: int,
    *,
    classes: Sequence[int] | None,
    seed: int,
    device: torch.device,
    network: NetworkFactory,
) -> Task:
    """The :class:`Task` of a run on ``images`` / ``labels`` (checked by :func:`check_inputs`).

    ``classes``: the labels to condense (default: those present). The small-class rule of every
    entry point (:func:`replay_lcmat.selection.engine.fit_budgets`): a class with fewer real
    images than ``per_class`` is taken whole, with one warning naming it and its numbers.

    Raises:
        ValueError: a class of ``classes`` has no samples.
    """
    labels_cpu = labels.cpu()
    present = torch.unique(labels_cpu).tolist()
    wanted = present if classes is None else list(classes)
    by_class = {}
    for c in wanted:
        idx = (labels_cpu == c).nonzero().squeeze(1)
        if len(idx) == 0:
            raise ValueError(
                f"class {c} has no samples (present: {present}); pass images of every class "
                "to condense or leave it out of classes=."
            )
        by_class[c] = idx
    fitted = fit_budgets(
        {c: len(i) for c, i in by_class.items()}, dict.fromkeys(by_class, per_class)
    )
    condensed = [c for c in by_class if fitted[c] == per_class]
    kept = [c for c in by_class if fitted[c] < per_class]
    kept_rows = torch.cat([by_class[c] for c in kept]) if kept else torch.zeros(0, dtype=torch.long)
    return Task(
        images=images,
        by_class=[by_class[c] for c in condensed],
        classes=torch.tensor(condensed, dtype=torch.long),
        per_class=per_class,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        network=network,
        fingerprint=data_fingerprint(images, labels),
        kept_images=images[kept_rows.to(images.device)].detach().cpu(),
        kept_labels=labels_cpu[kept_rows],
    )


def check_inputs(images: Tensor, labels: Tensor) -> None:
    """Raise, naming the fix, unless ``images`` is a finite float ``[n, C, H, W]`` (channels
    first, n >= 1) and ``labels`` an integer ``[n]``."""
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
    check_channels_first(images, "images")
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
