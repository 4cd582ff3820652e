"""Distribution matching (DM; Zhao & Bilen, 2023): match mean embeddings per class.

Each iteration draws a fresh, randomly initialised and frozen network; per class, the loss is
``||mean embed(real) − mean embed(syn)||²`` on its penultimate features (same DSA transform on
both sides); the images take one SGD step on the sum over classes. No bi-level loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from replay_lcmat.condensation.base import Condenser, Task
from replay_lcmat.condensation.objectives import mean_embedding_loss


class DistributionMatchingCondenser(Condenser):
    """DM; all options are :class:`Condenser`'s."""

    def _step(self, syn: Tensor, optimizer: torch.optim.Optimizer, task: Task) -> float:
        net, features, _ = task.new_network()
        net.train()
        net.requires_grad_(False)
        loss = self.matching_loss(syn, task, features)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def matching_loss(self, syn: Tensor, task: Task, features: torch.nn.Module) -> Tensor:
        """Sum over classes of the mean-embedding gap; differentiable in ``syn``."""
        loss = syn.new_zeros(())
        for _, real, fake in self.class_batches(syn, task):
            with torch.no_grad():
                real_embedding = features(real)
            loss = loss + mean_embedding_loss(real_embedding, features(fake))
        return loss
