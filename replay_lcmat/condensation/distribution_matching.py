"""Distribution matching (DM; Zhao & Bilen, 2023): match mean embeddings per class.

Each iteration draws a fresh, randomly initialised and frozen network; per class, the loss is
``||mean embed(real) − mean embed(syn)||²`` on its penultimate features (same DSA transform on
both sides); the images take one SGD step on the sum over classes. No bi-level loop.

Under ``torch.distributed`` every rank draws the same network and random batches, computes the
loss of its share of the classes, and the gradients are summed (:mod:`replay_lcmat.distributed`),
so every rank holds the single-process synthetic set.
"""

from __future__ import annotations

from collections.abc import Container

import torch
from torch import Tensor

from replay_lcmat import collectives, distributed
from replay_lcmat.condensation.base import CONDENSERS, Condenser
from replay_lcmat.condensation.objectives import mean_embedding_loss
from replay_lcmat.condensation.task import Task


@CONDENSERS.register(
    "dm",
    paper="Zhao & Bilen 2023, Dataset Condensation with Distribution Matching",
    summary="Matching of mean embeddings under randomly initialised networks",
    defaults={"iterations": 20000, "augment": True, "init": "real", "lr_img": 1.0},
)
class DistributionMatchingCondenser(Condenser):
    """DM; all options are :class:`Condenser`'s."""

    def _step(self, syn: Tensor, optimizer: torch.optim.Optimizer, task: Task) -> float:
        net, features, _ = task.new_network()
        net.train()
        net.requires_grad_(False)
        # under torch.distributed each rank matches its share of the classes (same network,
        # same random draws); the summed gradient gives every rank the same step
        mine = set(distributed.shard(range(task.num_classes)))
        with distributed.phase(f"{self.method} distribution matching"):
            loss = self.matching_loss(syn, task, features, classes=mine)
            optimizer.zero_grad()
            if loss.requires_grad:  # False on a rank without classes
                loss.backward()
        total = collectives.sum_gradient_(syn, loss)
        optimizer.step()
        return total

    def matching_loss(
        self,
        syn: Tensor,
        task: Task,
        features: torch.nn.Module,
        classes: Container[int] | None = None,
    ) -> Tensor:
        """Sum over classes (or those positions in ``classes``) of the mean-embedding gap;
        differentiable in ``syn``. Real batches are embedded in chunks on the CPU
        (:meth:`Condenser.chunk_size`; the same embeddings)."""
        loss = syn.new_zeros(())
        chunk = self.chunk_size(features, syn.device)
        for _, real, fake in self.class_batches(syn, task, classes):
            with torch.no_grad():
                real_embedding = torch.cat(
                    [features(part) for part in real.split(chunk or len(real))]
                )
            loss = loss + mean_embedding_loss(real_embedding, features(fake))
        return loss
