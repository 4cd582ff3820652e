"""Choosing a policy's option on held-out data of the experience, never on test data.

``eps="auto"`` for LCMat-S: the experience's samples of every class are split into a fitting
part and a held-out part (``holdout`` of each class, seeded); for each candidate option set the
memory of the new classes is selected from the fitting part, a fresh model is trained on it
(the protocol's retraining) and scored on the held-out part; the best candidate (ties: the first)
then selects from all the experience's data. Cost: one selection and one retraining per
candidate and budget, on the experience's classes only.

    chosen, scores = choose_on_holdout("lcmat-s", images, labels, outputs=outputs,
                                       candidates=[{"eps": e} for e in AUTO_EPS], ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from replay_lcmat.data import holdout_split
from replay_lcmat.memory.policies import memory_policy
from replay_lcmat.memory.protocol import ExperienceSeeds, retrain_on_memory
from replay_lcmat.seeding import derive_seed
from replay_lcmat.training import TrainConfig, evaluate

AUTO_EPS = (0.01, 0.05, 0.1, 0.5)
"""The paper's grid for eps (Sec. 4.1), the candidates of ``eps="auto"``."""

HOLDOUT_KEY = 5  # derive_seed key of the held-out split (ExperienceSeeds uses 1, 3 and 4)


def choose_on_holdout(
    policy: str,
    images: Tensor,
    labels: Tensor,
    *,
    outputs,
    per_class: int,
    candidates: Sequence[dict[str, Any]],
    template: nn.Module,
    retrain: TrainConfig,
    seeds: ExperienceSeeds,
    holdout: float = 0.2,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], list[float]]:
    """The candidate option set whose memory, retrained on, scores best on held-out data.

    Args:
        policy: a selection policy name (e.g. ``"lcmat-s"``).
        images: float normalised ``[n, C, H, W]`` of the experience; labels: int64 ``[n]``.
        outputs: the selection model's :class:`~replay_lcmat.selection.ModelOutputs` on them.
        per_class: exemplars per class.
        candidates: option sets to compare (e.g. ``[{"eps": 0.01}, {"eps": 0.1}]``).
        template: the network retrained from scratch (as the protocol's); retrain: how.
        seeds: the experience's seeds (the split uses ``derive_seed(seed, experience, 5)``).
        holdout: share of every class held out.

    Returns:
        ``(best options, held-out accuracy of every candidate)``.
    """
    if not candidates:
        raise ValueError("no candidates to choose from; pass at least one option set.")
    fit, held = holdout_split(
        labels, holdout, derive_seed(seeds.seed, seeds.experience, HOLDOUT_KEY)
    )
    dev = images.device
    fit_x, fit_y = images[fit.to(dev)], labels[fit]
    held_x, held_y = images[held.to(dev)], labels[held]
    part = type(outputs)(outputs.features[fit], outputs.logits[fit], outputs.labels[fit])
    room = int(torch.unique(fit_y, return_counts=True)[1].min())
    scores = []
    for options in candidates:
        memory = memory_policy(policy).build(
            fit_x,
            fit_y,
            per_class=min(per_class, room),
            outputs=part,
            seed=seeds.seed,
            options=options,
            device=device,
        )
        mem_x, mem_y = memory.tensors()
        model = retrain_on_memory(
            template, mem_x, mem_y, retrain=retrain, seeds=seeds, device=device
        )
        scores.append(evaluate(model, held_x, held_y, device=device))
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return dict(candidates[best]), scores
