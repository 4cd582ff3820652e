"""Batched image augmentation on the tensors' device (no per-sample PIL loop)."""

from __future__ import annotations

import torch
from torch import Tensor


class RandomCropFlip:
    """Random crop after reflect padding, then random horizontal flip, per sample of a batch.

    The standard CIFAR training augmentation. Works on normalised float batches (padding by
    reflection and flipping commute with per-channel normalisation). Random draws come from
    ``generator`` (a CPU ``torch.Generator``), so the same seed gives the same batch on any device.

    Args:
        padding: pixels of reflect padding on each side (crop offsets in ``[0, 2 * padding]``).
        flip: also flip horizontally with probability 0.5.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0; got {padding}.")
        self.padding = padding
        self.flip = flip

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x``: ``[N, C, H, W]`` -> augmented ``[N, C, H, W]`` on the same device."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch [N, C, H, W]; got shape {tuple(x.shape)}.")
        n, _, h, w = x.shape
        if self.padding:
            p = self.padding
            if p >= h or p >= w:
                raise ValueError(
                    f"padding {p} too large for {h}x{w} images (reflect needs < size)."
                )
            padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [n, h, 1]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [n, 1, w]
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
