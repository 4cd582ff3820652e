"""Coreset selection: LCMat-S and the baselines behind one API.

outputs = extract_outputs(model, train_data, device="cuda")
idx = lcmat_s(outputs.features, outputs.logits, outputs.labels, per_class=50)
result = make_selector("craig").select(features=..., logits=..., labels=..., fraction=0.01)
result.indices, result.weights
"""

from replay_lcmat.selection.base import SelectionResult, Selector, class_budgets
from replay_lcmat.selection.distances import lcmat_dissimilarity
from replay_lcmat.selection.extract import ModelOutputs, extract_outputs
from replay_lcmat.selection.facility import (
    AdaCore,
    Craig,
    FacilityLocationSelector,
    LCMatS,
    lcmat_s,
)
from replay_lcmat.selection.registry import SELECTORS, available_selectors, make_selector

__all__ = [
    "SELECTORS",
    "AdaCore",
    "Craig",
    "FacilityLocationSelector",
    "LCMatS",
    "ModelOutputs",
    "SelectionResult",
    "Selector",
    "available_selectors",
    "class_budgets",
    "extract_outputs",
    "lcmat_dissimilarity",
    "lcmat_s",
    "make_selector",
]
