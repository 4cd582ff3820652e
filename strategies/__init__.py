"""Avalanche adapters for LCMat memories (installed as ``replay_lcmat.strategies``).

    from avalanche.training.supervised import Naive
    from replay_lcmat.strategies import LCMatReplayPlugin

    strategy = Naive(model, optimizer, plugins=[LCMatReplayPlugin(per_class=10, policy="lcmat-s")])

- :class:`SelectorExemplarsStrategy`: an Avalanche ``ExemplarsSelectionStrategy`` ranking with
  any registered selector; :class:`SelectionBuffer`: class-balanced, budget-aware buffer of it.
- :class:`CondensedClassBuffer`: synthetic exemplars from any registered condenser.
- :class:`LCMatReplayPlugin`: replay with either, picked by policy name. With Avalanche's own
  ``ReplayPlugin`` pass ``mem_size=buffer.max_size`` (the buffers grow per class seen).
- :class:`MemoryOnlyRetrainPlugin`: the paper's protocol (fresh model trained on memory only).
- :func:`selection_dataset`: a saved selection (``replay-lcmat select``) of a torchvision
  dataset as an Avalanche dataset.
- :func:`tensor_benchmark`: class- (or task-) incremental benchmark from in-memory images (no
  download).
- :func:`run_continual`: one whole run, accuracy after every experience.
- :func:`save_run` / :func:`load_run`: resume a stopped run (model, optimizer, clock, memories,
  random state).
"""

from replay_lcmat.strategies.checkpoint import load_run, save_run
from replay_lcmat.strategies.condensed_buffer import CondensedClassBuffer
from replay_lcmat.strategies.datasets import (
    dataset_tensors,
    selection_dataset,
    tensor_benchmark,
    tensor_dataset,
)
from replay_lcmat.strategies.memory_only import MemoryOnlyRetrainPlugin
from replay_lcmat.strategies.plugins import LCMatReplayPlugin, make_storage_policy
from replay_lcmat.strategies.protocol import PROTOCOLS, run_continual, stream_accuracy
from replay_lcmat.strategies.selection_policy import SelectionBuffer, SelectorExemplarsStrategy

__all__ = [
    "PROTOCOLS",
    "CondensedClassBuffer",
    "LCMatReplayPlugin",
    "MemoryOnlyRetrainPlugin",
    "SelectionBuffer",
    "SelectorExemplarsStrategy",
    "dataset_tensors",
    "load_run",
    "make_storage_policy",
    "run_continual",
    "save_run",
    "selection_dataset",
    "stream_accuracy",
    "tensor_benchmark",
    "tensor_dataset",
]
