"""Golden selections on digits (tests/golden.py): every registered selector's picks, exactly.

Regenerate ``tests/golden_selections.json`` only on purpose: ``.venv/bin/python tests/golden.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from golden import GOLDEN_FILE, PER_CLASS, SEED, golden_cases, golden_selection

GOLDEN = json.loads(GOLDEN_FILE.read_text())
CASES = golden_cases()


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


def test_golden_file_covers_every_registered_selector_with_its_settings():
    assert (GOLDEN["per_class"], GOLDEN["seed"]) == (PER_CLASS, SEED)
    assert sorted(GOLDEN["selections"]) == sorted(CASES), (
        "a selector was added or removed: regenerate with .venv/bin/python tests/golden.py"
    )
    for case, (name, options) in CASES.items():
        assert GOLDEN["selections"][case]["method"] == name
        assert GOLDEN["selections"][case]["options"] == options


@pytest.mark.parametrize("case", list(CASES))
def test_picks_equal_the_golden_ones(case):
    name, options = CASES[case]
    expected = GOLDEN["selections"][case]
    got = golden_selection(name, options)
    assert got["indices"] == expected["indices"], f"{case}: picks changed"
    if expected["weights"] is None:
        assert got["weights"] is None
    else:
        assert got["weights"] is not None
        assert torch.allclose(
            torch.tensor(got["weights"]), torch.tensor(expected["weights"]), rtol=1e-9, atol=0
        ), f"{case}: weights changed"
