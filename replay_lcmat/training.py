"""Train and evaluate a classifier on in-memory tensors (shared by every protocol)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from replay_lcmat.data.augment import RandomCropFlip
from replay_lcmat.data.classes import holdout_split
from replay_lcmat.data.dsa import DSA
from replay_lcmat.models import make_model
from replay_lcmat.seeding import make_generator, seeded
from replay_lcmat.selection.extract import SelectionModelConfig
from replay_lcmat.validation import check_channels_first, check_finite_images

Augment = Callable[[Tensor, torch.Generator], Tensor]
SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("dsa", "crop-flip", "none")


def _check_pair(images: Tensor, labels: Tensor) -> None:
    if images.dim() != 4 and images.dim() != 2:
        raise ValueError(f"images must be [N, C, H, W] (or [N, F]); got {tuple(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label each.")
    if len(images) == 0:
        raise ValueError("no training samples: the images tensor is empty.")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be float and normalised (got {images.dtype}); use ImageData.normalized()."
        )
    check_channels_first(images, "images")
    check_finite_images(images, "images")


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate schedule of :func:`train`, from ``torch.optim.lr_scheduler``.

    ``"cosine"``: ``lr · ½ (1 + cos(π t / T))`` at step ``t`` of ``T = epochs · steps_per_epoch``
    (``CosineAnnealingLR``, down to 0 after the last step); ``"step"``: ``lr`` then ``0.1 lr``
    from the first step of epoch ``epochs // 2`` on (``MultiStepLR``; the DC/DM evaluation
    protocol); ``"constant"``: None (no scheduler). Call ``.step()`` after every optimiser step.
    """
    if schedule == "cosine":
        total = max(1, epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if schedule == "step":
        half = (epochs // 2) * steps_per_epoch  # 0 (one epoch): 0.1 lr from the first step
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[half], gamma=0.1)
    return None


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "cosine",
    augment: Augment | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    weights: Tensor | None = None,
    on_epoch: Callable[[int, nn.Module], bool] | None = None,
) -> nn.Module:
    """Train ``model`` with SGD + momentum + weight decay on ``(images, labels)``; returns it.

    Args:
        images: float normalised ``[N, C, H, W]`` (any device; batches move to ``device``).
        labels: int64 ``[N]``.
        epochs: passes over the data (0 returns the model untouched).
        schedule: ``"cosine"`` (per step to 0), ``"step"`` (x0.1 at the halfway epoch) or
            ``"constant"``.
        augment: ``augment(batch, generator) -> batch`` applied to every batch on ``device``
            (e.g. :class:`replay_lcmat.data.RandomCropFlip`).
        seed: seeds the shuffling and the augmentation (model init is the caller's).
        progress: show a tqdm bar over epochs with the running loss.
        weights: float ``[N]`` > 0, per-sample loss weights (a batch's loss is the mean of
            ``weight * cross-entropy``; scale them to mean 1 to keep the learning rate's
            meaning); None: unweighted.
        on_epoch: called as ``on_epoch(epoch, model)`` (0-based) after every epoch; training
            stops early when it returns True (e.g. early stopping on held-out data).
    """
    _check_pair(images, labels)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (len(labels),) or not bool(torch.isfinite(weights).all()):
            raise ValueError(
                f"weights must be {len(labels)} finite numbers, one per image; got shape "
                f"{tuple(weights.shape)}."
            )
        if bool((weights < 0).any()):
            raise ValueError("weights must be >= 0; a negative weight would ascend the loss.")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1; got {epochs}, {batch_size}.")
    model.to(device)
    gen = make_generator(seed)
    n = len(labels)
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    scheduler = lr_scheduler(optimizer, schedule, epochs=epochs, steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(reduction="none" if weights is not None else "mean")
    was_training = model.training
    model.train()
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx].to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, gen)
            loss = loss_fn(model(x), y)
            if weights is not None:
                loss = (loss * weights[idx].to(loss.device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / n:.4f}")
        if on_epoch is not None and on_epoch(epoch, model):
            break
    model.train(was_training)
    return model


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> Tensor:
    """Logits ``[N, num_classes]`` on CPU, computed in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval().to(device)
    out = [
        model(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``model`` on float normalised ``images`` and ``labels``."""
    _check_pair(images, labels)
    logits = predict(model, images, batch_size=batch_size, device=device)
    return float((logits.argmax(1) == labels.cpu()).float().mean())


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained on in-memory tensors (SGD + momentum + weight decay).

    The defaults are the memory-only retraining of the continual protocol (LCMat paper, Fig. 5,
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
        weights: Tensor | None = None,
    ) -> nn.Module:
        """Train ``model`` in place on float normalised ``images [N, C, H, W]``; returns it.

        ``weights``: optional per-sample loss weights ``[N]`` (see :func:`train`)."""
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
            weights=weights,
        )


# The memory-only retraining of the continual protocol (LCMat paper, Fig. 5).
PROTOCOL_RETRAIN = TrainConfig()


def pretrain_selection_model(
    train_data,
    config: SelectionModelConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """The selection model θ of the LCMat paper: a fresh network trained on the full data for a
    few epochs (SGD, cosine schedule; :func:`train`).

    Args:
        train_data: :class:`replay_lcmat.data.ImageData`.
        config: the network and its training
            (:class:`~replay_lcmat.selection.SelectionModelConfig`; ``None``: its defaults, the
            paper's 10 epochs; 0 epochs keeps the random init). With ``early_stop`` a share of
            every class (seeded by ``seed``) is held out: θ trains on the rest for at most
            ``epochs``, its loss on the held-out part is measured after each epoch, training
            stops after ``patience`` epochs without a new lowest loss, and the weights of the
            lowest are returned.
        seed: seeds the initialisation, shuffling and augmentation.
    """
    config = SelectionModelConfig() if config is None else config
    channels, height, _ = train_data.shape
    with seeded(seed):
        net = make_model(
            config.architecture,
            in_channels=channels,
            num_classes=train_data.num_classes,
            image_size=height,
            **config.model_options,
        )
    use_augment = config.augment and height >= 32
    images, labels = train_data.normalized(), train_data.labels
    on_epoch = None
    if config.early_stop is not None:
        fit, held = holdout_split(labels, config.early_stop, seed)
        held_x, held_y = images[held], labels[held]
        images, labels = images[fit], labels[fit]
        best: dict = {"loss": math.inf, "epoch": -1, "state": None}

        def on_epoch(epoch: int, model: nn.Module) -> bool:
            logits = predict(model, held_x, device=device)
            loss = float(nn.functional.cross_entropy(logits, held_y))
            if loss < best["loss"]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best.update(loss=loss, epoch=epoch, state=state)
            return epoch - best["epoch"] >= config.patience

    net = train(
        net,
        images,
        labels,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        augment=RandomCropFlip() if use_augment else None,
        device=device,
        seed=seed,
        progress=progress,
        on_epoch=on_epoch,
    )
    if config.early_stop is not None and best["state"] is not None:
        net.load_state_dict(best["state"])
    return net
