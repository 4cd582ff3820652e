"""A small MLP for tiny inputs (e.g. 8x8 digits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) per hidden size -> linear head.

    Args:
        in_features: number of input values per sample (C*H*W for images).
        hidden: sizes of the hidden layers; the last one is ``feature_dim``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer (hidden=(256,) for example).")
        layers: list[nn.Module] = []
        size = in_features
        for h in hidden:
            layers += [nn.Linear(size, h), nn.ReLU()]
            size = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = size
        self.classifier = nn.Linear(size, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, hidden[-1]]``."""
        return self.body(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
