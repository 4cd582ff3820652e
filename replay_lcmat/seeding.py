"""Seeds without hidden global state: explicit generators, and a scoped seed for model init."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` and restore torch's global RNG afterwards.

    Use it around code that draws from the global RNG and has no generator argument, such as
    ``nn.Module`` initialisation: ``with seeded(0): model = ConvNet(3, 10)``.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for a sub-task (a class, an experience, an evaluation) derived from ``seed``.

    Deterministic and well spread (NumPy's ``SeedSequence``); different keys give unrelated
    streams, so e.g. the uniform picks of class 3 do not depend on which classes came before.
    """
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])
