"""Coreset selection: LCMat-S and the baselines behind one API.

outputs = extract_outputs(model, train_data, device="cuda")
idx = lcmat_s(outputs.features, outputs.logits, outputs.labels, per_class=50)
result = make_selector("craig").select(features=..., logits=..., labels=..., fraction=0.01)
result.indices, result.weights
saved = load_selection("lcmat.json"); subset = selection_subset(saved, ImageFolder(".../train"))
"""

from replay_lcmat.selection.base import SelectionResult, Selector, class_budgets
from replay_lcmat.selection.distances import lcmat_dissimilarity
from replay_lcmat.selection.extract import (
    ModelOutputs,
    SelectionModelConfig,
    extract_outputs,
)
from replay_lcmat.selection.facility import FacilityLocationSelector
from replay_lcmat.selection.facility_selectors import AdaCore, Craig, LCMatS, lcmat_s
from replay_lcmat.selection.record import Selection, load_selection, selection_subset
from replay_lcmat.selection.registry import SELECTORS, available_selectors, make_selector
from replay_lcmat.selection.report import curvature_share, selection_report

__all__ = [
    "SELECTORS",
    "SelectionModelConfig",
    "AdaCore",
    "Craig",
    "FacilityLocationSelector",
    "LCMatS",
    "ModelOutputs",
    "Selection",
    "SelectionResult",
    "Selector",
    "available_selectors",
    "class_budgets",
    "curvature_share",
    "extract_outputs",
    "lcmat_dissimilarity",
    "lcmat_s",
    "load_selection",
    "make_selector",
    "selection_report",
    "selection_subset",
]
