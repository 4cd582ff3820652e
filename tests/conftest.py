"""Shared fixtures: the real CIFAR-10 archive beside the checkout, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from replay_lcmat.data import shared_cifar10_archive


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Two cores are shared by CI and other work: keep torch from oversubscribing them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    archive = shared_cifar10_archive()
    if archive is None:
        pytest.skip("no CIFAR-10 archive at ../shared/data (set REPLAY_LCMAT_CIFAR10_ARCHIVE)")
    return archive


@pytest.fixture(scope="session")
def cifar10(cifar10_archive, tmp_path_factory):
    """``(train, test)`` ImageData of the real CIFAR-10 archive, decoded into a fresh cache."""
    from replay_lcmat.data import load_dataset

    cache = tmp_path_factory.mktemp("cifar10-cache")
    return load_dataset(cifar10_archive, cache_dir=cache, progress=False)
