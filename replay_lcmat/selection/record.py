"""The selection file: one JSON format for a saved selection, its reader and a ``Subset``.

Written by ``replay-lcmat select --out`` (:func:`selection_record`), read by
:func:`load_selection` (also ``replay_lcmat.load_selection``). Version 1 holds:

- ``format`` (``"replay-lcmat selection"``), ``version`` (1);
- ``data`` (the ``--data`` given), ``split`` (``"train"``), ``num_samples`` (size of that split);
- ``method``, ``options`` (every option, with defaults), ``seed``, ``per_class`` / ``fraction``;
- ``indices``: the flat list, classes ascending, each class in the method's pick order (greedy
  order for greedy methods: a class's first ``k`` are its answer for budget ``k``);
- ``by_class``: one group per class, ``{label, class, indices}`` (the same indices) plus, where
  the method has them, ``weights`` (Craig's and AdaCore's ``gamma``, weighted LCMat-S's cluster
  sizes), ``gains`` (the marginal facility-location gain of each pick,
  :func:`replay_lcmat.selection.report.facility_gains`), ``files`` (``<class>/<file name>`` of
  each index when the data is an ImageFolder folder or archive) and LCMat-S's report
  (``curvature_share``, ``eps0_overlap``, :mod:`replay_lcmat.selection.report`);
- free-form provenance: ``pretrain``, ``stats``, ``seconds``.

Index order of an ImageFolder folder or archive: class folders sorted by name, files sorted by
name inside each; torchvision ``ImageFolder`` over the extracted ``train/`` folder has the same
order (see :func:`replay_lcmat.data.folder.image_folder_files`), so :func:`selection_subset`
addresses the same images there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

FORMAT = "replay-lcmat selection"
VERSION = 1
_GROUP_LISTS = ("weights", "gains", "files")


def selection_record(
    *,
    indices: Tensor,
    labels: Tensor,
    classes: tuple[str, ...],
    method: str,
    options: dict[str, Any],
    seed: int,
    data: str,
    num_samples: int,
    weights: Tensor | None = None,
    gains: Tensor | None = None,
    files: tuple[str, ...] | None = None,
    report: dict[int, dict[str, float]] | None = None,
    **provenance: Any,
) -> dict[str, Any]:
    """The JSON-ready record of a selection (version 1, see the module docstring).

    Args:
        indices: int64 ``[m]`` into the split, classes ascending, each in pick order.
        labels: int64 ``[m]``, the label of each index; classes: names indexed by label.
        weights / gains: ``[m]`` aligned with ``indices``, or None.
        files: the ``<class>/<file>`` name of EVERY sample of the split (``[num_samples]``), or
            None; the record keeps those of the picks.
        report: ``{label: {name: value}}`` added to that class's group.
        provenance: further top-level keys (``per_class``, ``fraction``, ``pretrain``, ...).
    """
    by_class = []
    for label in labels.unique().tolist():
        mask = labels == label
        group: dict[str, Any] = {
            "label": label,
            "class": classes[label],
            "indices": indices[mask].tolist(),
        }
        for key, values in (("weights", weights), ("gains", gains)):
            if values is not None:
                group[key] = values[mask].tolist()
        if files is not None:
            group["files"] = [files[i] for i in group["indices"]]
        group.update((report or {}).get(label, {}))
        by_class.append(group)
    return {
        "format": FORMAT,
        "version": VERSION,
        "data": data,
        "split": "train",
        "num_samples": num_samples,
        "method": method,
        "options": options,
        "seed": seed,
        **provenance,
        "num_selected": len(indices),
        "indices": indices.tolist(),
        "by_class": by_class,
    }


@dataclass(frozen=True)
class Selection:
    """A selection file, read (:func:`load_selection`).

    Attributes:
        path: the file; version: its format version; method, options, seed, data: as written.
        num_samples: size of the split the indices refer to.
        indices: int64 ``[m]``, classes ascending, each in pick order; labels: int64 ``[m]``.
        classes: ``{label: class name}`` of the classes present.
        weights / gains: float64 ``[m]`` or None (methods without them).
        files: ``<class>/<file name>`` of each index, or None (data not from files).
        report: ``{label: {name: value}}``: LCMat-S's per-class curvature share and overlap.
        record: the whole JSON object (provenance: ``pretrain``, ``stats``, ``seconds``, ...).
    """

    path: Path
    version: int
    method: str
    options: dict[str, Any]
    seed: int | None
    data: str | None
    num_samples: int | None
    indices: Tensor
    labels: Tensor
    classes: dict[int, str]
    weights: Tensor | None
    gains: Tensor | None
    files: tuple[str, ...] | None
    report: dict[int, dict[str, float]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    def by_class(self) -> dict[int, Tensor]:
        """``{label: int64 indices in pick order}``, labels ascending."""
        return {c: self.indices[self.labels == c] for c in self.classes}

    def __repr__(self) -> str:
        extras = [k for k in ("weights", "gains", "files") if getattr(self, k) is not None]
        return (
            f"Selection({self.method}, {len(self)} of {self.num_samples} samples of "
            f"{self.data!r}, {len(self.classes)} classes, seed {self.seed}"
            + (f", with {', '.join(extras)}" if extras else "")
            + ")"
        )


def _bad(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable selection file: {problem}. Pass a file written by "
        "`replay-lcmat select --out` (re-run select to rewrite an older or edited file)."
    )


def load_selection(path: str | os.PathLike) -> Selection:
    """Read a selection file written by ``replay-lcmat select``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a selection file (binary, not JSON, another format or version, or
            groups that disagree with the flat indices); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no selection file at {path}; write one with `replay-lcmat select --out`."
        )
    try:
        record = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise _bad(path, "binary content, not JSON text (a .pt file?)") from None
    except json.JSONDecodeError as err:
        raise _bad(path, f"not JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _bad(path, f"no 'format': {FORMAT!r} field")
    if record.get("version") != VERSION:
        raise _bad(path, f"version {record.get('version')!r}; this reader knows version {VERSION}")
    groups = record.get("by_class")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and "label" in g and "indices" in g for g in groups
    ):
        raise _bad(path, "no 'by_class' list of {label, indices}")
    flat = [int(i) for g in groups for i in g["indices"]]
    if flat != [int(i) for i in record.get("indices", [])]:
        raise _bad(path, "its 'indices' differ from the concatenated 'by_class' groups")
    lists = {}
    for key in _GROUP_LISTS:
        present = [key in g for g in groups]
        if any(present) and not all(present):
            raise _bad(path, f"'{key}' is in some class groups but not all")
        if groups and all(present):
            values = [v for g in groups for v in g[key]]
            if len(values) != len(flat):
                raise _bad(path, f"{len(values)} '{key}' for {len(flat)} indices")
            lists[key] = values
    report_keys = {"label", "class", "indices", *_GROUP_LISTS}
    return Selection(
        path=path,
        version=VERSION,
        method=str(record.get("method")),
        options=dict(record.get("options", {})),
        seed=record.get("seed"),
        data=record.get("data"),
        num_samples=record.get("num_samples"),
        indices=torch.tensor(flat, dtype=torch.int64),
        labels=torch.tensor(
            [int(g["label"]) for g in groups for _ in g["indices"]], dtype=torch.int64
        ),
        classes={int(g["label"]): str(g.get("class", g["label"])) for g in groups},
        weights=torch.tensor(lists["weights"], dtype=torch.float64) if "weights" in lists else None,
        gains=torch.tensor(lists["gains"], dtype=torch.float64) if "gains" in lists else None,
        files=tuple(str(f) for f in lists["files"]) if "files" in lists else None,
        report={
            int(g["label"]): {k: v for k, v in g.items() if k not in report_keys} for g in groups
        },
        record=record,
    )


