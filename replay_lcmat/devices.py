"""The default compute device of every ``--device`` option (command line and benchmarks)."""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``.

    Library functions take an explicit ``device`` argument (default ``"cpu"``); this is only
    the default that command lines offer.
    """
    return "cuda" if torch.cuda.is_available() else "cpu"
