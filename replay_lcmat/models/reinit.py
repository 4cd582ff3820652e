"""Fresh copies of a model: the same architecture, newly initialised under a seed."""

from __future__ import annotations

import copy

import torch
from torch import nn

from replay_lcmat.seeding import seeded


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``, on the CPU, with every parameter freshly initialised under ``seed``.

    Calls ``reset_parameters()`` of each module (in ``modules()`` order) inside
    :func:`replay_lcmat.seeding.seeded`, so the global RNG is left untouched; initialising on
    the CPU gives the same weights whatever device the model lives on.

    Raises:
        ValueError: a module owns parameters but has no ``reset_parameters``.
    """
    fresh = copy.deepcopy(model).cpu()
    with seeded(seed), torch.no_grad():
        for module in fresh.modules():
            owns = any(True for _ in module.parameters(recurse=False))
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            elif owns:
                raise ValueError(
                    f"{type(module).__name__} has parameters but no reset_parameters(), so a "
                    "fresh copy cannot be initialised; give it reset_parameters() or build fresh "
                    "models yourself."
                )
    return fresh
