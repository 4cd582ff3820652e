"""ConvNet of the dataset-condensation literature (ConvNet-3 = the defaults)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMS = ("instance", "batch", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
POOLINGS = ("avg", "max", "none")


def _activation(kind: str) -> nn.Module:
    # ReLU / LeakyReLU overwrite their input: the norm (or conv) before them needs only its own
    # input for the backward pass, so the same values and gradients, one activation buffer fewer
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(inplace=True)
    return nn.Sigmoid()


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":  # per-channel normalisation over space, with affine parameters
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.Identity()


class ConvNet(nn.Module):
    """``depth`` blocks of conv3x3 (padding 1) -> norm -> activation -> 2x2 pooling, then a linear head.

    Args:
        in_channels, num_classes: input channels and output classes.
        image_size: input height = width in pixels (sets the feature dimension).
        width: channels of every conv layer (128 in ConvNet-3).
        depth: number of blocks (3 in ConvNet-3).
        norm: ``"instance"`` (GroupNorm with one group per channel), ``"batch"`` or ``"none"``.
        activation: ``"relu"``, ``"leakyrelu"`` or ``"sigmoid"``.
        pooling: ``"avg"``, ``"max"`` or ``"none"`` (2x2, stride 2).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        activation: str = "relu",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if norm not in NORMS or activation not in ACTIVATIONS or pooling not in POOLINGS:
            raise ValueError(
                f"unsupported ConvNet option (norm={norm!r}, activation={activation!r}, "
                f"pooling={pooling!r}); choose norm from {NORMS}, activation from "
                f"{ACTIVATIONS}, pooling from {POOLINGS}."
            )
        size = image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                _norm(norm, width),
                _activation(activation),
            ]
            if pooling != "none":
                if size < 2:
                    raise ValueError(
                        f"image_size {image_size} is too small for depth {depth} with pooling; "
                        "lower the depth or use pooling='none'."
                    )
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]``."""
        return torch.flatten(self.body(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
