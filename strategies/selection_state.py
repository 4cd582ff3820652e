"""What a saved selection memory holds and how it is checked against a stream: the sources of
the exemplars (experience id, index), their labels and image fingerprints.

A :class:`~replay_lcmat.strategies.SelectionBuffer` state is read back only when its format and
version are :data:`STATE_FORMAT` / :data:`STATE_VERSION`.
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.utils import AvalancheDataset, concat_datasets
from torch import Tensor

from replay_lcmat.files import check_state_header
from replay_lcmat.strategies.datasets import dataset_targets, dataset_task_labels, dataset_tensors

STATE_FORMAT = "replay-lcmat/selection-buffer"
# The one state layout read back: per group the class, task, sources, labels and image
# fingerprints of the exemplars, whether groups are keyed by (task, class), and the stream name;
# any other version is refused.
STATE_VERSION = 3


def image_fingerprint(data: AvalancheDataset) -> Tensor | None:
    """float64 ``[k, 2]``: per sample, the sum and the sum of squares of its image as read in the
    eval transform group; ``None`` when the images are not tensors. Cheap, and tells which
    sample differs."""
    if len(data) == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    try:
        x, _, _ = dataset_tensors(data)
    except ValueError:
        return None
    flat = x.flatten(1).double()
    return torch.stack([flat.sum(1), flat.square().sum(1)], dim=1)


def find_experiences(stream, sources: list[Tensor]) -> dict[int, AvalancheDataset]:
    """``{experience id: dataset}`` of the experiences the sources refer to (any stream,
    including generator streams without ``len``)."""
    needed = {int(e) for s in sources for e in s[:, 0].tolist()}
    found: dict[int, AvalancheDataset] = {}
    if needed:
        for exp in stream:
            e = int(exp.current_experience)
            if e in needed:
                found[e] = exp.dataset
                if len(found) == len(needed):
                    break
    missing = sorted(needed - set(found))
    if missing:
        raise ValueError(
            f"the memory refers to experience(s) {missing}, which the "
            f"{getattr(stream, 'name', 'given')!r} stream does not hold; restore with the train "
            "stream of the same benchmark (same class order and number of experiences)."
        )
    return found


def gather_exemplars(
    experiences: dict[int, AvalancheDataset], sources: Tensor, name
) -> AvalancheDataset:
    """The samples at ``sources`` [k, 2] (experience id, index), in that order."""
    if len(sources) == 0:
        return concat_datasets([])
    used = torch.unique(sources[:, 0]).tolist()
    offsets, total = {}, 0
    for e in used:
        size = len(experiences[e])
        bad = sources[(sources[:, 0] == e) & (sources[:, 1] >= size), 1]
        if len(bad):
            raise ValueError(
                f"the memory refers to sample {int(bad[0])} of experience {e}, which has only "
                f"{size} samples in the {name!r} stream; restore with the stream the memory was "
                "built from (the train stream, same class order and number of experiences)."
            )
        offsets[e], total = total, total + size
    index = torch.tensor([offsets[int(e)] + int(i) for e, i in sources.tolist()])
    return concat_datasets([experiences[e] for e in used]).subset(index)


def check_restored_group(label: int, group, saved_labels, saved_print) -> None:
    """Raise unless the restored exemplars of class ``label`` have the saved labels and images."""
    got = dataset_targets(group.buffer)
    expected = saved_labels
    wrong = torch.nonzero(got != expected).flatten()
    if len(wrong):
        j = int(wrong[0])
        e, i = group.sources[j].tolist()
        raise ValueError(
            f"the stream does not match the memory: class {label}'s exemplar at experience {e}, "
            f"sample {i} is a sample of class {int(got[j])} in this stream ({len(wrong)} of "
            f"{len(got)} exemplars differ). The memory was built from another stream (other class "
            "order, number of experiences or split); restore with that stream."
        )
    if saved_print is None:
        return
    now = image_fingerprint(group.buffer)
    if now is None:
        return
    close = torch.isclose(now, saved_print, rtol=1e-5, atol=1e-6).all(1)
    if not close.all():
        j = int(torch.nonzero(~close).flatten()[0])
        e, i = group.sources[j].tolist()
        raise ValueError(
            f"the stream does not match the memory: class {label}'s exemplar at experience {e}, "
            f"sample {i} has another image than when the memory was saved ({int((~close).sum())} "
            f"of {len(close)} differ): other data, another split or other eval transforms. "
            "Restore with the stream the memory was built from."
        )


def check_restored_task(group, task_aware: bool) -> None:
    """Raise unless the restored exemplars carry the task label of their group's key: every one
    ``group.task`` in a task-aware memory (keyed by (task, class)), every one 0 otherwise."""
    got = dataset_task_labels(group.buffer)
    wrong = torch.nonzero(got != group.task).flatten()
    if len(wrong):
        j = int(wrong[0])
        e, i = group.sources[j].tolist()
        kind = (
            f"task {group.task}'s class {group.label}"
            if task_aware
            else f"class {group.label} (a class-incremental memory, task 0)"
        )
        raise ValueError(
            f"the stream does not match the memory: {kind} has an exemplar at experience {e}, "
            f"sample {i} with task label {int(got[j])} in this stream ({len(wrong)} of "
            f"{len(got)} exemplars differ). Restore with the stream the memory was built from "
            "(the same task labels: task-incremental or class-incremental)."
        )


def selection_state(buffer) -> dict:
    """The state of a :class:`~replay_lcmat.strategies.SelectionBuffer` as plain tensors
    (loadable with ``torch.load(weights_only=True)``): per class, the sources of its exemplars
    in rank order, their labels and a fingerprint of their images (:func:`image_fingerprint`),
    and the name of the stream they come from; in a task-aware memory also the task of each
    group (the key is ``(task, class)``)."""
    groups = list(buffer.buffer_groups.values())
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "per_class": buffer.per_class,
        "mem_size": buffer.mem_size,
        "stream": buffer.stream_name,
        "task_aware": buffer.task_aware,
        "classes": [g.label for g in groups],
        "tasks": [g.task for g in groups],
        "sources": [g.sources.clone() for g in groups],
        "ranked": [g.ranked for g in groups],
        "labels": [dataset_targets(g.buffer) for g in groups],
        "fingerprints": [image_fingerprint(g.buffer) for g in groups],
    }


def check_selection_state(state: dict, stream, per_class: int | None, mem_size: int | None) -> None:
    """Raise unless ``state`` is a selection-buffer state of this version, with the sizing
    ``per_class`` / ``mem_size`` of the buffer it is restored into, and ``stream`` can be the
    stream it was built from."""
    check_state_header(
        state, STATE_FORMAT, STATE_VERSION, "selection-buffer", "SelectionBuffer.state_dict()"
    )
    if stream is None:
        raise ValueError(
            "a selection memory stores indices into the stream: pass stream=<the benchmark's "
            "train_stream> to restore it."
        )
    saved_per_class, saved_total = state["per_class"], state["mem_size"]
    if (saved_per_class, saved_total) != (per_class, mem_size):
        saved = f"per_class={saved_per_class}" if saved_total is None else f"mem_size={saved_total}"
        mine = f"per_class={per_class}" if mem_size is None else f"mem_size={mem_size}"
        raise ValueError(
            f"the saved memory was built with {saved}, this buffer with {mine}; restore "
            f"into a buffer (or plugin) built with {saved}, then resize it if you want "
            "another size."
        )
    saved_name, name = state["stream"], getattr(stream, "name", None)
    # a memory built from an unnamed stream only refuses the test stream
    other = name != saved_name if saved_name is not None else name == "test"
    if name is not None and other:
        raise ValueError(
            f"the memory was built from the {saved_name or 'train'!r} stream, this is the "
            f"{name!r} stream; restore with the stream the exemplars were taken from "
            "(benchmark.train_stream for a memory built while training)."
        )


def restore_groups(state: dict, stream, sizes: list[int], make_group) -> dict:
    """The groups of a checked state (:func:`check_selection_state`), gathered from ``stream``
    and checked exemplar by exemplar; ``make_group(label, task, size)`` builds an empty one.
    Keys: the class, or ``(task, class)`` in a task-aware memory."""
    task_aware = bool(state["task_aware"])
    name = getattr(stream, "name", None)
    rows = zip(
        state["classes"],
        state["tasks"],
        state["sources"],
        state["ranked"],
        state["labels"],
        state["fingerprints"],
        sizes,
        strict=True,
    )
    experiences = find_experiences(stream, state["sources"])
    groups = {}
    for label, task, sources, ranked, saved_labels, saved_print, size in rows:
        group = make_group(label, task, size)
        group.buffer = gather_exemplars(experiences, sources, name)
        group.sources = sources.clone()
        check_restored_group(label, group, saved_labels, saved_print)
        check_restored_task(group, task_aware)
        group.ranked = ranked
        groups[(task, label) if task_aware else label] = group
    return groups