def check_labels(selection: Selection, labels: Tensor, source: str) -> None:
    """Raise unless every index exists in ``labels`` (int64 ``[n]``, the split's) and has the
    label written in the file: the indices were made on that data."""
    n = len(labels)
    if selection.num_samples is not None and selection.num_samples != n:
        raise ValueError(
            f"{selection.path} indexes a split of {selection.num_samples} samples but {source} "
            f"has {n}; it was made on other data (its data: {selection.data!r})."
        )
    if len(selection) and int(selection.indices.max()) >= n:
        raise ValueError(
            f"{selection.path} indexes sample {int(selection.indices.max())} but {source} has "
            f"{n}; it was made on other data (its data: {selection.data!r})."
        )
    if not torch.equal(torch.as_tensor(labels)[selection.indices], selection.labels):
        raise ValueError(
            f"{selection.path}: the labels of its indices in {source} differ from those in the "
            f"file; it was made on other data (its data: {selection.data!r}) or another class "
            "order."
        )


def selection_subset(selection: Selection | str | os.PathLike, dataset: Dataset) -> Subset:
    """``torch.utils.data.Subset(dataset, selection.indices)``, after checking that ``dataset`` is
    the data the selection was made on.

    ``dataset`` is e.g. ``torchvision.datasets.ImageFolder(<folder>/train)`` over the extracted
    folder or archive the selection was made from, or ``torchvision.datasets.CIFAR10(...,
    train=True)`` for ``--data cifar10``. Checked: its size, the label of every index (its
    ``targets``, when it has them) and, when both have file names, that index ``i`` is the same
    ``<class>/<file>`` (the ``samples`` of an ``ImageFolder``).

    Raises:
        ValueError: another dataset, split, class order or file order; the message says which.
    """
    if not isinstance(selection, Selection):
        selection = load_selection(selection)
    source = f"the dataset {type(dataset).__name__}"
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        check_labels(selection, torch.as_tensor(list(targets), dtype=torch.int64), source)
    elif selection.num_samples is not None and len(dataset) != selection.num_samples:
        raise ValueError(
            f"{selection.path} indexes a split of {selection.num_samples} samples but {source} "
            f"has {len(dataset)}; pass the training split of {selection.data!r}."
        )
    samples = getattr(dataset, "samples", None)
    if selection.files is not None and samples is not None:
        for i, expected in zip(selection.indices.tolist(), selection.files, strict=True):
            found = "/".join(Path(samples[i][0]).parts[-2:])
            if found != expected:
                raise ValueError(
                    f"{selection.path}: index {i} is {expected} in the file but {found} in "
                    f"{source}; the folder's files differ from the selected data (pass the "
                    "train/ folder of the same data)."
                )
    return Subset(dataset, selection.indices.tolist())
