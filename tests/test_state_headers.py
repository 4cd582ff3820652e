"""Every saved replay-lcmat state (class memory, both buffers, run checkpoint) is refused when
its format or version header is wrong, with a message that says what writes a good one."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("avalanche")

from replay_lcmat.files import CorruptDataError  # noqa: E402
from replay_lcmat.memory import ClassMemory  # noqa: E402
from replay_lcmat.strategies import CondensedClassBuffer, SelectionBuffer, load_run  # noqa: E402


def _restore(kind: str, state: dict, tmp_path) -> None:
    if kind == "class memory":
        ClassMemory.from_state_dict(state)
    elif kind == "selection-buffer":
        SelectionBuffer(2).load_state_dict(state, stream=[])
    elif kind == "condensed-buffer":
        CondensedClassBuffer(2).load_state_dict(state)
    else:  # the header is read before the strategy is looked at
        torch.save(state, tmp_path / "run.pt")
        load_run(tmp_path / "run.pt", strategy=None, stream=[])


READERS = {  # kind -> (format, version, what writes it)
    "class memory": ("replay-lcmat/class-memory", 1, "ClassMemory.state_dict()"),
    "selection-buffer": ("replay-lcmat/selection-buffer", 3, "SelectionBuffer.state_dict()"),
    "condensed-buffer": ("replay-lcmat/condensed-buffer", 1, "CondensedClassBuffer.state_dict()"),
    "run checkpoint": ("replay-lcmat/avalanche-run", 1, "save_run()"),
}


@pytest.mark.parametrize("kind", READERS)
def test_a_state_of_another_kind_is_refused_with_what_writes_one(kind, tmp_path):
    _, _, writer = READERS[kind]
    for state in ({"format": "replay-lcmat/something-else", "version": 1}, {"version": 1}, [1]):
        if kind == "run checkpoint" and not isinstance(state, dict):
            continue  # a file holds a dict or is refused by torch.load's safe mode already
        with pytest.raises(ValueError, match=rf"not a replay-lcmat {kind}; it comes from") as err:
            _restore(kind, state, tmp_path)
        assert writer in str(err.value)
    if kind == "run checkpoint":
        assert str(tmp_path / "run.pt") in str(err.value)  # a file's error names the file


@pytest.mark.parametrize("kind", READERS)
def test_a_state_of_another_version_is_refused(kind, tmp_path):
    fmt, version, writer = READERS[kind]
    with pytest.raises(ValueError, match=rf"{kind} version 99; this replay-lcmat reads version "):
        _restore(kind, {"format": fmt, "version": 99}, tmp_path)
    with pytest.raises(ValueError, match=rf"reads version {version} only: write it again"):
        _restore(kind, {"format": fmt, "version": 99}, tmp_path)


def test_a_memory_file_with_a_wrong_header_is_a_corrupt_file(tmp_path):
    path = tmp_path / "memory.pt"
    torch.save({"format": "replay-lcmat/class-memory", "version": 99}, path)
    with pytest.raises(CorruptDataError, match=rf"{path}: class memory version 99"):
        ClassMemory.load(path)
