"""The two sizings of an Avalanche memory: ``per_class`` exemplars of every class seen (a
memory that grows) or a fixed total ``mem_size`` split evenly over the classes seen."""

from __future__ import annotations

from replay_lcmat.memory import check_per_class
from replay_lcmat.validation import check_number


def check_sizing(per_class, mem_size) -> tuple[int | None, int | None]:
    """``(per_class, mem_size)`` checked: exactly one of the two sizings of a memory is given,
    an int >= 1."""
    if (per_class is None) == (mem_size is None):
        given = "both" if per_class is not None else "neither"
        raise ValueError(
            f"give per_class= or mem_size=, not {given}: per_class=k keeps k exemplars of every "
            "class seen (the memory grows with the classes); mem_size=N keeps a fixed total N "
            "split evenly over the classes seen (Avalanche's sizing; each class shrinks to the "
            "prefix of its ranking as new classes arrive)."
        )
    if per_class is not None:
        return check_per_class(per_class), None
    return None, int(check_number("memory", "mem_size", mem_size, integer=True, minimum=1))


def split_total(total: int, groups: int) -> list[int]:
    """A fixed total split evenly over ``groups`` groups in the order they were first seen: each
    gets ``total // groups`` and the first ``total % groups`` one more. A group's share never
    grows as groups are added, so shrinking to a prefix is all a new class ever asks."""
    share, extra = divmod(total, groups)
    return [share + (i < extra) for i in range(groups)]
