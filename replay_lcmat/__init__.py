"""replay-lcmat: Loss-Curvature Matching (LCMat) for coreset selection, dataset condensation
and replay memories in continual learning.

Modules: ``data``, ``models``, ``training``, ``seeding``, ``curvature``, ``submodular``,
``selection``, ``condensation``, ``memory`` (replay memory), ``continual`` (the memory-only
protocol), ``diagnostics``, ``reporting`` (results files), ``cli``; Avalanche adapters in
``replay_lcmat.strategies`` and the paper protocols in ``replay_lcmat.benchmarks``.

``replay_lcmat.strategies`` and ``replay_lcmat.benchmarks`` live in the checkout's top-level
``strategies/`` and ``benchmarks/`` folders; the install maps them to these names
(``package-dir`` in pyproject.toml), so they import only from an installed copy (``pip install
-e .`` for a checkout). Importing this package imports nothing else.
"""

__version__ = "0.1.0"
