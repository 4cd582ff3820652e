"""One batched, gradient-free forward pass shared by every selector."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from replay_lcmat import collectives, distributed, resources
from replay_lcmat.models import split_head
from replay_lcmat.validation import check_channels_first, check_finite_images

# How a selection model's normalisation layers see the data while its outputs are taken.
STATS = ("running", "class-batch", "class-center")
# The default of every selection path, chosen from benchmarks/results/coreset_cpu-bn.md and
# continual_cpu-bn.md (README, "What the measurements show"); identical to "running" for models
# without BatchNorm.
DEFAULT_STATS = "class-batch"
CLASS_BATCH_SIZE = 128  # the reference code's selection loader
VERIFY_SAMPLES = 32  # samples of the first batch the model's split is checked on


@dataclass(frozen=True)
class ModelOutputs:
    """``features [n, d]`` (penultimate), ``logits [n, c]``, ``labels`` int64 ``[n]``; CPU, float32."""

    features: Tensor
    logits: Tensor
    labels: Tensor


def check_stats(stats: str | None) -> str:
    """``stats`` if it is one of :data:`STATS` (``None``: :data:`DEFAULT_STATS`, the one place
    that default is applied), else raise naming the choices."""
    if stats is None:
        return DEFAULT_STATS
    if stats not in STATS:
        raise ValueError(
            f"unknown stats {stats!r}; choose one of {', '.join(map(repr, STATS))} "
            "(see replay_lcmat.selection.extract_outputs)."
        )
    return stats


def has_batch_statistics(model: nn.Module) -> bool:
    """True when some layer of ``model`` normalises with batch statistics in train mode
    (BatchNorm, SyncBatchNorm, InstanceNorm with ``track_running_stats``)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        or (isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats)
        for m in model.modules()
    )


def class_batches(labels: Tensor, batch_size: int) -> list[Tensor]:
    """Index batches that each hold one class: classes ascending, each class in index order cut
    into runs of ``batch_size`` (the reference code's selection loader). A trailing run of a
    single sample joins the run before it, because batch statistics of one sample are undefined.
    """
    batches: list[Tensor] = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        runs = list(torch.split(members, batch_size))
        if len(runs) > 1 and len(runs[-1]) == 1:
            runs[-2:] = [torch.cat(runs[-2:])]
        batches += runs
    return batches


def class_centered_logits(
    features: Tensor, labels: Tensor, head: nn.Module, device: torch.device | str = "cpu"
) -> Tensor:
    """Logits ``head(h - mean_c(h) + mean(h))``: each class's mean feature moved to the mean
    feature of all samples, the feature-level analogue of what class-batch BatchNorm does.

    Args:
        features: ``[n, d]`` float; labels: int64 ``[n]``; head: the last linear layer (on
            ``device``). Returns float ``[n, c]`` on the CPU.
    """
    if len(torch.unique(labels)) < 2:
        warnings.warn(
            "class-center statistics need samples of several classes in one call; with one "
            "class the logits equal the running-statistics ones.",
            UserWarning,
            stacklevel=3,
        )
    centred = features.clone()
    overall = features.mean(0)
    for c in torch.unique(labels).tolist():
        rows = labels == c
        centred[rows] += overall - features[rows].mean(0)
    with torch.no_grad():
        return head(centred.to(device)).float().cpu()


