"""Decoding image files into uint8 pixel arrays (Pillow), with the conversions of the layout
rules in :mod:`replay_lcmat.data.folder`: 16-bit grey scaled to 8 bits, other colour modes to RGB
or grey, 32-bit integer and float images refused."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from replay_lcmat.data.image_data import channel_stats
from replay_lcmat.files import CorruptDataError
from replay_lcmat.resources import NotEnoughMemoryError


class UnsupportedPixels(ValueError):
    """A readable image whose pixel type has no fixed range to map to 0..255."""


def image_pixels(img: Image.Image) -> np.ndarray:
    """uint8 ``[H, W, C]`` with C = 1 (grey) or 3 (colour)."""
    if img.mode.startswith("I;16"):  # 16-bit grey: 0..65535 -> 0..255
        arr = np.rint(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8)
    elif img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise UnsupportedPixels(f"{kind} pixels (mode {img.mode})")
    elif img.mode in ("1", "L", "LA", "La"):
        arr = np.asarray(img.convert("L"))
    else:
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _pixel_size(payload: bytes) -> str:
    """``", W x H pixels"`` from the image header when it can be read, else ``""``."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            return f", {img.width} x {img.height} pixels"
    except Exception:  # the header itself is unreadable: say nothing about the size
        return ""


def decode_image(source: Path, name: str, payload: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(payload)) as img:
            return image_pixels(img)
    except MemoryError as err:  # a huge image, not a corrupt one
        raise NotEnoughMemoryError(
            f"{source}: not enough memory to decode the image {name} ({len(payload)} bytes "
            f"compressed{_pixel_size(payload)}). Free memory, or shrink or remove that image; "
            "the file itself may be fine."
        ) from err
    except UnsupportedPixels as err:
        raise ValueError(
            f"{source}: the image {name} has {err}, which have no fixed range to scale to 0..255. "
            "Save it as an 8-bit image (or a 16-bit grey PNG)."
        ) from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        detail = (
            "not a recognised image format"
            if isinstance(err, UnidentifiedImageError)
            else f"{type(err).__name__}: {err}"
        )
        raise CorruptDataError(
            f"{source}: cannot decode the image {name} ({detail}). The file is corrupt or not "
            "an image: replace it with a good copy or remove it."
        ) from err


def decode_plan(
    source: Path,
    plan: dict[str, dict[str, list[str]]],
    order: list[str],
    read: Callable[[str], bytes],
    progress: bool,
    splits: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Decode the planned images (reading them in ``order``) into the arrays that are cached:
    ``classes``, ``mean``, ``std`` and ``<split>_images`` / ``<split>_labels`` per split."""
    wanted = {name for classes in plan.values() for names in classes.values() for name in names}
    decoded: dict[str, np.ndarray] = {}
    shape, first_name = None, ""
    with tqdm(total=len(wanted), desc=f"decoding {source.name}", disable=not progress) as bar:
        for name in order:
            if name not in wanted:
                continue
            arr = decode_image(source, name, read(name))
            if shape is None:
                shape, first_name = arr.shape, name
            elif arr.shape != shape:
                raise ValueError(
                    f"images of mixed sizes in {source}: {name} is {arr.shape[1]}x{arr.shape[0]}x"
                    f"{arr.shape[2]} but {first_name} is {shape[1]}x{shape[0]}x{shape[2]} "
                    "(WxHxC). Resize all images to one size (and one colour mode) before loading."
                )
            decoded[name] = arr
            bar.update(1)
    classes = sorted(plan["train"])
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in splits:
        names = [(label, n) for label, c in enumerate(classes) for n in plan[split].get(c, [])]
        stacked = np.stack([decoded[n] for _, n in names])
        out[f"{split}_images"] = stacked.transpose(0, 3, 1, 2).copy()
        out[f"{split}_labels"] = np.asarray([label for label, _ in names], dtype=np.int64)
    mean, std = channel_stats(torch.from_numpy(out["train_images"]))
    out["mean"], out["std"] = np.asarray(mean), np.asarray(std)
    return out
