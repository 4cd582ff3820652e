"""The memory-only continual-learning protocol of the LCMat paper (Fig. 5), without
Avalanche: after each experience the memory of its classes is built by a policy
(:func:`replay_lcmat.memory.build_memory`), then a fresh model is trained on the whole memory
only and tested on all classes seen so far.

    rows = memory_only_run(train, test, policies=["lcmat-s", "uniform"], per_class=10, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from replay_lcmat.data import ImageData, class_order, select_classes, task_classes
from replay_lcmat.memory import (
    ClassMemory,
    ExperienceSeeds,
    ResultRow,
    check_per_class,
    retrain_on_memory,
)
from replay_lcmat.memory.holdout import AUTO_EPS, choose_on_holdout
from replay_lcmat.models import make_model
from replay_lcmat.selection import SelectionModelConfig, extract_outputs
from replay_lcmat.specs import memory_spec
from replay_lcmat.training import (
    PROTOCOL_RETRAIN,
    TrainConfig,
    evaluate,
    pretrain_selection_model,
)


def memory_only_run(
    train_data: ImageData,
    test_data: ImageData,
    *,
    policies: Sequence[str],
    per_class: int | Sequence[int],
    model: str = "convnet",
    model_options: dict | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    shuffle_classes: bool = True,
    selection_model: SelectionModelConfig | None = None,
    retrain: TrainConfig = PROTOCOL_RETRAIN,
    evaluations: int = 1,
    iterations: int | dict[str, int] | None = None,
    policy_options: dict[str, dict] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    memories_out: dict | None = None,
    val_data: ImageData | None = None,
) -> list[dict]:
    """The memory-replay protocol of the LCMat paper (Fig. 5), one seed.

    Classes are ordered by ``class_order(C, seed)`` and split into ``n_experiences`` equal
    groups. At experience ``k`` (seeds: :class:`replay_lcmat.memory.ExperienceSeeds`): a
    selection model (only when a policy needs one) is trained on experience ``k``'s data
    (:func:`replay_lcmat.training.pretrain_selection_model` with ``selection_model``, seed
    ``seeds.selection_model``) and its outputs are taken once per statistics mode in use
    (:func:`replay_lcmat.selection.extract_outputs`); each policy builds ``per_class`` exemplars of every new class from
    that experience's data only (seed ``policy.experience_seed(seed, k)``) and adds them to its
    memory; then, for each policy, :func:`replay_lcmat.memory.retrain_on_memory` trains fresh
    models on its whole memory only (``retrain``) and each is evaluated on the test images of
    all classes seen so far (mean over ``evaluations`` fresh models).

    Args:
        train_data, test_data: the dataset (all classes); labels stay the original ones and
            the models have one output per class of the dataset.
        policies: memory policies (see :func:`replay_lcmat.memory.memory_policies`), or policy specs with options,
            e.g. ``"lcmat-s[eps=0.05,stats=class-batch]"`` (:func:`replay_lcmat.specs.parse_policy`);
            a spec's ``stats`` overrides ``selection_model.stats`` for that policy, and the spec as
            written is the ``policy`` of its rows. ``weight_power=a`` (selection policies
            with weights: Craig, AdaCore, LCMat-S facility) retrains on the memory with loss
            weights ``gamma_j ** a`` scaled to mean 1 per class (1: cluster sizes, 0.5:
            tempered; sets ``weighted=True``). ``eps=auto`` (LCMat-S) chooses eps from
            :data:`~replay_lcmat.memory.holdout.AUTO_EPS` at every experience and budget on
            a held-out fifth of the experience's data (:func:`~replay_lcmat.memory.holdout.
            choose_on_holdout`), never on ``test_data``.
        per_class: exemplars per class, or several budgets (each gets its own memory).
        model, model_options: network for :func:`replay_lcmat.models.make_model`
            (``"convnet"`` = ConvNet-3; e.g. ``{"width": 32}``).
        iterations: outer iterations of condensation policies, one number or
            ``{policy: iterations}`` (default: the condenser's paper value).
        policy_options: ``{policy: {option: value}}`` passed to the selector / condenser.
        selection_model: how the selection model is trained and read (epochs, lr, augment,
            early stop, ``stats``); ``None``: :class:`replay_lcmat.selection.
            SelectionModelConfig` defaults with this run's ``model`` and ``model_options``.
        log: called with one line per finished experience and policy (e.g. ``print``).
        val_data: validation images (e.g. training images left out of ``train_data``): the
            same retrained models are also scored on its classes seen so far
            (``val_accuracy`` of the rows), to choose settings without the test set.
        memories_out: a dict to receive the final memories, ``{(policy, per_class):
            ClassMemory}`` (e.g. to draw them with :mod:`replay_lcmat.diagnostics`).

    Returns:
        One :meth:`replay_lcmat.memory.ResultRow.as_dict` per (policy, per_class, experience):
        ``seed, policy, per_class, experience`` (1-based), ``classes_seen``, ``memory_size``,
        ``accuracy`` (in [0, 1]).
    """
    budgets = [per_class] if isinstance(per_class, int) else list(per_class)
    budgets = [check_per_class(b) for b in budgets]
    if selection_model is None:
        selection_model = SelectionModelConfig(
            architecture=model, model_options=dict(model_options or {})
        )
    specs = {
        p: memory_spec(
            p,
            policy_options=policy_options,
            iterations=iterations,
            stats=selection_model.stats,
        )
        for p in policies
    }
    channels, height, _ = train_data.shape
    template = make_model(
        model,
        in_channels=channels,
        num_classes=train_data.num_classes,
        image_size=height,
        **(model_options or {}),
    )
    order = class_order(train_data.num_classes, seed if shuffle_classes else None)
    groups = task_classes(order, n_experiences)
    memories = {(p, b): ClassMemory() for p in policies for b in budgets}
    if memories_out is not None:
        memories_out.update(memories)  # the same objects: filled as the run goes
    rows: list[dict] = []
    seen: list[int] = []
    for k, classes in enumerate(groups):
        seeds = ExperienceSeeds(seed, k)
        seen += classes
        stage = select_classes(train_data, classes)
        x, y = stage.normalized(), stage.labels
        outputs: dict[str | None, object] = {None: None}
        if any(stats is not None for _, _, stats, _ in specs.values()):
            selector_model = pretrain_selection_model(
                stage, selection_model, device=device, seed=seeds.selection_model, progress=progress
            )
            for stats in {s for _, _, s, _ in specs.values() if s is not None}:
                outputs[stats] = extract_outputs(
                    selector_model, x, labels=y, stats=stats, device=device
                )
        test = select_classes(test_data, seen)
        test_x, test_y = test.normalized(), test.labels
        if val_data is not None:
            val = select_classes(val_data, seen)
            val_x, val_y = val.normalized(), val.labels
        for p in policies:
            policy, options, stats, power = specs[p]
            for b in budgets:
                chosen = options
                if options.get("eps") == "auto":  # chosen on held-out experience data
                    chosen, scores = choose_on_holdout(
                        policy.name,
                        x,
                        y,
                        outputs=outputs[stats],
                        per_class=b,
                        candidates=[{**options, "eps": e} for e in AUTO_EPS],
                        template=template,
                        retrain=retrain,
                        seeds=seeds,
                        device=device,
                    )
                    if log is not None:
                        tried = ", ".join(
                            f"{e}: {100 * a:.1f}%" for e, a in zip(AUTO_EPS, scores, strict=True)
                        )
                        log(f"{p} m={b}: eps {chosen['eps']} chosen on held-out data ({tried})")
                memories[p, b].update(
                    policy.build(
                        x,
                        y,
                        per_class=b,
                        outputs=outputs[stats],
                        seed=policy.experience_seed(seed, k),
                        device=device,
                        options=chosen,
                        progress=progress,
                    )
                )
                mem_x, mem_y = memories[p, b].tensors()
                weights = memories[p, b].sample_weights(power) if power else None
                models = [
                    retrain_on_memory(
                        template,
                        mem_x,
                        mem_y,
                        retrain=retrain,
                        seeds=seeds,
                        evaluation=e,
                        device=device,
                        progress=progress,
                        weights=weights,
                    )
                    for e in range(evaluations)
                ]
                scores = [evaluate(m, test_x, test_y, device=device) for m in models]
                val_scores = (
                    [evaluate(m, val_x, val_y, device=device) for m in models]
                    if val_data is not None
                    else None
                )
                row = ResultRow(
                    seed=seed,
                    policy=p,
                    per_class=b,
                    experience=k + 1,
                    classes_seen=len(seen),
                    memory_size=len(mem_y),
                    accuracy=float(np.mean(scores)),
                    val_accuracy=None if val_scores is None else float(np.mean(val_scores)),
                )
                rows.append(row.as_dict())
                if log is not None:
                    log(row.log_line(f"of {n_experiences}, "))
    return rows
