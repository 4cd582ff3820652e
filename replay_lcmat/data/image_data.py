"""The one in-memory structure every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageData:
    """Images with labels, class names and the normalisation statistics to use on them.

    Attributes:
        images: uint8 raw pixels ``[N, C, H, W]`` (0..255) or float32 already-normalised pixels.
        labels: int64 ``[N]``, values in ``[0, len(classes))``.
        classes: class names; position = label.
        mean, std: per-channel statistics in [0, 1] pixel units, used by :meth:`normalized`.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(
                f"images must be a 4-D tensor [N, C, H, W]; got shape {tuple(self.images.shape)}. "
                "Add a channel axis for grey images (x.unsqueeze(1))."
            )
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be a 1-D int64 tensor; got shape {tuple(self.labels.shape)} and "
                f"dtype {self.labels.dtype}. Convert with torch.as_tensor(labels, dtype=torch.int64)."
            )
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels; pass one label per image."
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
        ):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes; "
                f"found values from {int(self.labels.min())} to {int(self.labels.max())}. "
                "Pass all class names, or remap labels to 0..C-1."
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}); got {len(self.mean)} "
                f"and {len(self.std)}."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        """One line (shapes, dtype, classes, statistics), never the pixels: safe in logs."""
        shape = "x".join(str(d) for d in self.images.shape)
        stats = ", ".join(
            f"{name}=({', '.join(f'{v:.4g}' for v in values)})"
            for name, values in (("mean", self.mean), ("std", self.std))
        )
        dtype = str(self.images.dtype).removeprefix("torch.")
        return f"ImageData(images {shape} {dtype}, {self.num_classes} classes, {stats})"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalized(self, device: torch.device | str | None = None) -> Tensor:
        """Float32 ``[N, C, H, W]``: ``(x / 255 - mean) / std`` for uint8 images, as-is for float."""
        x = self.images.to(device) if device is not None else self.images
        if x.dtype != torch.uint8:
            return x.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def subset(self, indices: Tensor | Sequence[int]) -> ImageData:
        """The samples at ``indices`` (in that order), same classes and statistics."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageData(self.images[idx], self.labels[idx], self.classes, self.mean, self.std)

    def class_indices(self, label: int) -> Tensor:
        """int64 indices of the samples of class ``label``, ascending."""
        return torch.nonzero(self.labels == label).flatten()


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images, in [0, 1] pixel units."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())
