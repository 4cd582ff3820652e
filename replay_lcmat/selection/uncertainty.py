"""Uncertainty selectors: the most uncertain samples of each class first."""

from __future__ import annotations

import torch
from torch import Tensor

from replay_lcmat.selection.base import ClassInputs, Selector, registered


def uncertainty_scores(logits: Tensor, kind: str) -> Tensor:
    """Per-sample uncertainty ``[n]`` from logits ``[n, c]``; larger = more uncertain.

    ``"least-confidence"``: ``1 - max p``; ``"entropy"``: ``-sum p log p``;
    ``"margin"``: ``-(p_top1 - p_top2)``.
    """
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    if kind == "least-confidence":
        return 1 - p.max(1).values
    if kind == "entropy":
        return -(p * logp).sum(1)
    if kind == "margin":
        if p.shape[1] < 2:
            raise ValueError("margin needs at least 2 classes in the logits.")
        top2 = p.topk(2, dim=1).values
        return top2[:, 1] - top2[:, 0]
    raise ValueError(f"unknown uncertainty {kind!r}; choose least-confidence, entropy or margin.")


class _Uncertainty(Selector):
    needs = ("logits",)

    def select_class(self, inputs: ClassInputs, budget: int) -> tuple[Tensor, None]:
        scores = uncertainty_scores(inputs.logits, self.name)
        order = torch.sort(scores, descending=True, stable=True).indices  # ties: lowest index
        return order[:budget], None


@registered
class LeastConfidence(_Uncertainty):
    """Least confidence: lowest top-class probability first."""

    name = "least-confidence"
    paper = "Coleman et al. 2020, Selection via Proxy: Efficient Data Selection for Deep Learning"


@registered
class Entropy(_Uncertainty):
    """Entropy: highest predictive entropy first."""

    name = "entropy"
    paper = "Coleman et al. 2020, Selection via Proxy: Efficient Data Selection for Deep Learning"


@registered
class Margin(_Uncertainty):
    """Margin: smallest gap between the two most probable classes first."""

    name = "margin"
    paper = "Coleman et al. 2020, Selection via Proxy: Efficient Data Selection for Deep Learning"
