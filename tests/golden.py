"""Golden selections on scikit-learn's digits: the picks of every registered selector, frozen.

The inputs need no model and no random draw, so they are the same on every machine: the
training split of :func:`replay_lcmat.data.load_digits` as float64 features (grey levels in
[0, 1], ``[n, 64]``) and, as logits, minus the squared distance of each image to each class
mean divided by 10 (``[n, 10]``, a nearest-class-mean classifier). Every selector picks
:data:`PER_CLASS` per class with :data:`SEED`; ``tests/test_golden.py`` compares the picks
exactly (and the weights to float rounding) with ``tests/golden_selections.json``.

A change of any selector's picks then fails that test. When the change is meant, regenerate
the file on purpose and say so in the commit message::

    .venv/bin/python tests/golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from replay_lcmat.data import load_digits
from replay_lcmat.selection import SELECTORS, make_selector

GOLDEN_FILE = Path(__file__).with_name("golden_selections.json")
PER_CLASS = 5
SEED = 0
# Options beyond the defaults worth freezing: the seeded path of the facility-location greedy.
VARIANTS: dict[str, tuple[str, dict]] = {
    "lcmat-s[greedy=stochastic]": ("lcmat-s", {"greedy": "stochastic"})
}


def golden_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [n, 64], logits [n, 10], labels [n])`` of the digits training split, float64."""
    train, _ = load_digits()
    features = train.images.flatten(1).double() / 255.0
    labels = train.labels.long()
    means = torch.stack([features[labels == c].mean(0) for c in range(10)])
    logits = -torch.cdist(features, means).square() / 10.0
    return features, logits, labels


def golden_cases() -> dict[str, tuple[str, dict]]:
    """``{case: (selector name, options)}``: every registered selector with its defaults, then
    :data:`VARIANTS`. Seeded selectors get ``seed=SEED``."""
    cases = {name: (name, {}) for name in SELECTORS}
    cases.update(VARIANTS)
    return {
        case: (
            name,
            {**options, "seed": SEED} if SELECTORS.entry(name).accepts("seed") else options,
        )
        for case, (name, options) in cases.items()
    }


def golden_selection(name: str, options: dict) -> dict:
    """``{"indices": [...], "weights": [...] or None}`` of one selector on :func:`golden_inputs`."""
    features, logits, labels = golden_inputs()
    result = make_selector(name, **options).select(
        features=features, logits=logits, labels=labels, per_class=PER_CLASS
    )
    weights = None if result.weights is None else result.weights.double().tolist()
    return {"indices": result.indices.tolist(), "weights": weights}


def write_golden(path: Path = GOLDEN_FILE) -> None:
    torch.set_num_threads(1)
    record = {
        "per_class": PER_CLASS,
        "seed": SEED,
        "selections": {
            case: {"method": name, "options": options, **golden_selection(name, options)}
            for case, (name, options) in golden_cases().items()
        },
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {len(record['selections'])} golden selections to {path}")


if __name__ == "__main__":
    write_golden()
