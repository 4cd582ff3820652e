"""replay-lcmat: Loss-Curvature Matching (LCMat) for coreset selection, dataset condensation
and replay memories in continual learning.

Modules: ``data``, ``models``, ``training``, ``seeding``, ``curvature``, ``submodular``,
``greedy``, ``selection``, ``condensation``, ``memory`` (replay memory), ``continual`` (the memory-only
protocol), ``diagnostics``, ``reporting`` (results files), ``cli``; Avalanche adapters in
``replay_lcmat.strategies`` and the paper protocols in ``replay_lcmat.benchmarks``.

``replay_lcmat.strategies`` and ``replay_lcmat.benchmarks`` live in the checkout's top-level
``strategies/`` and ``benchmarks/`` folders; the install maps them to these names
(``package-dir`` in pyproject.toml), so they import only from an installed copy (``pip install
-e .`` for a checkout). Importing this package imports nothing else; ``load_selection``
(:func:`replay_lcmat.selection.record.load_selection`, a saved selection) is imported on first
use.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_selection"]


def __getattr__(name: str) -> Any:
    # lazy: `import replay_lcmat` loads no torch; the selection package loads on first use
    if name == "load_selection":
        from replay_lcmat.selection.record import load_selection

        return load_selection
    raise AttributeError(f"module 'replay_lcmat' has no attribute {name!r}")
