"""Class subsetting, per-class subsamples and seeded class orders for class-incremental splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from replay_lcmat.data.image_data import ImageData


def class_order(num_classes: int, seed: int | None) -> list[int]:
    """A permutation of ``range(num_classes)``; ``seed=None`` keeps the natural order.

    Same order as ``np.random.seed(seed); np.random.permutation(num_classes)``, the class order
    of the continual-learning protocol of Zhao & Bilen that the LCMat paper follows.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
    if seed is None:
        return list(range(num_classes))
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def task_classes(order: Sequence[int], n_tasks: int) -> list[list[int]]:
    """Split a class order into ``n_tasks`` consecutive groups of equal size."""
    if n_tasks < 1 or len(order) % n_tasks:
        raise ValueError(
            f"cannot split {len(order)} classes into {n_tasks} equal tasks; choose a number of "
            f"tasks that divides {len(order)}."
        )
    size = len(order) // n_tasks
    return [list(order[i * size : (i + 1) * size]) for i in range(n_tasks)]


def select_classes(data: ImageData, classes: Sequence[int], *, relabel: bool = False) -> ImageData:
    """The samples of ``classes`` (original sample order kept).

    Args:
        relabel: map ``classes[i]`` to label ``i`` (and reorder class names accordingly);
            otherwise labels and class names are unchanged.
    """
    wanted = [int(c) for c in classes]
    unknown = [c for c in wanted if not 0 <= c < data.num_classes]
    if unknown:
        raise ValueError(
            f"classes {unknown} are not labels of this dataset (0..{data.num_classes - 1})."
        )
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"classes contain duplicates: {wanted}.")
    keep = torch.isin(data.labels, torch.tensor(wanted, dtype=torch.int64))
    images, labels = data.images[keep], data.labels[keep]
    names = data.classes
    if relabel:
        mapping = torch.full((data.num_classes,), -1, dtype=torch.int64)
        mapping[torch.tensor(wanted)] = torch.arange(len(wanted))
        labels = mapping[labels]
        names = tuple(data.classes[c] for c in wanted)
    return ImageData(images, labels, names, data.mean, data.std)


def per_class_indices(data: ImageData, n: int | None, seed: int) -> Tensor:
    """int64 indices of at most ``n`` random samples of every class (all when ``n`` is None),
    ascending."""
    if n is None:
        return torch.arange(len(data.labels))
    gen = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in range(data.num_classes):
        idx = data.class_indices(c)
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def per_class_subset(data: ImageData, n: int | None, seed: int) -> ImageData:
    """At most ``n`` random samples of every class (all when ``n`` is None), index order kept."""
    if n is None:
        return data
    return data.subset(per_class_indices(data, n, seed))


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(fit, held_out)`` int64 indices: ``round(fraction * n_c)`` random samples of every
    class held out (at least 1, and at least 1 left to fit), both in ascending order."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout must be in (0, 1); got {fraction}. E.g. 0.2.")
    labels = torch.as_tensor(labels).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < 2:
            raise ValueError(
                f"class {c} has {len(members)} sample(s): a held-out choice needs at least 2 "
                "per class; pass a fixed option instead of 'auto'."
            )
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return torch.nonzero(keep).flatten(), held_out
