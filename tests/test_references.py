"""Every registered selector and condenser against its independent reference (tests/references.py).

A method registered without an entry in ``REFERENCES`` fails here, by name.
"""

from __future__ import annotations

import pytest
from references import REFERENCES, registered_condensers, registered_selectors

REGISTERED = [("selector", name) for name in registered_selectors()] + [
    ("condenser", name) for name in registered_condensers()
]
WRONG = [(name, label) for name, ref in REFERENCES.items() for label in ref.wrong]


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


@pytest.mark.parametrize("kind,name", REGISTERED, ids=[f"{k}:{n}" for k, n in REGISTERED])
def test_registered_method_matches_its_reference(kind, name):
    reference = REFERENCES.get(name)
    assert reference is not None, (
        f"registered {kind} {name!r} has no independent reference; add REFERENCES[{name!r}] = "
        "Reference(...) in tests/references_selection.py or references_condensation.py (brute "
        "force, autograd or a ported formula)."
    )
    got = reference.run_method()
    try:
        reference.compare(got, reference.run_reference(got))
    except AssertionError as err:
        raise AssertionError(
            f"{name} differs from its reference ({reference.what}): {err}"
        ) from None


def test_every_reference_belongs_to_a_registered_method():
    names = [name for _, name in REGISTERED]
    assert len(set(names)) == len(names), "a selector and a condenser share a name"
    assert sorted(set(REFERENCES) - set(names)) == []


@pytest.mark.parametrize("name,label", WRONG, ids=[f"{n}:{w}" for n, w in WRONG])
def test_a_deliberately_wrong_reference_does_not_match(name, label):
    reference = REFERENCES[name]
    got = reference.run_method()
    with pytest.raises(AssertionError):
        reference.compare(got, reference.wrong[label](got))
