"""ImageFolder-style datasets (``train/<class>/*``, ``test/<class>/*``), as a folder or a .tar.gz.

Decoded pixels are cached as one ``.npz`` per source so that the second load skips decoding
(the shared 60,000-image CIFAR-10 archive: about 15 s to decode, well under a second from cache).

Layout rules (checked from file names and sizes before any image is read):

- images are files with one of :data:`IMAGE_SUFFIXES` (any case) at ``train/<class>/<image>``
  and ``test/<class>/<image>``, optionally inside one top folder (``ds/train/...``);
- hidden files and folders (names starting with ``.``) are ignored;
- errors: two or more top folders with their own ``train/``/``test/`` (``v1/train``,
  ``v2/train``), an image in a subfolder of a class folder (``train/a/sub/x.png``) or directly in
  a split folder (``train/x.png``), a class folder without images, an image file larger than
  :data:`replay_lcmat.data.archive.MAX_IMAGE_BYTES`, a corrupt image or archive
  (:class:`~replay_lcmat.files.CorruptDataError`);
- warnings: images outside ``train/`` and ``test/`` (e.g. a ``val/`` split), files in class
  folders whose suffix is not an image suffix; both are skipped;
- 16-bit grey images are scaled to 8 bits (``round(v / 257)``; Pillow already reduces 16-bit
  colour PNGs to 8 bits); palette, alpha, CMYK and other colour modes become RGB (alpha
  dropped), bilevel and grey+alpha become grey; 32-bit integer or float images are refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from replay_lcmat.data.archive import (
    IMAGE_SUFFIXES,
    Entry,
    check_image_size,
    is_hidden,
    is_image_name,
    list_folder,
    name_parts,
    open_tar,
    read_tar,
)
from replay_lcmat.data.cache import cache_file, default_cache_dir, read_cache, write_cache
from replay_lcmat.data.decoding import decode_plan
from replay_lcmat.data.image_data import ImageData

SPLITS = ("train", "test")
_CACHE_KEYS = {
    "classes",
    "mean",
    "std",
    *(f"{s}_{k}" for s in SPLITS for k in ("images", "labels", "files")),
}
_EXAMPLES = 3  # paths named in a message about many files


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")


def _suffixes() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


CIFAR10_ARCHIVE_VARIABLE = "REPLAY_LCMAT_CIFAR10_ARCHIVE"


def shared_cifar10_archive() -> Path | None:
    """The local CIFAR-10 JPEG archive named by ``$REPLAY_LCMAT_CIFAR10_ARCHIVE``, if set.

    This variable is the one setting through which the demo (``--data auto``), the benchmarks'
    CIFAR-10 presets and the tests find the archive (an ImageFolder ``.tar.gz``, see
    :func:`load_image_folder`); nothing else is searched (the tests' ``conftest.py`` sets it to
    the project's build-machine copy when unset; README, "Data").

    Returns:
        The path, or None when the variable is unset or empty.

    Raises:
        FileNotFoundError: the variable is set but names no file (the message says which
            variable to fix).
    """
    value = os.environ.get(CIFAR10_ARCHIVE_VARIABLE, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"${CIFAR10_ARCHIVE_VARIABLE} is {value!r}, which is not a file. Set it to the path "
            "of the CIFAR-10 ImageFolder archive (e.g. cifar10-jpeg.tar.gz), or unset it."
        )
    return path


# ---------------------------------------------------------------------------------------------
# The layout: which entries are which class's images


def _split_index(parts: list[str]) -> int | None:
    """Position of the split folder: one followed by exactly ``class/file`` if any, else the first."""
    splits = [i for i, p in enumerate(parts[:-1]) if p in SPLITS]
    flat = [i for i in splits if len(parts) - i == 3]
    return flat[0] if flat else (splits[0] if splits else None)


def _show(prefix: str, source: Path) -> str:
    return f"{prefix}/" if prefix else f"the top level of {source.name}"


def _plan(source: Path, entries: Iterable[Entry]) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [entry names in file-name order]}}``, after checking the layout rules.

    Raises ValueError naming the offending paths for: several top folders with their own splits,
    images nested below a class folder or loose in a split folder, class folders without images,
    unreadable or oversized image files, a missing split, test classes absent from train.
    Warns about skipped images outside the splits and non-image files in class folders.
    """
    images: dict[tuple[str, str, str], list[str]] = {}  # (top folder, split, class) -> names
    class_dirs: set[tuple[str, str, str]] = set()
    nested, loose, outside, not_images, escaping = [], [], [], [], []
    for entry in entries:
        parts = name_parts(entry.name)
        if ".." in parts or entry.name.startswith("/"):  # never read: it points outside
            if parts and os.path.splitext(parts[-1])[1].lower() in IMAGE_SUFFIXES:
                escaping.append(entry.name)
            continue
        if not parts or is_hidden(parts):
            continue
        if entry.is_dir:
            ends = [i for i, p in enumerate(parts[:-1]) if p in SPLITS and len(parts) - i == 2]
            if ends:
                i = ends[0]
                class_dirs.add(("/".join(parts[:i]), parts[i], parts[i + 1]))
            continue
        i = _split_index(parts)
        if not is_image_name(parts):
            if i is not None and len(parts) - i >= 3:
                not_images.append(entry.name)
            continue
        check_image_size(source, entry)
        if i is None:
            outside.append(entry.name)
        elif len(parts) - i == 3:
            images.setdefault(("/".join(parts[:i]), parts[i], parts[i + 1]), []).append(entry.name)
        elif len(parts) - i == 2:
            loose.append(entry.name)
        else:
            nested.append(entry.name)

    tops = sorted({top for top, _, _ in images})
    if len(tops) > 1:
        raise ValueError(
            f"{source} holds {len(tops)} datasets, each with its own train/ or test/ folder: "
            f"{', '.join(_show(t, source) for t in tops)}. Loading them together would merge them "
            "into one dataset. Load one of them: pass its folder, or re-create the archive with "
            "only one."
        )
    if nested:
        raise ValueError(
            f"{source}: {len(nested)} image(s) are in a subfolder of a class folder: "
            f"{_examples(nested)}. The layout is one folder per class, train/<class>/<image> "
            "and test/<class>/<image>, with no deeper folders: move them up into their class "
            "folder, make each subfolder a class folder of its own, or remove them."
        )
    if loose:
        raise ValueError(
            f"{source}: {len(loose)} image(s) lie directly in a split folder, not in a class "
            f"folder: {_examples(loose)}. Move each into train/<class>/ or test/<class>/ for "
            "its class, or remove it."
        )
    top = tops[0] if tops else None
    empty = sorted("/".join(filter(None, d)) for d in class_dirs if d[0] == top and d not in images)
    if empty:
        raise ValueError(
            f"{source}: class folder(s) without images: {_examples(empty)}. Every class folder "
            f"needs at least one image (suffixes: {_suffixes()}); add images or remove the "
            "empty folder(s)."
        )
    found: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for (_, split, cls), names in images.items():
        found[split][cls] = sorted(names, key=lambda name: name_parts(name)[-1])
    skipped = (
        f"{len(escaping)} image member(s) whose path is absolute or goes up with '..' were "
        f"skipped: {_examples(escaping)}. Re-create the archive with paths relative to the "
        "dataset folder (tar -C <dataset folder> -czf <archive> train test)"
        if escaping
        else ""
    )
    for split in SPLITS:
        if not found[split]:
            raise ValueError(
                f"{source} has no images under {split}/<class>/. Expected an ImageFolder layout "
                "train/<class>/<image> and test/<class>/<image> (optionally inside one top "
                f"folder), images with one of the suffixes {_suffixes()}."
                + (f" {skipped}." if skipped else "")
            )
    if skipped:
        warnings.warn(f"{source}: {skipped}.", stacklevel=3)
    extra = sorted(set(found["test"]) - set(found["train"]))
    if extra:
        raise ValueError(
            f"{source}: test/ has classes missing from train/: {extra}. Both splits must use the "
            "same class folders."
        )
    if outside:
        warnings.warn(
            f"{source}: skipped {len(outside)} image(s) outside train/ and test/: "
            f"{_examples(outside)}. Only train/<class>/ and test/<class>/ are loaded.",
            stacklevel=4,
        )
    if not_images:
        warnings.warn(
            f"{source}: skipped {len(not_images)} file(s) in class folders whose suffix is not an "
            f"image suffix ({_suffixes()}): {_examples(not_images)}. Rename them if they are "
            "images, or remove them.",
            stacklevel=4,
        )
    return found


# ---------------------------------------------------------------------------------------------
# Decoding (the pixels: replay_lcmat.data.decoding)


def _decode_source(
    source: Path, progress: bool, folder: _Folder | None = None
) -> dict[str, np.ndarray]:
    """Decode the images of ``source`` (only called on a cache miss).

    ``folder`` is the listing and plan of a folder source, made before the cache lookup. An
    archive is read here in one pass (only image members, after checking their headers), and
    its layout is checked before any image is decoded.
    """
    if source.is_dir():
        folder = folder if folder is not None else _scan_folder(source)
        order = sorted(e.name for e in folder.entries if not e.is_dir)
        arrays = decode_plan(
            source, folder.plan, order, lambda name: (source / name).read_bytes(), progress, SPLITS
        )
        return _with_files(arrays, folder.plan)
    with open_tar(source) as tar:
        entries, payloads = read_tar(tar, source)
    plan = _plan(source, entries)
    return _with_files(
        decode_plan(source, plan, list(payloads), payloads.pop, progress, SPLITS), plan
    )


def _with_files(
    arrays: dict[str, np.ndarray], plan: dict[str, dict[str, list[str]]]
) -> dict[str, np.ndarray]:
    """Add ``<split>_files``: ``<class>/<file name>`` of every image, in the arrays' order
    (classes sorted, files sorted by name: the order of :func:`decode_plan`)."""
    classes = [str(c) for c in arrays["classes"]]
    for split in SPLITS:
        arrays[f"{split}_files"] = np.array(
            [f"{c}/{name_parts(n)[-1]}" for c in classes for n in plan[split].get(c, [])]
        )
    return arrays


# ---------------------------------------------------------------------------------------------
# The cache key of a folder (the cache itself: replay_lcmat.data.cache)


class _Folder(NamedTuple):
    entries: list[Entry]
    plan: dict[str, dict[str, list[str]]]


def _scan_folder(root: Path) -> _Folder:
    entries = list_folder(root)
    return _Folder(entries, _plan(root, entries))


def _load_arrays(
    path: str | Path, cache_dir: str | Path | None, progress: bool
) -> dict[str, np.ndarray]:
    """The cached arrays of a source (decoded on a cache miss)."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"data path {str(source)!r} does not exist. Pass an ImageFolder directory with "
            "train/ and test/ inside, a .tar.gz of one, or a dataset name (cifar10, cifar100, "
            "digits)."
        )
    folder = _scan_folder(source) if source.is_dir() else None  # layout checked on every load
    cache = cache_file(source, Path(cache_dir) if cache_dir else default_cache_dir(), folder)
    arrays = read_cache(cache, _CACHE_KEYS)
    if arrays is None:
        arrays = _decode_source(source, progress, folder)
        write_cache(cache, arrays)
    return arrays


def image_folder_files(
    path: str | Path,
    split: str = "train",
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[str, ...]:
    """``<class>/<file name>`` of every image of ``split``, in the order of the
    :class:`ImageData` that :func:`load_image_folder` returns (index ``i`` is image ``i``).

    That order is torchvision ``ImageFolder``'s over the same ``<split>/`` folder: class folders
    sorted by name, files sorted by name inside each (both Python string order), provided the
    folder holds no file that only one of them reads (torchvision also reads hidden files and
    ``.pgm``/``.tif``/``.tiff`` and skips ``.gif``).

    Read from the decode cache (written by the first load; a miss decodes the source).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
    return tuple(str(n) for n in _load_arrays(path, cache_dir, progress)[f"{split}_files"])


def load_image_folder(
    path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True
) -> tuple[ImageData, ImageData]:
    """Load ``train/`` and ``test/`` splits of an ImageFolder directory or ``.tar.gz`` of one.

    Labels follow the sorted class-folder names of ``train/``; within a class, files are in
    name order: torchvision ``ImageFolder``'s order (:func:`image_folder_files` gives the file
    of every index). Normalisation statistics are computed on the train split. The layout rules (what
    is an error, a warning, or accepted) are in this module's docstring.

    Args:
        path: the folder, or an archive of it (``.tar``, ``.tar.gz``, ``.tgz``).
        cache_dir: where decoded arrays are cached (default :func:`default_cache_dir`). The
            cache key is the path plus, for a folder, the name, size and modification times of
            every image file, for an archive its size and modification time.
        progress: show a progress bar while decoding.

    Returns:
        ``(train, test)`` with uint8 images ``[N, C, H, W]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptDataError: (a ValueError) a corrupt, truncated or empty archive or image.
        ValueError: the layout breaks a rule; the message names the paths and the fix.
    """
    arrays = _load_arrays(path, cache_dir, progress)
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