def extract_outputs(
    model: nn.Module,
    data,
    labels: Tensor | None = None,
    *,
    stats: str = DEFAULT_STATS,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ModelOutputs:
    """Penultimate features, logits and labels of ``data`` under ``model``, in one pass.

    The model is split with :func:`replay_lcmat.models.split_head` (models of this library use
    their ``features`` / ``classifier``) and run without gradients. The caller's model is left
    as it was: parameters, buffers (BatchNorm running statistics) and train/eval flag (with
    ``"running"`` and ``"class-center"`` it is moved to ``device``).

    ``stats`` says which statistics normalisation layers use:

    - ``"running"``: eval mode; BatchNorm uses its running statistics, so a sample's outputs do
      not depend on the other samples of its batch. Batches of ``batch_size`` (default 512)
      in index order.
    - ``"class-batch"``: the LCMat reference code's behaviour. BatchNorm layers normalise with
      the statistics of the batch, and every batch holds samples of one class only: classes
      ascending, each in index order, in batches of ``batch_size`` (default 128; see
      :func:`class_batches`). The class mean is removed at every BatchNorm layer, so the
      last-layer gradients describe the variation inside the class. Runs on a copy of the
      model with its other layers in eval mode (dropout off), so the result is deterministic.
      A class with a single sample has no batch statistics and uses the running ones.
    - ``"class-center"``: eval mode, then each class's mean penultimate feature is moved to the
      mean feature of all samples before the head (:func:`class_centered_logits`); an analogue of
      class-batch statistics for models without BatchNorm. ``features`` stay as extracted.

    For a model without batch-dependent normalisation (instance norm, GroupNorm, LayerNorm, no
    norm) ``"running"`` and ``"class-batch"`` give identical outputs.

    Under ``torch.distributed`` (:mod:`replay_lcmat.distributed`) every rank calls this with the
    same model and data: rank 0's weights are broadcast (as DistributedDataParallel does), each
    rank runs its share of the batches above (whole batches, so each is computed as in one
    process) and every rank returns the full outputs, in the order of ``data``.

    Args:
        model: the selection model.
        data: an :class:`replay_lcmat.data.ImageData` (normalised batch by batch) or a float
            tensor of already-normalised inputs ``[n, ...]`` together with ``labels``.
        labels: int64 ``[n]``, only when ``data`` is a tensor.
        stats: ``"running"``, ``"class-batch"`` or ``"class-center"`` (see above).
        batch_size: samples per forward pass (default 512, or 128 for ``"class-batch"``).
        device: where the model runs; outputs are returned on the CPU, in the order of ``data``.
        progress: show a progress bar.

    Raises:
        NotEnoughMemoryError: the outputs ``[n, d]`` and ``[n, c]`` would not fit the memory
            budget (:func:`replay_lcmat.resources.available_memory_bytes`, which
            ``REPLAY_LCMAT_MEMORY_LIMIT`` overrides); raised after the first batch, before the
            outputs are allocated.
    """
    check_stats(stats)
    if isinstance(data, Tensor):
        if labels is None or len(labels) != len(data):
            raise ValueError(
                "when data is a tensor, pass labels=... with one int64 label per row of data."
            )
        check_channels_first(data, "data")
        check_finite_images(data, "data")
        n, batch_of = len(data), (lambda idx: data[idx.to(data.device)].to(device).float())
    elif hasattr(data, "normalized") and hasattr(data, "subset"):
        if labels is not None:
            raise ValueError("labels come from the ImageData itself; drop labels=... .")
        labels = data.labels
        n = len(data)

        def batch_of(idx: Tensor) -> Tensor:
            return data.subset(idx).normalized(device)
    else:
        raise ValueError(
            f"data must be an ImageData or a float tensor with labels=...; got {type(data).__name__}."
        )
    if n == 0:
        raise ValueError("no samples to extract: the dataset is empty.")
    class_batch = stats == "class-batch" and has_batch_statistics(model)  # else same as running
    if batch_size is None:
        batch_size = CLASS_BATCH_SIZE if class_batch else 512
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    labels = torch.as_tensor(labels).long().cpu()
    if class_batch:
        batches = class_batches(labels, batch_size)
        net = copy.deepcopy(model).to(device).eval()
        batch_norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        for module in batch_norms:
            module.momentum = 0.0  # the copy's running statistics stay those of the model
    else:
        batches = list(torch.arange(n).split(batch_size))
        # several ranks: a copy, into which rank 0's weights are broadcast
        net = copy.deepcopy(model.to(device)).eval() if distributed.is_distributed() else model
    was_training = model.training
    if net is model:
        model.to(device).eval()
    collectives.broadcast_module_(net)  # no-op in one process
    # under torch.distributed each rank runs its share of the batches (each batch as in one
    # process); rows of the other ranks stay zero until merge_rows sums them in
    mine = distributed.shard(batches, [len(idx) for idx in batches])
    feats = logits = None
    try:
        with distributed.phase("feature extraction"):
            # verified on (part of) the first batch: a model from elsewhere may not split where
            # it seems to (inside try: a failed check leaves the caller's model mode as it was)
            features_of, head = split_head(net, example=batch_of(batches[0][:VERIFY_SAMPLES]))
            with torch.no_grad():
                quiet = not progress or not distributed.is_writer()  # one bar: rank 0
                for idx in tqdm(mine, desc="extract", disable=quiet):
                    if class_batch:
                        # batch statistics; a class of one sample has none, so it falls back
                        # to the running statistics
                        for module in batch_norms:
                            module.train(len(idx) > 1)
                    h = features_of(batch_of(idx)).flatten(1)
                    z = head(h).float().cpu()
                    h = h.float().cpu()
                    if feats is None:
                        _check_output_memory(n, h.shape[1], z.shape[1], stats)
                        feats = torch.zeros(n, h.shape[1])
                        logits = torch.zeros(n, z.shape[1])
                    feats[idx], logits[idx] = h, z
        feats, logits = collectives.merge_rows(feats, n), collectives.merge_rows(logits, n)
        for name, values in (("features", feats), ("logits", logits)):
            bad = ~torch.isfinite(values).all(1)
            if bool(bad.any()):  # finite inputs, NaN outputs: the model, not the data
                raise ValueError(
                    f"the model's {name} are NaN or inf for {int(bad.sum())} of {n} samples of "
                    "finite inputs: its weights or a layer overflow. Retrain or reload the "
                    "selection model (e.g. on finite data, with a smaller learning rate)."
                )
        if stats == "class-center":
            logits = class_centered_logits(feats, labels, head, device)
    finally:
        model.train(was_training)
    return ModelOutputs(feats, logits, labels)


@dataclass(frozen=True)
class SelectionModelConfig:
    """The model a selection policy ranks with (the paper's θ): how the library builds and
    trains it (:func:`pretrain_selection_model`) and with which statistics its outputs are
    read (:func:`extract_outputs`).

    Attributes:
        architecture: a :func:`replay_lcmat.models.make_model` name; ``model_options`` its
            options (e.g. ``{"width": 32}``).
        epochs, lr, batch_size: SGD training on the experience's data (the paper: 10 epochs).
        augment: random crop + flip while it trains (images of at least 32 pixels; the LCMat
            reference code trains without).
        early_stop, patience: hold out this share of the data and keep the weights of the
            lowest held-out loss (``None``: train on all data for ``epochs``).
        stats: the normalisation statistics its outputs are read with (:data:`STATS`).
    """

    architecture: str = "convnet"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    augment: bool = True
    early_stop: float | None = None
    patience: int = 2
    stats: str = DEFAULT_STATS

    def __post_init__(self) -> None:
        check_stats(self.stats)


def _check_output_memory(n: int, d: int, c: int, stats: str) -> None:
    """Refuse outputs ``features [n, d]`` and ``logits [n, c]`` (float32, CPU; one more
    ``[n, d]`` copy for ``"class-center"``) that the memory budget cannot hold, before they are
    allocated (:func:`replay_lcmat.resources.require_memory`)."""
    copies = 2 if stats == "class-center" else 1
    needed = 4 * n * (copies * d + c)
    resources.require_memory(
        needed,
        what=f"extract_outputs on {n} samples (features [{n}, {d}] and logits [{n}, {c}], float32)",
        device="cpu",
        fix="Extract the data in parts (e.g. one class or experience at a time: a subset of the "
        "ImageData, or rows of the tensor with their labels) and select from each part, or free "
        "memory.",
    )
