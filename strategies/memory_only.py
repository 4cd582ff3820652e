"""The paper's protocol in Avalanche: after each experience, train a fresh model on memory only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avalanche.models import MultiTaskModule
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.storage_policy import ExemplarsBuffer

from replay_lcmat.memory import ExperienceSeeds, retrain_on_memory
from replay_lcmat.models import reinitialize
from replay_lcmat.strategies.datasets import dataset_tensors
from replay_lcmat.strategies.plugins import MemoryStateMixin, make_storage_policy
from replay_lcmat.training import PROTOCOL_RETRAIN, TrainConfig


class MemoryOnlyRetrainPlugin(MemoryStateMixin, SupervisedPlugin):
    """GDumb-like memory-only protocol of the LCMat paper's continual experiment (Fig. 5).

    For experience ``k``:

    1. ``before_training_exp`` (when ``reset_model``): the strategy's model is re-initialised
       (seed ``ExperienceSeeds(seed, k).selection_model``) and its optimizer state cleared, so
       the strategy then trains a *selection model* on experience ``k``'s data only.
    2. ``after_training_exp``: the storage policy adds exemplars of the new classes (selected
       with that model, or condensed), then
       :func:`replay_lcmat.memory.retrain_on_memory` trains a fresh copy of the model on the
       whole memory only with ``retrain``, and its weights are copied into the strategy's
       model, which Avalanche's evaluation then measures. This is the same core as
       :func:`replay_lcmat.continual.memory_only_run`.

    With a policy that needs no model (uniform, condensation) train with ``train_epochs=0``.

    Single-head models only: the retraining (:class:`replay_lcmat.continual.TrainConfig`) calls
    ``model(x)``, so a multi-task model (Avalanche ``MultiTaskModule``) is refused when training
    starts; use :class:`LCMatReplayPlugin` for those.

    Args:
        per_class: exemplars per class.
        policy: memory policy name (see :func:`make_storage_policy`), ignored when
            ``storage_policy`` is given.
        options, stats: the policy's own options and (selection) the statistics the model is
            read with; see :func:`make_storage_policy`.
        storage_policy: a ready storage policy (any Avalanche ``ExemplarsBuffer``, e.g. one of
            :func:`make_storage_policy` with a ``device`` or ``layer_name``).
        retrain: how the fresh model is trained on memory (default: the protocol's
            1000 epochs, lr 0.01, step schedule, DSA).
        reset_model: re-initialise the selection model before each experience.
        seed: base seed of the re-initialisations, the retraining and the policy.
        progress: progress bars of the condensation and the retraining (``None``: the
            condensation's only).
    """

    def __init__(
        self,
        per_class: int = 10,
        policy: str = "lcmat-s",
        *,
        options: Mapping[str, Any] | None = None,
        stats: str | None = None,
        storage_policy: ExemplarsBuffer | None = None,
        retrain: TrainConfig = PROTOCOL_RETRAIN,
        reset_model: bool = True,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(retrain, TrainConfig):
            raise ValueError(
                f"retrain must be a replay_lcmat.continual.TrainConfig; got {type(retrain).__name__}."
            )
        if storage_policy is None:
            storage_policy = make_storage_policy(
                policy, per_class, options=options, seed=seed, progress=progress, stats=stats
            )
        elif options or stats is not None:
            raise ValueError(
                "options and stats apply when the plugin builds the storage policy; configure "
                "the storage_policy given instead."
            )
        self.storage_policy = storage_policy
        self.policy = policy
        self.retrain = retrain
        self.reset_model = reset_model
        self.seed = seed
        self.progress = bool(progress)
        self.retrained_experiences: list[int] = []

    def before_training(self, strategy, **kwargs) -> None:
        if isinstance(strategy.model, MultiTaskModule):
            raise ValueError(
                f"MemoryOnlyRetrainPlugin retrains {type(strategy.model).__name__} on the memory "
                "with model(x), but it is a multi-task model (forward(x, task_labels)). Use "
                "LCMatReplayPlugin, which replays the memory through Avalanche's own loop with "
                "the task labels, or a single-head model."
            )

    def before_training_exp(self, strategy, **kwargs) -> None:
        if not self.reset_model:
            return
        k = strategy.experience.current_experience
        fresh = reinitialize(strategy.model, ExperienceSeeds(self.seed, k).selection_model)
        strategy.model.load_state_dict(fresh.state_dict())
        strategy.optimizer.state.clear()  # no momentum carried over from the old weights

    def after_training_exp(self, strategy, **kwargs) -> None:
        k = strategy.experience.current_experience
        self.storage_policy.post_adapt(strategy, strategy.experience)
        x, y, _ = dataset_tensors(self.storage_policy.buffer)
        model = retrain_on_memory(
            strategy.model,
            x,
            y,
            retrain=self.retrain,
            seeds=ExperienceSeeds(self.seed, k),
            device=strategy.device,
            progress=self.progress,
        )
        strategy.model.load_state_dict(model.state_dict())
        self.retrained_experiences.append(k)
