"""Each rank's share of the host's CPU threads (no oversubscription under torchrun)."""

import pytest
import torch

from replay_lcmat import distributed


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("threads", "ranks", "share"), [(2, 2, 1), (16, 4, 4), (3, 2, 1), (1, 8, 1), (8, 1, 8)]
)
def test_threads_per_rank_is_an_even_share_of_at_least_one(threads, ranks, share):
    assert distributed.threads_per_rank(threads, ranks) == share


def test_split_threads_follows_local_world_size(monkeypatch, keep_threads):
    torch.set_num_threads(2)
    monkeypatch.delenv(distributed.THREADS_ENV, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.split_threads() == 1
    assert torch.get_num_threads() == 1


def test_split_threads_keeps_a_lone_process_whole(monkeypatch, keep_threads):
    torch.set_num_threads(2)
    monkeypatch.delenv(distributed.THREADS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.split_threads() == 2


def test_the_environment_overrides_the_share(monkeypatch, keep_threads):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv(distributed.THREADS_ENV, "3")
    assert distributed.split_threads() == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setenv(distributed.THREADS_ENV, "zero")
    with pytest.raises(ValueError, match="REPLAY_LCMAT_THREADS must be a positive integer"):
        distributed.split_threads()
