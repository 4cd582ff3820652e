"""Dataset condensation: LCMat-C and the DC, DSA and DM baselines.

Example::

    from replay_lcmat.condensation import make_condenser

    condenser = make_condenser("lcmat-c", iterations=1000, device="cuda", seed=0)
    result = condenser.condense(images, labels, per_class=10)  # normalised [n,C,H,W], int64
    result.images, result.labels, result.losses; result.synthetic.save("syn.pt")
"""

from replay_lcmat.condensation.base import CONDENSERS, CondensationResult, Condenser
from replay_lcmat.condensation.distribution_matching import DistributionMatchingCondenser
from replay_lcmat.condensation.gradient_matching import GradientMatchingCondenser, default_loops
from replay_lcmat.condensation.objectives import (
    gradient_variance_gap,
    head_variance_gap,
    layerwise_distance,
    mean_embedding_loss,
)
from replay_lcmat.condensation.registry import available_condensers, make_condenser
from replay_lcmat.condensation.storage import SyntheticSet, load_synthetic
from replay_lcmat.data.dsa import DSA, DSAParams

__all__ = [
    "CONDENSERS",
    "DSA",
    "CondensationResult",
    "Condenser",
    "DSAParams",
    "DistributionMatchingCondenser",
    "GradientMatchingCondenser",
    "SyntheticSet",
    "available_condensers",
    "default_loops",
    "gradient_variance_gap",
    "head_variance_gap",
    "layerwise_distance",
    "load_synthetic",
    "make_condenser",
    "mean_embedding_loss",
]
