"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, 2021).

One call draws ONE transform kind (``color``, ``crop``, ``cutout``, ``flip``, ``scale`` or
``rotate``) and its random parameters; :meth:`DSA.apply` then applies exactly that transform to
any batch. Matching steps apply the same :class:`DSAParams` to the real and the synthetic batch
("Siamese"); all operations are differentiable w.r.t. the input pixels.

Used as a training augmentation, ``dsa(x, generator)`` draws per-sample parameters instead.
Images are float ``[N, C, H, W]`` (normalised); pixels moved outside the image are zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from replay_lcmat.validation import check_number, option_error

TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """A sampled transform: its kind and per-sample parameter tensors (leading dim 1 or N).

    A leading dimension of 1 means one parameter set broadcast to every image of any batch.
    """

    kind: str
    values: dict[str, Tensor]


def _uniform(n: int, generator: torch.Generator, low: float, high: float) -> Tensor:
    draw = torch.rand(n, generator=generator, device=generator.device)
    return low + (high - low) * draw


def _randint(n: int, generator: torch.Generator, low: int, high: int) -> Tensor:
    """Integers in ``[low, high]`` (both ends included)."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=generator.device)


class DSA:
    """Differentiable Siamese Augmentation with the DSA paper's default strengths.

    Args:
        strategy: transform kinds joined by ``_``; one is chosen uniformly per call.
        flip: probability of a horizontal flip.
        scale: max scale ratio; each axis is scaled by a factor in ``[1/scale, scale]``.
        rotate: max rotation in degrees (either direction).
        crop: max translation as a fraction of the image size (zero padding).
        cutout: side of the zeroed square as a fraction of the image size.
        brightness: added offset drawn from ``[-brightness/2, brightness/2]``.
        saturation: channel-deviation factor drawn from ``[0, saturation]``.
        contrast: image-deviation factor drawn from ``[contrast, contrast + 1]``.
    """

    def __init__(
        self,
        strategy: str = "color_crop_cutout_flip_scale_rotate",
        *,
        flip: float = 0.5,
        scale: float = 1.2,
        rotate: float = 15.0,
        crop: float = 0.125,
        cutout: float = 0.5,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
    ) -> None:
        if not isinstance(strategy, str):
            raise option_error("DSA", "strategy", "transform names joined by '_'", strategy)
        kinds = tuple(strategy.split("_"))
        unknown = [k for k in kinds if k not in TRANSFORMS]
        if not kinds or unknown:
            raise ValueError(
                f"unknown DSA transform(s) {unknown} in strategy {strategy!r}; use transforms "
                f"from {TRANSFORMS} joined by '_', e.g. 'color_crop_cutout_flip_scale_rotate'."
            )
        for name, value in (("flip", flip), ("crop", crop), ("cutout", cutout)):
            check_number("DSA", name, value, minimum=0, maximum=1)
        for name, value in (
            ("rotate", rotate),
            ("brightness", brightness),
            ("saturation", saturation),
            ("contrast", contrast),
        ):
            check_number("DSA", name, value, minimum=0)
        check_number("DSA", "scale", scale, minimum=1)  # a ratio
        self.strategy = strategy
        self.kinds = kinds
        self.flip, self.scale, self.rotate, self.crop = flip, scale, rotate, crop
        self.cutout, self.brightness = cutout, brightness
        self.saturation, self.contrast = saturation, contrast

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r})"

    def sample(
        self, image_size: tuple[int, int], generator: torch.Generator, n: int = 1
    ) -> DSAParams:
        """Draw one transform kind and parameters for ``n`` images (``n=1``: shared by all).

        Args:
            image_size: ``(H, W)`` of the images the parameters will be applied to.
            generator: source of all randomness (its device is where draws happen).
            n: number of parameter sets.
        """
        pick = int(
            torch.randint(len(self.kinds), (1,), generator=generator, device=generator.device)
        )
        kind = self.kinds[pick]
        height, width = image_size
        g = generator
        if kind == "color":
            values = {
                "brightness": _uniform(n, g, -self.brightness / 2, self.brightness / 2),
                "saturation": _uniform(n, g, 0.0, self.saturation),
                "contrast": _uniform(n, g, self.contrast, self.contrast + 1),
            }
        elif kind == "crop":
            max_dy, max_dx = int(height * self.crop + 0.5), int(width * self.crop + 0.5)
            values = {"dy": _randint(n, g, -max_dy, max_dy), "dx": _randint(n, g, -max_dx, max_dx)}
        elif kind == "cutout":
            values = {"cy": _randint(n, g, 0, height - 1), "cx": _randint(n, g, 0, width - 1)}
        elif kind == "flip":
            values = {"flip": torch.rand(n, generator=g, device=g.device) < self.flip}
        elif kind == "scale":
            values = {
                "sy": _uniform(n, g, 1 / self.scale, self.scale),
                "sx": _uniform(n, g, 1 / self.scale, self.scale),
            }
        else:  # rotate
            values = {"angle": _uniform(n, g, -self.rotate, self.rotate) * (math.pi / 180)}
        return DSAParams(kind, values)

    def apply(self, x: Tensor, params: DSAParams) -> Tensor:
        """Apply sampled parameters to ``x`` ``[N, C, H, W]``; differentiable w.r.t. ``x``."""
        if x.dim() != 4:
            raise ValueError(f"DSA expects images [N, C, H, W], got shape {tuple(x.shape)}.")
        v = {k: t.to(x.device) for k, t in params.values.items()}
        lead = next(iter(v.values())).shape[0]
        if lead not in (1, x.shape[0]):
            raise ValueError(
                f"parameters were sampled for {lead} images but the batch has {x.shape[0]}; "
                "sample with n=1 (shared) or n=len(batch)."
            )
        if params.kind == "color":
            return _color(x, v["brightness"], v["saturation"], v["contrast"])
        if params.kind == "cutout":
            return x * _cutout_mask(x, v["cy"], v["cx"], int(x.shape[-1] * self.cutout + 0.5))
        return _warp(x, _affine(params.kind, v, x))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Training augmentation: one transform kind, independent parameters per image."""
        return self.apply(x, self.sample((x.shape[-2], x.shape[-1]), generator, n=x.shape[0]))


