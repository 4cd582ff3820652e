"""Models with one contract: ``features(x) -> [N, d]``, ``classifier: nn.Linear``,
``forward(x) = classifier(features(x))``, ``feature_dim = d``."""

from __future__ import annotations

from torch import nn

from replay_lcmat.models.convnet import ConvNet
from replay_lcmat.models.mlp import MLP
from replay_lcmat.models.reinit import reinitialize
from replay_lcmat.models.resnet import ResNet18
from replay_lcmat.models.split import ModelFeatures, split_head

MODEL_NAMES = ("convnet", "resnet18", "mlp")

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "ConvNet",
    "ModelFeatures",
    "ResNet18",
    "make_model",
    "reinitialize",
    "split_head",
]


def make_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, **options
) -> nn.Module:
    """Build a model by name: ``convnet`` (ConvNet-3 by default), ``resnet18``, ``mlp``.

    ``options`` go to the model's constructor (e.g. ``width=64`` for ``convnet``).
    """
    if name == "convnet":
        return ConvNet(in_channels, num_classes, image_size=image_size, **options)
    if name == "resnet18":
        return ResNet18(in_channels, num_classes, **options)
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes, **options)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
