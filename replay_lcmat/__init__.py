"""replay-lcmat: Loss-Curvature Matching (LCMat) for coreset selection, dataset condensation
and replay memories in continual learning.

Modules: ``data``, ``models``, ``training``, ``curvature``, ``submodular``, ``selection``,
``condensation``, ``buffers`` (replay memory), ``continual`` (the memory-only protocol),
``reporting``, ``cli``; Avalanche adapters in ``replay_lcmat.strategies`` and the paper
protocols in ``replay_lcmat.benchmarks``.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# pyproject.toml installs the checkout's strategies/ and benchmarks/ folders as
# replay_lcmat.strategies and replay_lcmat.benchmarks. When this package is imported from a
# source checkout (e.g. Python started in the repository root, shadowing an installed copy),
# resolve those two names the same way.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (
    _checkout / "strategies" / "__init__.py"
).is_file():
    __path__.append(str(_checkout))  # noqa: F821 (__path__ is defined for packages)
