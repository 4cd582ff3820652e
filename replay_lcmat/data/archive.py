"""Listing the files of an image folder or a tar archive (nothing decoded), with the checks
that make an archive safe to read: a size limit per image file taken from the file's size or
the tar header before reading it, links followed once, damaged, truncated or empty archives
reported as :class:`replay_lcmat.files.CorruptDataError` with the command that re-creates them.
"""

from __future__ import annotations

import lzma
import os
import stat
import tarfile
import zlib
from pathlib import Path
from typing import NamedTuple

from replay_lcmat.files import CorruptDataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp"}
# Largest image file read: checked from the file's size (or the tar header) before reading it.
MAX_IMAGE_BYTES = 64 * 2**20


class Entry(NamedTuple):
    """One file or folder of a source, as listed (nothing read yet)."""

    name: str  # posix path relative to the folder, or the archive member name
    size: int  # bytes; -1 when it cannot be read (a broken link, a hard link without target)
    is_dir: bool
    stamp: tuple[int, ...] = ()  # (mtime_ns, ctime_ns) of a folder's file, for the cache key


def name_parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def is_hidden(parts: list[str]) -> bool:
    return any(p.startswith(".") for p in parts)


def is_image_name(parts: list[str]) -> bool:
    """Not hidden, and the file name has an image suffix."""
    return (
        bool(parts)
        and not is_hidden(parts)
        and os.path.splitext(parts[-1])[1].lower() in IMAGE_SUFFIXES
    )


def check_image_size(source: Path, entry: Entry) -> None:
    """Refuse an image file that cannot be read or is too large, before reading it."""
    if entry.size < 0:
        raise ValueError(
            f"{source}: cannot read the image {entry.name} (a broken link, or a hard link to a "
            "missing member). Fix or remove it."
        )
    if entry.size > MAX_IMAGE_BYTES:
        raise ValueError(
            f"{source}: {entry.name} is {_size(entry.size)}, more than the "
            f"{_size(MAX_IMAGE_BYTES)} allowed for one image file, so it was not read. "
            "Remove it or shrink it (all images are held in memory together); if it really is "
            "one image, raise replay_lcmat.data.archive.MAX_IMAGE_BYTES."
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def list_folder(root: Path) -> list[Entry]:
    """Every non-hidden file and folder under ``root``; links to folders are followed once."""
    entries: list[Entry] = []

    def visit(folder: Path, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith("."):
                continue
            name = prefix + child.name
            try:
                st = child.stat()
            except OSError:  # a broken link: reported by _plan if its name is an image's
                entries.append(Entry(name, -1, False))
                continue
            if stat.S_ISDIR(st.st_mode):
                entries.append(Entry(name, 0, True))
                ident = (st.st_dev, st.st_ino)
                if ident not in ancestors:  # a link back to an enclosing folder is not entered
                    visit(child, name + "/", ancestors | {ident})
            else:
                entries.append(Entry(name, st.st_size, False, (st.st_mtime_ns, st.st_ctime_ns)))

    top = root.stat()
    visit(root, "", frozenset({(top.st_dev, top.st_ino)}))
    return entries


# What tarfile and the decompressors raise on damaged input (bz2 raises a plain OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _fix(archive: Path) -> str:
    """How to replace a bad archive, with the tar flags its name implies."""
    name = archive.name.lower()
    flags = "-cf"
    for ends, compressed in ((("gz", "tgz"), "-czf"), (("bz2", "tbz2"), "-cjf"), (("xz",), "-cJf")):
        if name.endswith(ends):
            flags = compressed
    return f"Re-download it, or re-create it from the folder (tar {flags} {archive.name} <folder>)."


def _archive_error(archive: Path, err: BaseException) -> Exception:
    if isinstance(err, (PermissionError, FileNotFoundError, IsADirectoryError)):
        return err  # a problem with the path, not with the archive's content
    if isinstance(err, tarfile.ReadError) and "could not be opened" in str(err):
        detail = "no gzip, bzip2, xz or plain tar data"  # tarfile lists each method it tried
    else:
        detail = " ".join(f"{type(err).__name__}: {err}".split())
    return CorruptDataError(
        f"cannot read the archive {archive}: it is corrupt, truncated or not a tar archive "
        f"({detail}). {_fix(archive)}"
    )


def open_tar(archive: Path) -> tarfile.TarFile:
    if archive.stat().st_size == 0:
        raise CorruptDataError(
            f"the archive {archive} is empty (0 bytes), e.g. an interrupted download or copy. "
            f"{_fix(archive)}"
        )
    try:
        return tarfile.open(archive, "r:*")
    except _ARCHIVE_ERRORS as err:
        raise _archive_error(archive, err) from err


def read_tar(tar: tarfile.TarFile, archive: Path) -> tuple[list[Entry], dict[str, bytes]]:
    """All entries, from the tar headers, and the bytes of the members that may be images.

    One pass in archive order (an archive is read once). A member is read only when its name
    has an image suffix and its header size passes :func:`check_image_size`; other members are
    skipped without reading them. Also checks that the archive ends with tar's end-of-archive
    block: ``tarfile`` stops quietly at a truncated or garbled header after the first one.
    """
    entries: dict[str, Entry] = {}  # a name stored twice: the last copy counts, as in tar
    payloads: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    try:
        for member in tar:
            name = member.name
            payloads.pop(name, None)
            if member.isdir():
                entries[name] = Entry(name, 0, True)
                continue
            if not (member.isfile() or member.islnk()):
                entries.pop(name, None)
                continue
            size = member.size if member.isfile() else sizes.get(member.linkname, -1)
            sizes[name] = size
            entry = entries[name] = Entry(name, size, False)
            if not is_image_name(name_parts(name)):
                continue
            check_image_size(archive, entry)
            if member.islnk() and member.linkname in payloads:
                payloads[name] = payloads[member.linkname]
            elif size >= 0:
                handle = tar.extractfile(member)
                if handle is not None:
                    payloads[name] = handle.read()
        count = len(tar.members)
        tar.fileobj.seek(tar.offset)  # where tarfile stopped reading headers
        end = tar.fileobj.read(tarfile.BLOCKSIZE)
    except _ARCHIVE_ERRORS as err:
        raise _archive_error(archive, err) from err
    if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
        raise CorruptDataError(
            f"the archive {archive} is truncated or corrupt: it stops after {count} members "
            f"without tar's end-of-archive block. {_fix(archive)}"
        )
    return list(entries.values()), payloads
