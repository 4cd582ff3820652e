"""Seeds without hidden global state: explicit generators, and a scoped seed for model init."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
