"""Shared fixtures: the real CIFAR-10 archive, loaded once per session.

The archive is found through ``$REPLAY_LCMAT_CIFAR10_ARCHIVE`` (see
``replay_lcmat.data.shared_cifar10_archive``); when it is unset and the project's build-machine
copy ``../shared/data/cifar10-jpeg.tar.gz`` lies beside the checkout, the variable is set to it
for this test run (subprocesses inherit it). Tests that need the archive skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from replay_lcmat.data import shared_cifar10_archive
from replay_lcmat.data.folder import CIFAR10_ARCHIVE_VARIABLE

BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(CIFAR10_ARCHIVE_VARIABLE, "").strip() and BESIDE_CHECKOUT.is_file():
        os.environ[CIFAR10_ARCHIVE_VARIABLE] = str(BESIDE_CHECKOUT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the real CIFAR-10 archive decode it first: they are ``slow``."""
    for item in items:
        if "cifar10" in getattr(item, "fixturenames", ()) or "cifar10_archive" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Two cores are shared by CI and other work: keep torch from oversubscribing them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """One torch thread for the test: results that are compared bit for bit (golden picks,
    references, a single process against spawned ones, which run one thread each)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    archive = shared_cifar10_archive()
    if archive is None:
        pytest.skip(
            f"no CIFAR-10 archive: set ${CIFAR10_ARCHIVE_VARIABLE} to cifar10-jpeg.tar.gz "
            f"(looked for {BESIDE_CHECKOUT})"
        )
    return archive


@pytest.fixture(scope="session")
def cifar10(cifar10_archive, tmp_path_factory):
    """``(train, test)`` ImageData of the real CIFAR-10 archive, decoded into a fresh cache."""
    from replay_lcmat.data import load_dataset

    cache = tmp_path_factory.mktemp("cifar10-cache")
    return load_dataset(cifar10_archive, cache_dir=cache, progress=False)


try:  # property-based tests (tests/test_selection_properties.py); hypothesis is a test extra
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - the property tests skip themselves
    pass
else:
    # the normal suite: a few examples per selector and property; `--hypothesis-profile slow`
    # (the flag of hypothesis's pytest plugin) runs many more
    _checks = [HealthCheck.too_slow, HealthCheck.differing_executors]
    settings.register_profile(
        "replay-lcmat", max_examples=5, deadline=None, suppress_health_check=_checks
    )
    settings.register_profile(
        "slow", max_examples=200, deadline=None, suppress_health_check=_checks
    )
    settings.load_profile("replay-lcmat")