def _color(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    x = x + brightness.view(-1, 1, 1, 1).to(x.dtype)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * saturation.view(-1, 1, 1, 1).to(x.dtype) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * contrast.view(-1, 1, 1, 1).to(x.dtype) + image_mean


def _cutout_mask(x: Tensor, cy: Tensor, cx: Tensor, side: int) -> Tensor:
    """``[N or 1, 1, H, W]`` mask, 0 inside the ``side``-wide square centred at (cy, cx)."""
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    top, left = (cy - side // 2).view(-1, 1, 1), (cx - side // 2).view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return (~inside).unsqueeze(1).to(x.dtype)


def _affine(kind: str, v: dict[str, Tensor], x: Tensor) -> Tensor:
    """``[N or 1, 2, 3]`` sampling matrices in the normalised coordinates of ``affine_grid``."""
    n = next(iter(v.values())).shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    if kind == "crop":
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        # a shift of k pixels is 2k / size in normalised coordinates
        theta[:, 0, 2] = 2 * v["dx"].to(x.dtype) / x.shape[-1]
        theta[:, 1, 2] = 2 * v["dy"].to(x.dtype) / x.shape[-2]
    elif kind == "flip":
        theta[:, 0, 0] = 1 - 2 * v["flip"].to(x.dtype)
        theta[:, 1, 1] = 1
    elif kind == "scale":
        theta[:, 0, 0], theta[:, 1, 1] = v["sx"].to(x.dtype), v["sy"].to(x.dtype)
    elif kind == "rotate":
        cos, sin = torch.cos(v["angle"]).to(x.dtype), torch.sin(v["angle"]).to(x.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin
        theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    else:
        raise ValueError(f"no affine form for DSA transform {kind!r}.")
    return theta


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
