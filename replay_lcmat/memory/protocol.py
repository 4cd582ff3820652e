"""The core of the memory-only protocol (LCMat paper, Fig. 5), shared by
:func:`replay_lcmat.continual.memory_only_run` and the Avalanche
``replay_lcmat.strategies.MemoryOnlyRetrainPlugin``: the seeds of an experience, the
retraining of a fresh model on memory only, and the row a run reports per experience."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from replay_lcmat.models import reinitialize
from replay_lcmat.seeding import derive_seed
from replay_lcmat.training import TrainConfig


@dataclass(frozen=True)
class ExperienceSeeds:
    """The seeds of experience ``experience`` (0-based) of a run with base seed ``seed``.

    Each is ``derive_seed(seed, experience, <key>[, evaluation])`` with a fixed key per use, so
    runs of the same seed agree whatever policies they compare.
    """

    seed: int
    experience: int

    @property
    def selection_model(self) -> int:
        """Initialisation and training of the model that ranks experience ``k``'s data."""
        return derive_seed(self.seed, self.experience, 1)

    def retrain_init(self, evaluation: int = 0) -> int:
        """Initialisation of the fresh model of evaluation ``evaluation``."""
        return derive_seed(self.seed, self.experience, 3, evaluation)

    def retrain_order(self, evaluation: int = 0) -> int:
        """Shuffling and augmentation while that model trains on memory."""
        return derive_seed(self.seed, self.experience, 4, evaluation)


def retrain_on_memory(
    template: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    retrain: TrainConfig,
    seeds: ExperienceSeeds,
    evaluation: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    weights: Tensor | None = None,
) -> nn.Module:
    """A fresh copy of ``template`` (seed ``seeds.retrain_init(evaluation)``) trained on the
    memory only: ``images [M, C, H, W]`` (normalised), ``labels int64 [M]``, visited sorted by
    class (stable) so the result does not depend on how the memory was stored.

    ``weights``: optional per-exemplar loss weights ``[M]``
    (:meth:`replay_lcmat.memory.ClassMemory.sample_weights`)."""
    order = torch.sort(labels.cpu(), stable=True).indices
    model = reinitialize(template, seeds.retrain_init(evaluation))
    retrain.fit(
        model,
        images[order.to(images.device)],
        labels[order.to(labels.device)],
        device=device,
        seed=seeds.retrain_order(evaluation),
        progress=progress,
        weights=None if weights is None else weights[order.to(weights.device)],
    )
    return model


@dataclass(frozen=True)
class ResultRow:
    """The result of one policy and budget after one experience.

    Attributes:
        seed, policy, per_class: the run.
        experience: 1-based; classes_seen: classes of experiences ``1..experience``.
        memory_size: exemplars in memory after the experience.
        accuracy: test accuracy in ``[0, 1]`` on all classes seen.
        val_accuracy: accuracy on validation images of the classes seen (training images
            outside the run's training set) when measured, else ``None`` (left out of
            :meth:`as_dict`).
        forgetting: Avalanche's stream forgetting when measured, else ``None`` (left out of
            :meth:`as_dict`).
    """

    seed: int
    policy: str
    per_class: int
    experience: int
    classes_seen: int
    memory_size: int
    accuracy: float
    forgetting: float | None = None
    val_accuracy: float | None = None

    def as_dict(self) -> dict:
        row = asdict(self)
        for key in ("forgetting", "val_accuracy"):
            if row[key] is None:
                del row[key]
        return row

    def log_line(self, detail: str = "") -> str:
        return (
            f"seed {self.seed} experience {self.experience} {self.policy} ({detail}m="
            f"{self.per_class}/class, memory {self.memory_size}): accuracy "
            f"{100 * self.accuracy:.2f}%"
        )
