"""The memory-only continual-learning protocol of the LCMat paper (spec section 5), without
Avalanche: after each experience the memory of its classes is built by a policy
(:func:`replay_lcmat.buffers.build_memory`), then a fresh model is trained on the whole memory
only and tested on all classes seen so far.

    rows = memory_only_run(train, test, policies=["lcmat-s", "uniform"], per_class=10, ...)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from replay_lcmat.buffers import (
    ClassMemory,
    build_memory,
    check_budget,
    derive_seed,
    policy_kind,
    policy_needs_model,
)
from replay_lcmat.data import ImageData, RandomCropFlip, class_order, select_classes, task_classes
from replay_lcmat.models import make_model
from replay_lcmat.seeding import seeded
from replay_lcmat.specs import parse_policy
from replay_lcmat.training import evaluate, train

AUGMENTS = ("dsa", "crop-flip", "none")


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained on in-memory tensors (SGD + momentum + weight decay).

    The defaults are the memory-only retraining of the continual protocol (spec section 5,
    from Zhao & Bilen's script): 1000 epochs, lr 0.01, momentum 0.9, wd 5e-4, batch 256,
    lr x0.1 at the halfway epoch, DSA augmentation.

    Attributes:
        augment: ``"dsa"`` (Differentiable Siamese Augmentation, per-sample parameters),
            ``"crop-flip"`` (random crop with padding 4 and flip) or ``"none"``.
    """

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "step"
    augment: str = "dsa"

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; choose one of {AUGMENTS}.")

    def augmentation(self, image_size: int) -> Callable | None:
        if self.augment == "dsa":
            from replay_lcmat.condensation import DSA

            return DSA()
        if self.augment == "crop-flip":
            return RandomCropFlip(padding=min(4, image_size - 1))
        return None

    def fit(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        progress: bool = False,
    ) -> nn.Module:
        """Train ``model`` in place on float normalised ``images [N, C, H, W]``; returns it."""
        return train(
            model,
            images,
            labels,
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule=self.schedule,
            augment=self.augmentation(images.shape[-1]),
            device=device,
            seed=seed,
            progress=progress,
        )


