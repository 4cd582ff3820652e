"""Split any classifier into a feature extractor and its last linear layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _HeadReached(Exception):
    """Raised inside a forward pass once the head's input is captured, to skip the head."""


class ModelFeatures(nn.Module):
    """``features(x)`` of a model: ``model.features`` when it has the library's contract, else the
    (flattened) input of ``head`` captured during ``model(x)``."""

    def __init__(self, model: nn.Module, head: nn.Linear, use_method: bool) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.use_method = use_method

    def forward(self, x: Tensor) -> Tensor:
        if self.use_method:
            return self.model.features(x)
        captured: list[Tensor] = []

        def grab(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])
            raise _HeadReached

        handle = self.head.register_forward_pre_hook(grab)
        try:
            self.model(x)
        except _HeadReached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"{type(self.model).__name__}.forward never called its last nn.Linear; split_head "
                "cannot find its features. Give the model a features(x) method and a classifier "
                "nn.Linear attribute."
            )
        return torch.flatten(captured[0], 1)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def split_head(model: nn.Module, example: Tensor | None = None) -> tuple[nn.Module, nn.Linear]:
    """``(features, head)`` such that ``model(x) == head(features(x))``.

    Models of this library (and any model with a ``features(x) -> [N, d]`` method and a
    ``classifier`` ``nn.Linear``) are split directly. Other models (Avalanche's ``SimpleCNN``,
    torchvision's ResNets, ...) are split at their last ``nn.Linear`` in registration order.

    Args:
        model: the classifier.
        example: optional input batch; when given, the split is verified on it and a model
            that does more after its last linear layer (softmax, a second branch, ...) is rejected.

    Raises:
        ValueError: the model has no ``nn.Linear`` layer, or the check on ``example`` fails.
    """
    classifier = getattr(model, "classifier", None)
    use_method = isinstance(classifier, nn.Linear) and callable(getattr(model, "features", None))
    head = classifier if use_method else _last_linear(model)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so it has no last linear head to "
            "compute curvature on. Add a final nn.Linear classifier, or give the model a "
            "features(x) method and a classifier nn.Linear attribute."
        )
    features = ModelFeatures(model, head, use_method)
    if example is not None:
        with torch.no_grad():
            expected = model(example)
            got = head(features(example))
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"{type(model).__name__}'s output is not its last nn.Linear applied to that "
                "layer's input (something runs after it, e.g. softmax). Give the model a "
                "features(x) method and a classifier nn.Linear attribute that produces the logits."
            )
    return features, head
