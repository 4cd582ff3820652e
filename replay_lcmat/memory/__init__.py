"""Replay memory without Avalanche: the per-class store, the policies that fill it, and the
core of the memory-only protocol.

    memory = build_memory("lcmat-s", images, labels, per_class=10, model=model)
    memory.save("memory.pt"); ClassMemory.load("memory.pt")

The whole protocol is :func:`replay_lcmat.continual.memory_only_run`; the Avalanche adapters
in ``replay_lcmat.strategies`` call the same functions.
"""

from replay_lcmat.memory.exemplars import (
    MEMORY_DEFAULTS,
    check_options,
    check_per_class,
    condense_exemplars,
    memory_selector,
    select_exemplars,
    split_small_classes,
)
from replay_lcmat.memory.policies import (
    CondensationPolicy,
    MemoryPolicy,
    SelectionPolicy,
    build_memory,
    memory_policies,
    memory_policy,
)
from replay_lcmat.memory.protocol import ExperienceSeeds, ResultRow, retrain_on_memory
from replay_lcmat.memory.store import ClassMemory

__all__ = [
    "MEMORY_DEFAULTS",
    "ClassMemory",
    "CondensationPolicy",
    "ExperienceSeeds",
    "MemoryPolicy",
    "ResultRow",
    "SelectionPolicy",
    "build_memory",
    "check_options",
    "check_per_class",
    "condense_exemplars",
    "memory_policies",
    "memory_policy",
    "memory_selector",
    "retrain_on_memory",
    "select_exemplars",
    "split_small_classes",
]
