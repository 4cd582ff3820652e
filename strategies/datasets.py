"""Between Avalanche datasets and plain tensors: read a dataset out, wrap tensors in, build a
class-incremental benchmark from :class:`replay_lcmat.data.ImageData` without any download, and
turn a saved selection into an Avalanche dataset (:func:`selection_dataset`)."""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import AvalancheDataset, concat_datasets
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_classification_dataset,
    _make_taskaware_tensor_classification_dataset,
)
from torch import Tensor
from torch.utils.data import DataLoader

from replay_lcmat.data import ImageData, class_order
from replay_lcmat.selection.record import Selection, selection_subset


def dataset_tensors(
    data: AvalancheDataset, *, batch_size: int = 256
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [n, ...], y int64 [n], t int64 [n])`` of an Avalanche classification dataset.

    Read in the dataset's *eval* transform group (no augmentation), in dataset order, on the CPU.
    The eval transforms must produce tensors (e.g. ``ToTensor()`` and ``Normalize``).
    """
    if len(data) == 0:
        raise ValueError("the dataset is empty; there is nothing to read.")
    xs, ys, ts = [], [], []
    loader = DataLoader(
        data.eval(), batch_size=batch_size, shuffle=False, collate_fn=data.collate_fn
    )
    for batch in loader:
        if len(batch) < 3:
            raise ValueError(
                f"dataset items have {len(batch)} fields; expected (x, y, task_label) as in an "
                "Avalanche classification stream."
            )
        x = batch[0]
        if not isinstance(x, Tensor):
            raise ValueError(
                f"the dataset's eval transforms produce {type(x).__name__}, not tensors; add "
                "ToTensor() and Normalize(...) to its eval transform."
            )
        xs.append(x.detach().cpu())
        ys.append(torch.as_tensor(batch[1]).long().cpu())
        ts.append(torch.as_tensor(batch[2]).long().cpu())
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def dataset_targets(data: AvalancheDataset) -> Tensor:
    """int64 ``[n]``: the class label of every sample of ``data``."""
    return torch.tensor([int(v) for v in data.targets], dtype=torch.int64)


def tensor_dataset(x: Tensor, y: Tensor, t: Tensor | int = 0) -> AvalancheDataset:
    """A classification dataset of tensors whose items are ``(x, y, t)`` like a stream's.

    ``x`` is stored as given (already normalised, no transforms); an empty ``x`` gives an empty
    dataset.
    """
    if len(x) == 0:
        return concat_datasets([])
    y = torch.as_tensor(y).long().cpu()
    t = torch.full_like(y, t) if isinstance(t, int) else torch.as_tensor(t).long().cpu()
    if not len(x) == len(y) == len(t):
        raise ValueError(f"x, y and t must have equal lengths; got {len(x)}, {len(y)}, {len(t)}.")
    return _make_taskaware_tensor_classification_dataset(
        x.detach().cpu(), y, task_labels=t.tolist(), targets=y.tolist()
    )


def selection_dataset(
    selection: Selection | str, dataset, *, task_label: int = 0
) -> AvalancheDataset:
    """The selected samples of ``dataset`` as an Avalanche classification dataset whose items
    are ``(x, y, task_label)`` like a stream's, in the selection's order.

    Args:
        selection: a :class:`~replay_lcmat.selection.Selection` or the path of a selection file.
        dataset: the torchvision dataset it was made on, e.g. ``ImageFolder(<folder>/train,
            transform=...)``; checked as in :func:`replay_lcmat.selection.selection_subset`
            (size, labels, file names).
    """
    indices = selection_subset(selection, dataset).indices
    return _make_taskaware_classification_dataset(dataset, task_labels=task_label).subset(indices)


def tensor_benchmark(
    train: ImageData,
    test: ImageData,
    *,
    n_experiences: int,
    seed: int | None = 0,
    task_labels: bool = False,
    train_transform=None,
    eval_transform=None,
):
    """Class-incremental (or task-incremental) Avalanche benchmark (``nc_benchmark``) over
    in-memory images.

    Images are normalised once (``ImageData.normalized``); labels keep their original values;
    the class order is :func:`replay_lcmat.data.class_order` (``np.random.permutation`` under
    ``seed``, the order of the LCMat / DM continual protocol; ``seed=None``: natural order).
    No task labels (all experiences have task label 0) unless ``task_labels``.

    Args:
        task_labels: task-incremental: experience ``k`` has task label ``k`` (class labels stay
            the original ones, distinct across tasks), for multi-head models such as
            Avalanche's ``MTSimpleMLP``.
        train_transform, eval_transform: optional per-item tensor transforms.

    Returns:
        An Avalanche ``NCScenario`` with ``train_stream`` and ``test_stream``.
    """
    if train.num_classes % n_experiences:
        raise ValueError(
            f"{train.num_classes} classes cannot be split into {n_experiences} equal experiences; "
            f"choose a number of experiences that divides {train.num_classes}."
        )
    train_set = tensor_dataset(train.normalized(), train.labels)
    test_set = tensor_dataset(test.normalized(), test.labels)
    return nc_benchmark(
        train_set,
        test_set,
        n_experiences=n_experiences,
        task_labels=task_labels,
        fixed_class_order=class_order(train.num_classes, seed),
        train_transform=train_transform,
        eval_transform=eval_transform,
    )


def dataset_task_labels(data: AvalancheDataset) -> Tensor:
    """int64 ``[n]``: the task label of every sample of ``data`` (0 when it has none)."""
    tasks = getattr(data, "targets_task_labels", None)
    if tasks is None:
        return torch.zeros(len(data), dtype=torch.int64)
    return torch.tensor([int(v) for v in tasks], dtype=torch.int64)
