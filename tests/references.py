"""Independent references for every registered selector and condenser, keyed by name: the
table is filled by ``references_selection.py`` and ``references_condensation.py``.

``REFERENCES[name]`` is a :class:`Reference`: ``run_method()`` runs the library on a tiny
problem, ``run_reference(got)`` computes the same answer independently (brute-force loops,
autograd in float64, formulas restated from the papers) and
``compare(got, expected)`` asserts they agree: exact equality for selections, a float64
tolerance for condensation updates and losses. ``tests/test_references.py`` runs every
registered name through this table, so a new method without a reference fails there.

A reference may read the random draws the method made (the initial network, the shared
augmentation parameters, the first center of k-center), never its results. ``wrong`` holds
deliberately broken references (a flipped sign, a missing term) that must NOT match: proof
that the comparison can fail.

The registries and the two verbs (select, condense) are called only from
``reference_core.registered_*``, ``references_selection.run_selector`` and
``references_condensation.run_condenser``; the condensation references also use the
condensers' documented options (a network factory, ``augment=`` a DSA instance,
``outer_loop``, ``inner_loop``, ``lr_net``...).
"""

from __future__ import annotations

import references_condensation  # noqa: F401 (fills REFERENCES)
from reference_core import REFERENCES, Reference, registered_condensers, registered_selectors
from references_selection import (
    facility_location_picks,
    preconditioned_distances,
    reference_lcmat,
)

__all__ = [
    "REFERENCES",
    "Reference",
    "facility_location_picks",
    "preconditioned_distances",
    "reference_lcmat",
    "registered_condensers",
    "registered_selectors",
]
