"""One batched, gradient-free forward pass shared by every selector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class ModelOutputs:
    """``features [n, d]`` (penultimate), ``logits [n, c]``, ``labels`` int64 ``[n]``; CPU, float32."""

    features: Tensor
    logits: Tensor
    labels: Tensor


def extract_outputs(
    model: nn.Module,
    data,
    labels: Tensor | None = None,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ModelOutputs:
    """Penultimate features, logits and labels of ``data`` under ``model``, in one pass.

    The model is split with :func:`replay_lcmat.models.split_head` (models of this library use
    their ``features`` / ``classifier``), run in eval mode without gradients, and its previous
    train/eval mode is restored afterwards.

    Args:
        model: the selection model (moved to ``device``).
        data: an :class:`replay_lcmat.data.ImageData` (normalised batch by batch) or a float
            tensor of already-normalised inputs ``[n, ...]`` together with ``labels``.
        labels: int64 ``[n]``, only when ``data`` is a tensor.
        batch_size: samples per forward pass.
        device: where the model runs; outputs are returned on the CPU.
        progress: show a progress bar.
    """
    from replay_lcmat.models import split_head

    if isinstance(data, Tensor):
        if labels is None or len(labels) != len(data):
            raise ValueError(
                "when data is a tensor, pass labels=... with one int64 label per row of data."
            )
        n, batch_of = len(data), (lambda s: data[s].to(device).float())
    elif hasattr(data, "normalized") and hasattr(data, "subset"):
        if labels is not None:
            raise ValueError("labels come from the ImageData itself; drop labels=... .")
        labels = data.labels
        n = len(data)

        def batch_of(s: slice) -> Tensor:
            return data.subset(torch.arange(s.start, s.stop)).normalized(device)
    else:
        raise ValueError(
            f"data must be an ImageData or a float tensor with labels=...; got {type(data).__name__}."
        )
    if n == 0:
        raise ValueError("no samples to extract: the dataset is empty.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    was_training = model.training
    model.to(device).eval()
    features_of, head = split_head(model)
    feats, logits = [], []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc="extract", disable=not progress):
                h = features_of(batch_of(slice(start, min(start + batch_size, n))))
                feats.append(h.flatten(1).float().cpu())
                logits.append(head(h.flatten(1)).float().cpu())
    finally:
        model.train(was_training)
    return ModelOutputs(torch.cat(feats), torch.cat(logits), torch.as_tensor(labels).long().cpu())


def pretrain_selection_model(
    train_data,
    *,
    model: str = "convnet",
    model_options: dict | None = None,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 128,
    augment: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """The selection model θ of the spec: a fresh network trained on the full data for a few epochs.

    Args:
        train_data: :class:`replay_lcmat.data.ImageData`.
        model: a :func:`replay_lcmat.models.make_model` name; ``model_options`` its options.
        epochs: training epochs (the paper uses 10; 0 keeps the random init).
        lr, batch_size: SGD settings of :func:`replay_lcmat.training.train` (cosine schedule).
        augment: random crop + flip (only for images of at least 32 pixels).
        seed: seeds the initialisation, shuffling and augmentation.
    """
    from replay_lcmat.data import RandomCropFlip
    from replay_lcmat.models import make_model
    from replay_lcmat.seeding import seeded
    from replay_lcmat.training import train

    channels, height, _ = train_data.shape
    with seeded(seed):
        net = make_model(
            model,
            in_channels=channels,
            num_classes=train_data.num_classes,
            image_size=height,
            **(model_options or {}),
        )
    use_augment = augment and height >= 32
    return train(
        net,
        train_data.normalized(),
        train_data.labels,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        augment=RandomCropFlip() if use_augment else None,
        device=device,
        seed=seed,
        progress=progress,
    )
