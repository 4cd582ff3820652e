"""Reading files safely, and the error every unreadable data file raises.

:class:`CorruptDataError` is raised by the data loaders (a damaged archive, image or CIFAR
batch) and by :func:`read_torch_file` (a damaged checkpoint, synthetic set or class memory).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch


class CorruptDataError(ValueError):
    """A data file exists but cannot be read: truncated, damaged, or not the format its name says.

    The message names the file (and the member inside an archive) and what to do about it.
    """


def read_torch_file(path: Path, what: str, written_by: str) -> Any:
    """``torch.load(path, weights_only=True)`` of a replay-lcmat file on the CPU.

    Raises:
        CorruptDataError: torch cannot read the file (zero bytes, truncated, garbage, a pickle
            of other objects); the message names the file, says it is corrupt or not a
            replay-lcmat ``what``, and which command writes one (``written_by``). The file is
            never unpickled unsafely.
    """
    try:
        with warnings.catch_warnings():
            # torch warns about the protocol of foreign pickles before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as err:
        # not chained: torch's message advises weights_only=False, unsafe for untrusted files
        raise CorruptDataError(
            f"{path} is corrupt or not a replay-lcmat {what} (torch.load failed with "
            f"{type(err).__name__}: the file is empty, truncated, damaged or of another kind); "
            f"write it again with {written_by}, or pass the right file."
        ) from None
