"""Resume a stopped Avalanche run: one file with the model, the optimizer, the strategy's clock,
the next experience, every LCMat memory and the random state.

Avalanche 0.6.0's own ``save_checkpoint`` pickles the whole strategy with dill, which fails on
this stack for any strategy (with or without our plugins): ``PicklingError: Can't pickle
sentinel: it's not the same object as typing_extensions.sentinel`` (typing_extensions 4.16's
``sentinel`` objects do not pickle by reference). :func:`save_run` / :func:`load_run` save the
pieces instead, as plain tensors (read back with ``torch.load(weights_only=True)``), written
atomically (a crash while saving leaves the previous file).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from replay_lcmat.files import atomic_torch_save, check_state_header, read_torch_file
from replay_lcmat.strategies.plugins import MemoryStateMixin

RUN_FORMAT = "replay-lcmat/avalanche-run"
RUN_VERSION = 1  # the one layout read back; any other version is refused


def _memory_plugins(strategy) -> list:
    return [p for p in getattr(strategy, "plugins", []) if isinstance(p, MemoryStateMixin)]


def save_run(path: str | os.PathLike, strategy, *, next_experience: int) -> Path:
    """Save what a run needs to go on from experience ``next_experience`` of the train stream.

    Saved: ``strategy.model`` and ``strategy.optimizer`` state (with the names of the
    parameters Avalanche tracks in it, so momentum carries over as in an unbroken run), the
    integer counters of
    ``strategy.clock``, the memory of every LCMat plugin on the strategy
    (:class:`LCMatReplayPlugin`, :class:`MemoryOnlyRetrainPlugin`; in plugin order) and the
    torch random state (CPU and CUDA), so the resumed run draws the same mini-batches.

    Call it after ``strategy.train(experience)`` (and any ``eval``) of experience
    ``next_experience - 1``. Other plugins (loggers, metrics, your own) keep no state here.
    """
    if isinstance(next_experience, bool) or not isinstance(next_experience, int):
        raise ValueError(f"next_experience must be an int; got {next_experience!r}.")
    # taken first: reading the memory (its fingerprints) runs a DataLoader, which draws a seed
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    payload = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "next_experience": next_experience,
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "clock": {
            k: v
            for k, v in vars(strategy.clock).items()
            if isinstance(v, int) and not isinstance(v, bool)
        },
        "memories": [p.state_dict() for p in _memory_plugins(strategy)],
        "rng": rng,
        # the parameters Avalanche's make_optimizer tracks; a strategy without them resets the
        # optimizer state (momentum) at its first experience
        "optimized": list(getattr(strategy, "optimized_param_id", None) or []),
    }
    return atomic_torch_save(path, payload)


def load_run(path: str | os.PathLike, strategy, stream) -> int:
    """Restore :func:`save_run` into a strategy built as the saved one (same model
    architecture, optimizer kind, plugins with the same policies and sizings) and return the
    index of the next experience to train: ``for exp in stream[load_run(...):]``.

    ``stream`` is the benchmark's train stream (selection memories store indices into it;
    checked exemplar by exemplar). The memories are restored first, so a mismatch leaves the
    strategy untouched.
    """
    state = read_torch_file(Path(path), "run checkpoint", "replay_lcmat.strategies.save_run")
    try:
        check_state_header(state, RUN_FORMAT, RUN_VERSION, "run checkpoint", "save_run()")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    plugins = _memory_plugins(strategy)
    if len(plugins) != len(state["memories"]):
        raise ValueError(
            f"{path} holds {len(state['memories'])} LCMat memories, this strategy has "
            f"{len(plugins)} LCMat plugins; build the strategy with the saved plugins."
        )
    for plugin, memory in zip(plugins, state["memories"], strict=True):
        plugin.load_state_dict(memory, stream)
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    if state["optimized"]:
        params = dict(strategy.model.named_parameters())
        strategy.optimized_param_id = {name: params[name] for name in state["optimized"]}
    for name, value in state["clock"].items():
        setattr(strategy.clock, name, value)
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["next_experience"])
