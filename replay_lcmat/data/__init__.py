"""Data layer: every loader returns :class:`ImageData` train/test splits."""

from __future__ import annotations

from pathlib import Path

from replay_lcmat.data.augment import RandomCropFlip
from replay_lcmat.data.cifar import load_cifar
from replay_lcmat.data.classes import (
    class_order,
    holdout_split,
    per_class_indices,
    per_class_subset,
    select_classes,
    task_classes,
)
from replay_lcmat.data.digits import load_digits
from replay_lcmat.data.dsa import DSA, DSAParams
from replay_lcmat.data.folder import default_cache_dir, load_image_folder, shared_cifar10_archive
from replay_lcmat.data.image_data import ImageData, channel_stats
from replay_lcmat.files import CorruptDataError

DATASET_NAMES = ("cifar10", "cifar100", "digits")

__all__ = [
    "DATASET_NAMES",
    "CorruptDataError",
    "DSA",
    "DSAParams",
    "ImageData",
    "RandomCropFlip",
    "channel_stats",
    "class_order",
    "default_cache_dir",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "holdout_split",
    "per_class_indices",
    "per_class_subset",
    "select_classes",
    "shared_cifar10_archive",
    "task_classes",
]


def load_dataset(
    source: str | Path,
    *,
    root: str | Path | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[ImageData, ImageData]:
    """``(train, test)`` for a dataset name or an ImageFolder path.

    Args:
        source: ``"cifar10"``, ``"cifar100"``, ``"digits"``, or a path to an ImageFolder
            directory (``train/<class>/*``, ``test/<class>/*``) or a ``.tar.gz`` of one.
        root: torchvision root for CIFAR (default: ``<cache_dir>/torchvision``).
        download: let torchvision download CIFAR when missing.
        cache_dir: cache for decoded ImageFolder arrays (default :func:`default_cache_dir`).
        progress: progress bar while decoding.
        seed: train/test split seed of ``digits``.
    """
    text = str(source)
    if text in ("cifar10", "cifar100"):
        if root is None:
            root = Path(cache_dir or default_cache_dir()) / "torchvision"
        return load_cifar(text, root, download=download)
    if text == "digits":
        return load_digits(seed=seed)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"unknown dataset {text!r}: not one of {', '.join(DATASET_NAMES)} and no such file or "
            "folder. Pass a dataset name, or the path of an ImageFolder directory / .tar.gz."
        )
    return load_image_folder(path, cache_dir=cache_dir, progress=progress)
