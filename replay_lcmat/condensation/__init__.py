"""Dataset condensation: LCMat-C and the DC, DSA and DM baselines.

Example::

    from replay_lcmat.condensation import make_condenser

    condenser = make_condenser("lcmat-c", ipc=10, iterations=1000, device="cuda", seed=0)
    syn_images, syn_labels = condenser.condense(images, labels)  # normalised [n,C,H,W], int64
"""

from replay_lcmat.condensation.base import Condenser
from replay_lcmat.condensation.distribution_matching import DistributionMatchingCondenser
from replay_lcmat.condensation.dsa import DSA, DSAParams
from replay_lcmat.condensation.gradient_matching import GradientMatchingCondenser, default_loops
from replay_lcmat.condensation.objectives import (
    gradient_variance_gap,
    head_variance_gap,
    layerwise_distance,
    mean_embedding_loss,
)
from replay_lcmat.condensation.registry import (
    available_condensers,
    condenser_options,
    make_condenser,
)
from replay_lcmat.condensation.storage import SyntheticSet, load_synthetic

__all__ = [
    "DSA",
    "Condenser",
    "DSAParams",
    "DistributionMatchingCondenser",
    "GradientMatchingCondenser",
    "SyntheticSet",
    "available_condensers",
    "condenser_options",
    "default_loops",
    "gradient_variance_gap",
    "head_variance_gap",
    "layerwise_distance",
    "load_synthetic",
    "make_condenser",
    "mean_embedding_loss",
]