# The memory-only retraining of the continual protocol (spec section 5).
PROTOCOL_RETRAIN = TrainConfig()


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``, on the CPU, with every parameter freshly initialised under ``seed``.

    Calls ``reset_parameters()`` of each module (in ``modules()`` order) inside
    :func:`replay_lcmat.seeding.seeded`, so the global RNG is left untouched; initialising on
    the CPU gives the same weights whatever device the model lives on.

    Raises:
        ValueError: a module owns parameters but has no ``reset_parameters``.
    """
    fresh = copy.deepcopy(model).cpu()
    with seeded(seed), torch.no_grad():
        for module in fresh.modules():
            owns = any(True for _ in module.parameters(recurse=False))
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            elif owns:
                raise ValueError(
                    f"{type(module).__name__} has parameters but no reset_parameters(), so a "
                    "fresh copy cannot be initialised; give it reset_parameters() or build fresh "
                    "models yourself."
                )
    return fresh


# ---------------------------------------------------------------- the continual protocol
def per_class_subset(data: ImageData, n: int | None, seed: int) -> ImageData:
    """At most ``n`` random samples of every class (all when ``n`` is None), index order kept."""
    if n is None:
        return data
    gen = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in range(data.num_classes):
        idx = data.class_indices(c)
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return data.subset(torch.cat(keep).sort().values)


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
    selection_epochs: int = 10,
    selection_lr: float = 0.1,
    selection_augment: bool = True,
    selection_stats: str | None = None,
    retrain: TrainConfig = PROTOCOL_RETRAIN,
    evaluations: int = 1,
    iterations: int | dict[str, int] | None = None,
    policy_options: dict[str, dict] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    memories_out: dict | None = None,
) -> list[dict]:
    """The memory-replay protocol of the LCMat paper (spec section 5), one seed.

    Classes are ordered by ``class_order(C, seed)`` and split into ``n_experiences`` equal
    groups. At experience ``k``: a selection model (only when a policy needs one) is trained
    on experience ``k``'s data by :func:`replay_lcmat.selection.pretrain_selection_model`
    (``selection_epochs``, ``selection_lr``, ``selection_augment``, seed
    ``derive_seed(seed, k, 1)``) and its outputs are taken once per statistics mode in use
    (:func:`replay_lcmat.selection.extract_outputs`, ``selection_stats``); each policy
    builds ``per_class`` exemplars of every new class from that experience's data only and adds
    them to its memory; then, for each policy, a freshly initialised model (seed
    ``derive_seed(seed, k, 3, e)``) is trained on its whole memory only (``retrain``, seed
    ``derive_seed(seed, k, 4, e)``) and evaluated on the test images of all classes seen so far
    (mean over ``evaluations`` fresh models).

    Args:
        train_data, test_data: the dataset (all classes); labels stay the original ones and
            the models have one output per class of the dataset.
        policies: memory policies (see :func:`policy_kind`), or policy specs with options,
            e.g. ``"lcmat-s[eps=0.05,stats=class-batch]"`` (:func:`replay_lcmat.specs.parse_policy`);
            a spec's ``stats`` overrides ``selection_stats`` for that policy, and the spec as
            written is the ``policy`` of its rows.
        per_class: exemplars per class, or several budgets (each gets its own memory).
        model, model_options: network for :func:`replay_lcmat.models.make_model`
            (``"convnet"`` = ConvNet-3; e.g. ``{"width": 32}``).
        iterations: outer iterations of condensation policies, one number or
            ``{policy: iterations}`` (default: paper values).
        policy_options: ``{policy: {option: value}}`` passed to the selector / condenser.
        selection_stats: normalisation statistics of the selection model's outputs,
            ``"running"``, ``"class-batch"`` or ``"class-center"`` (default
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`).
        selection_augment: crop + flip while the selection model trains (the LCMat reference
            code trains it without).
        log: called with one line per finished experience and policy (e.g. ``print``).
        memories_out: a dict to receive the final memories, ``{(policy, per_class):
            ClassMemory}`` (e.g. to draw them with :mod:`replay_lcmat.diagnostics`).

    Returns:
        One dict per (policy, per_class, experience): ``seed, policy, per_class, experience``
        (1-based), ``classes_seen``, ``memory_size``, ``accuracy`` (in [0, 1]).
    """
    budgets = [per_class] if isinstance(per_class, int) else list(per_class)
    for b in budgets:
        check_budget(b)
    from replay_lcmat.selection.extract import DEFAULT_STATS, check_stats

    policy_options = policy_options or {}
    specs: dict[str, tuple[str, dict, str | None]] = {}  # spec -> (name, options, stats)
    for p in policies:
        name, options = parse_policy(p)
        options = {**policy_options.get(p, policy_options.get(name, {})), **options}
        stats = options.pop("stats", None)
        if policy_needs_model(name):
            stats = check_stats(stats or selection_stats or DEFAULT_STATS)
        elif stats is not None:
            raise ValueError(f"{p!r}: stats applies to selection policies that use a model.")
        specs[p] = (name, options, stats)
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
        seen += classes
        stage = select_classes(train_data, classes)
        x, y = stage.normalized(), stage.labels
        outputs: dict[str | None, object] = {None: None}
        if any(stats is not None for _, _, stats in specs.values()):
            from replay_lcmat.selection import extract_outputs, pretrain_selection_model

            selector_model = pretrain_selection_model(
                stage,
                model=model,
                model_options=model_options,
                epochs=selection_epochs,
                lr=selection_lr,
                augment=selection_augment,
                device=device,
                seed=derive_seed(seed, k, 1),
                progress=progress,
            )
            for stats in {s for _, _, s in specs.values() if s is not None}:
                outputs[stats] = extract_outputs(
                    selector_model, x, labels=y, stats=stats, device=device
                )
        test = select_classes(test_data, seen)
        test_x, test_y = test.normalized(), test.labels
        for p in policies:
            name, options, stats = specs[p]
            for b in budgets:
                memories[p, b].update(
                    build_memory(
                        name,
                        x,
                        y,
                        per_class=b,
                        outputs=outputs[stats],
                        # selectors derive a seed per class; a condensation run, per experience
                        seed=seed if policy_kind(name) == "selection" else derive_seed(seed, k),
                        iterations=iterations.get(p, iterations.get(name))
                        if isinstance(iterations, dict)
                        else iterations,
                        device=device,
                        progress=progress,
                        **options,
                    )
                )
                mem_x, mem_y = memories[p, b].tensors()
                scores = []
                for e in range(evaluations):
                    net = reinitialize(template, derive_seed(seed, k, 3, e))
                    retrain.fit(
                        net,
                        mem_x,
                        mem_y,
                        device=device,
                        seed=derive_seed(seed, k, 4, e),
                        progress=progress,
                    )
                    scores.append(evaluate(net, test_x, test_y, device=device))
                row = {
                    "seed": seed,
                    "policy": p,
                    "per_class": b,
                    "experience": k + 1,
                    "classes_seen": len(seen),
                    "memory_size": len(mem_y),
                    "accuracy": float(np.mean(scores)),
                }
                rows.append(row)
                if log is not None:
                    log(
                        f"seed {seed} experience {k + 1}/{n_experiences} {p} (m={b}/class, "
                        f"memory {len(mem_y)}): accuracy {100 * row['accuracy']:.2f}%"
                    )
    return rows
