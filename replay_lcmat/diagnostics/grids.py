"""Memory grids (the paper's Fig. 7): the images each method keeps, one row band per class, one
column block per method."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from replay_lcmat.diagnostics.sources import MemorySet


@dataclass(frozen=True)
class MemoryGrid:
    """Grids of several sets laid out alike, so the same class sits at the same height.

    Attributes:
        grids: ``{name: float32 [3, H_g, W_g]}`` in [0, 1]; one band of ``rows_per_class``
            image rows per class of ``labels``; empty slots hold ``pad_value``.
        labels: class labels of the bands, top to bottom.
        class_names: a name per band.
        columns, rows_per_class, padding: the layout; ``image_size = (H, W)`` of one image.
        shown: images shown per class at most (the first ones, rank order).
    """

    grids: dict[str, Tensor]
    labels: list[int]
    class_names: list[str]
    columns: int
    rows_per_class: int
    padding: int
    image_size: tuple[int, int]
    shown: int

    @property
    def band_height(self) -> int:
        """Pixels per class band (``make_grid`` pads every band on all sides)."""
        return self.rows_per_class * (self.image_size[0] + self.padding) + self.padding

    def cell(self, band: int, slot: int) -> tuple[slice, slice]:
        """``(rows, cols)`` of image ``slot`` (rank order) of class band ``band`` in a grid."""
        h, w = self.image_size
        top = band * self.band_height + (slot // self.columns) * (h + self.padding) + self.padding
        left = (slot % self.columns) * (w + self.padding) + self.padding
        return slice(top, top + h), slice(left, left + w)


def memory_grid(
    sets: Sequence[MemorySet],
    *,
    max_per_class: int | None = 10,
    columns: int | None = None,
    classes: Sequence[int] | None = None,
    padding: int = 1,
    pad_value: float = 1.0,
) -> MemoryGrid:
    """Denormalised per-class grids of every set (pure; see :func:`plot_memory_grid`).

    Args:
        sets: the methods to show; all with images of one size.
        max_per_class: show the first ``k`` images of every class (rank order); ``None``: all.
        columns: images per row inside a band (default: the most images any class shows, at
            most 10).
        classes: labels to show, top to bottom (default: every label of any set, ascending).
            A set without images of a class shows an empty band.
        padding: pixels between images; ``pad_value`` their colour (1 = white).
    """
    if not sets:
        raise ValueError("no sets to show; pass at least one MemorySet.")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"set names must differ (column titles); got {names}.")
    sizes = {tuple(s.images.shape[1:]) for s in sets}
    if len(sizes) != 1:
        raise ValueError(f"all sets need images of one shape [C, H, W]; got {sorted(sizes)}.")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None; got {max_per_class}.")
    channels, h, w = sizes.pop()
    if classes is None:
        labels = sorted({int(c) for s in sets for c in s.labels.tolist()})
    else:
        labels = [int(c) for c in classes]
    if not labels:
        raise ValueError("the sets hold no images; nothing to show.")
    counts = [int((s.labels == c).sum()) for s in sets for c in labels]
    shown = max(counts) if max_per_class is None else min(max(counts), max_per_class)
    shown = max(shown, 1)
    columns = columns or min(shown, 10)
    rows = math.ceil(shown / columns)
    grids = {s.name: _set_grid(s, labels, shown, columns, rows, padding, pad_value) for s in sets}
    names_by_label = next((s.classes for s in sets if s.classes is not None), None)
    class_names = [
        names_by_label[c] if names_by_label is not None and c < len(names_by_label) else str(c)
        for c in labels
    ]
    return MemoryGrid(grids, labels, class_names, columns, rows, padding, (h, w), shown)


def _set_grid(
    s: MemorySet,
    labels: list[int],
    shown: int,
    columns: int,
    rows: int,
    padding: int,
    pad_value: float,
) -> Tensor:
    from torchvision.utils import make_grid

    pixels = s.pixels()
    blank = torch.full((rows * columns, *pixels.shape[1:]), pad_value)
    bands = []
    for c in labels:
        members = pixels[s.labels == c][:shown]
        slots = blank.clone()
        slots[: len(members)] = members
        bands.append(make_grid(slots, nrow=columns, padding=padding, pad_value=pad_value))
    return torch.cat(bands, dim=1)


def plot_memory_grid(
    sets: Sequence[MemorySet],
    path: str | os.PathLike,
    *,
    title: str = "",
    **layout,
) -> Path:
    """Write the grids of ``sets`` side by side as a PNG: one panel per method, class names as
    row labels. ``layout`` goes to :func:`memory_grid` (``max_per_class``, ``columns``,
    ``classes``, ``padding``). Returns the path."""
    from matplotlib.figure import Figure

    grid = memory_grid(sets, **layout)
    height, width = next(iter(grid.grids.values())).shape[1:]
    # about 5 screen pixels per image pixel for 8x8 digits, 2 for 32x32 images
    scale = max(1.0, 48.0 / grid.image_size[0]) * 1.5 / 100.0
    panel_h = min(max(height * scale, 2.5), 16.0)
    panel_w = panel_h * width / height
    fig = Figure(figsize=(len(sets) * panel_w + 1.2, panel_h + 0.8), layout="constrained")
    centres = [(i + 0.5) * grid.band_height for i in range(len(grid.labels))]
    for i, s in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), i + 1)
        ax.imshow(grid.grids[s.name].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks(centres, grid.class_names if i == 0 else [""] * len(centres))
        ax.tick_params(length=0, labelsize=8)
        counts = [int((s.labels == c).sum()) for c in grid.labels]
        note = f", first {grid.shown} per class shown" if max(counts) > grid.shown else ""
        ax.set_title(f"{s.name} ({sum(counts)} images{note})", fontsize=9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
