"""What a memory grid shows: a named set of images with labels and the statistics to undo their
normalisation, loaded from a ``select`` JSON, a ``condense`` file, a :class:`ClassMemory` or
plain tensors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from replay_lcmat.condensation.storage import load_synthetic
from replay_lcmat.data import load_dataset
from replay_lcmat.memory import ClassMemory
from replay_lcmat.selection.record import check_labels, load_selection


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixels in [0, 1] from stored images, float32 ``[m, C, H, W]``.

    uint8 images are raw pixels: ``x / 255``. Float images are normalised:
    ``x * std + mean`` per channel, clamped to [0, 1] (synthetic images may leave the range).

    Args:
        images: ``[m, C, H, W]`` uint8 or float.
        mean, std: one value per channel, in [0, 1] pixel units.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [m, C, H, W]; got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(
            f"images have {images.shape[1]} channel(s) but mean/std have {len(mean)}/{len(std)} "
            "values; pass the dataset's statistics."
        )
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().cpu().float() * s + m).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class MemorySet:
    """Images of one method, ready to be shown.

    Attributes:
        name: the method (the column title of a grid).
        images: ``[m, C, H, W]``: uint8 raw pixels (0..255) or float normalised pixels
            ``(x / 255 - mean) / std`` (what :meth:`ImageData.normalized`, :class:`ClassMemory`
            and condensers hold).
        labels: int64 ``[m]``; inside a class, images keep their order (rank order for
            selections and memories).
        mean, std: per-channel statistics in [0, 1] pixel units (the dataset's).
        classes: class names indexed by label, or ``None`` (labels are shown as numbers).
    """

    name: str
    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            shape = (
                tuple(self.images.shape)
                if isinstance(self.images, Tensor)
                else type(self.images).__name__
            )
            raise ValueError(
                f"{self.name}: images must be a tensor [m, C, H, W]; got {shape}. Add a channel "
                "axis for grey images (x.unsqueeze(1))."
            )
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but labels of shape "
                f"{tuple(self.labels.shape)}; pass one int64 label per image."
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.name}: images have {channels} channel(s) but mean/std have "
                f"{len(self.mean)}/{len(self.std)} values; pass the statistics of the dataset "
                "the images come from (ImageData.mean / .std)."
            )

    def pixels(self) -> Tensor:
        """float32 ``[m, C, H, W]`` in [0, 1] (see :func:`replay_lcmat.diagnostics.denormalize`)."""
        return denormalize(self.images, self.mean, self.std)

    @classmethod
    def from_image_data(cls, data, indices: Tensor | Sequence[int], *, name: str) -> MemorySet:
        """The samples ``indices`` of an :class:`replay_lcmat.data.ImageData` (raw pixels, so the
        grid shows them exactly)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(data)):
            raise ValueError(
                f"{name}: indices range from {int(idx.min())} to {int(idx.max())} but the data "
                f"has {len(data)} samples; the indices refer to another dataset or split."
            )
        return cls(name, data.images[idx], data.labels[idx], data.mean, data.std, data.classes)

    @classmethod
    def from_class_memory(
        cls,
        memory,
        *,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
    ) -> MemorySet:
        """The exemplars of a :class:`replay_lcmat.memory.ClassMemory` (normalised with the
        dataset's ``mean``/``std``), classes ascending, each in rank order."""
        images, labels = memory.tensors()
        return cls(name, images, labels, tuple(mean), tuple(std), _names(classes))


def _names(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if classes is None else tuple(str(c) for c in classes)


def _require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {fix}")
    return path


def selection_images(
    path: str | os.PathLike,
    train_data=None,
    *,
    name: str | None = None,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> MemorySet:
    """The images a selection file (``replay-lcmat select``, read by
    :func:`replay_lcmat.selection.record.load_selection`) picked, as raw pixels of the
    training split.

    Args:
        path: the selection file.
        train_data: the training :class:`ImageData` the indices refer to; default: loaded with
            :func:`replay_lcmat.data.load_dataset` from the file's ``data`` (``root``,
            ``cache_dir``, ``download`` as there).
        name: column title (default: the file's ``method``).
    """
    selection = load_selection(path)
    if train_data is None:
        if selection.data is None:
            raise ValueError(f"{path} does not say which data it indexes; pass train_data=....")
        train_data, _ = load_dataset(
            selection.data, root=root, cache_dir=cache_dir, download=download, progress=False
        )
    check_labels(selection, train_data.labels, f"the training split of {selection.data!r}")
    return MemorySet.from_image_data(train_data, selection.indices, name=name or selection.method)


def load_condensed(
    path: str | os.PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> MemorySet:
    """A synthetic set written by ``replay-lcmat condense`` (or a condenser checkpoint).

    The file holds normalised images without statistics: pass the ``mean``/``std`` (and class
    names) of the dataset it was condensed from. ``name`` defaults to the file's method.
    """
    _require_file(path, "synthetic set", "write one with `replay-lcmat condense --out`.")
    syn = load_synthetic(path)
    return MemorySet(
        name or syn.method,
        syn.images.float(),
        syn.labels.long(),
        tuple(mean),
        tuple(std),
        _names(classes),
    )


def load_class_memory(
    path: str | os.PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> MemorySet:
    """A memory saved with :meth:`replay_lcmat.memory.ClassMemory.save` (e.g. by an Avalanche
    plugin); ``mean``/``std``/``classes`` of its dataset; ``name`` defaults to the file stem."""
    memory = ClassMemory.load(path)
    return MemorySet.from_class_memory(
        memory, name=name or Path(path).stem, mean=mean, std=std, classes=classes
    )
