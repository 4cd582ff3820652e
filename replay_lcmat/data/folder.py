"""ImageFolder-style datasets (``train/<class>/*``, ``test/<class>/*``), as a folder or a .tar.gz.

Decoded pixels are cached as one ``.npz`` per source so that the second load skips decoding
(the shared 60,000-image CIFAR-10 archive: about 15 s to decode, well under a second from cache).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from replay_lcmat.data.image_data import ImageData, channel_stats

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp"}
SPLITS = ("train", "test")
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """``$REPLAY_LCMAT_CACHE`` if set, else ``~/.cache/replay-lcmat``."""
    env = os.environ.get("REPLAY_LCMAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "replay-lcmat"


def shared_cifar10_archive() -> Path | None:
    """The CIFAR-10 JPEG archive of this project's build machines, if present.

    ``$REPLAY_LCMAT_CIFAR10_ARCHIVE`` when set, else ``../shared/data/cifar10-jpeg.tar.gz``
    relative to a source checkout's root (where the demo, benchmarks and tests look for it).
    """
    env = os.environ.get("REPLAY_LCMAT_CIFAR10_ARCHIVE")
    checkout = Path(__file__).resolve().parents[2]
    path = Path(env) if env else checkout.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return path if path.is_file() else None


def _iter_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix(), path.read_bytes()


def _iter_tar(archive: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()


def _split_key(name: str) -> tuple[str, str, str] | None:
    """``(split, class, file)`` for ``[prefix/]split/class/file``, or None for other entries."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for i in range(len(parts) - 2):
        if parts[i] in SPLITS and i + 3 == len(parts):
            return parts[i], parts[i + 1], parts[i + 2]
    return None


def _decode(name: str, payload: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(payload)) as img:
        arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_source(source: Path, progress: bool) -> dict[str, np.ndarray]:
    entries = _iter_tar(source) if source.is_file() else _iter_folder(source)
    found: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {s: {} for s in SPLITS}
    shape = None
    first_name = ""
    for name, payload in tqdm(entries, desc=f"decoding {source.name}", disable=not progress):
        key = _split_key(name)
        if key is None or Path(key[2]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        split, cls, fname = key
        arr = _decode(name, payload)
        if shape is None:
            shape, first_name = arr.shape, name
        elif arr.shape != shape:
            raise ValueError(
                f"images of mixed sizes in {source}: {name} is {arr.shape[1]}x{arr.shape[0]}x"
                f"{arr.shape[2]} but {first_name} is {shape[1]}x{shape[0]}x{shape[2]} (WxHxC). "
                "Resize all images to one size (and one colour mode) before loading."
            )
        found[split].setdefault(cls, []).append((fname, arr))
    for split in SPLITS:
        if not found[split]:
            raise ValueError(
                f"{source} has no images under {split}/<class>/. Expected an ImageFolder layout "
                "train/<class>/<image> and test/<class>/<image> (optionally inside one top folder)."
            )
    classes = sorted(found["train"])
    extra = sorted(set(found["test"]) - set(classes))
    if extra:
        raise ValueError(
            f"{source}: test/ has classes missing from train/: {extra}. Both splits must use the "
            "same class folders."
        )
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in SPLITS:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for _, arr in sorted(found[split].get(cls, []), key=lambda item: item[0]):
                images.append(arr)
                labels.append(label)
        out[f"{split}_images"] = np.stack(images).transpose(0, 3, 1, 2).copy()
        out[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    mean, std = channel_stats(torch.from_numpy(out["train_images"]))
    out["mean"], out["std"] = np.asarray(mean), np.asarray(std)
    return out


def _cache_file(source: Path, cache_dir: Path) -> Path:
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{source.name.split('.')[0]}-{digest}.npz"


def load_image_folder(
    path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True
) -> tuple[ImageData, ImageData]:
    """Load ``train/`` and ``test/`` splits of an ImageFolder directory or ``.tar.gz`` of one.

    Labels follow the sorted class-folder names of ``train/``; within a class, files are in
    name order. Normalisation statistics are computed on the train split.

    Args:
        path: the folder, or an archive of it (``.tar``, ``.tar.gz``, ``.tgz``).
        cache_dir: where decoded arrays are cached (default :func:`default_cache_dir`);
            the cache key includes the source's path, size and modification time.
        progress: show a progress bar while decoding.

    Returns:
        ``(train, test)`` with uint8 images ``[N, C, H, W]``.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"data path {str(source)!r} does not exist. Pass an ImageFolder directory with "
            "train/ and test/ inside, a .tar.gz of one, or a dataset name (cifar10, cifar100, "
            "digits)."
        )
    cache = _cache_file(source, Path(cache_dir) if cache_dir else default_cache_dir())
    if cache.exists():
        with np.load(cache) as stored:
            arrays = {k: stored[k] for k in stored.files}
    else:
        arrays = _decode_source(source, progress)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    classes = tuple(str(c) for c in arrays["classes"])
    mean, std = tuple(arrays["mean"].tolist()), tuple(arrays["std"].tolist())
    return tuple(  # type: ignore[return-value]
        ImageData(
            torch.from_numpy(arrays[f"{split}_images"]),
            torch.from_numpy(arrays[f"{split}_labels"]),
            classes,
            mean,
            std,
        )
        for split in SPLITS
    )
