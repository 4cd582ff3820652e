"""The replay memory without Avalanche: exemplars stored per class, in rank order, saved and
loaded as plain tensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from replay_lcmat.files import (
    CorruptDataError,
    atomic_torch_save,
    check_state_header,
    read_torch_file,
)
from replay_lcmat.validation import check_channels_first

MEMORY_FORMAT = "replay-lcmat/class-memory"
MEMORY_VERSION = 1


def class_mean_one(weights: Tensor, labels: Tensor, power: float = 1.0) -> Tensor:
    """Replay weights: ``weights ** power`` (1: cluster sizes, 0.5: tempered, 0: uniform)
    scaled to mean 1 inside every class of ``labels``, so that weighting moves emphasis
    between the exemplars of a class and never between classes. float32 ``[m]``."""
    w = weights.double().pow(power)
    out = torch.empty_like(w)
    for c in torch.unique(labels).tolist():
        mine = labels == c
        out[mine] = w[mine] / w[mine].mean()
    return out.float()


class ClassMemory:
    """Exemplars stored per class, each class in rank order (first = most important).

    For every class label: ``images`` float ``[k, C, H, W]`` (normalised, detached, on the CPU)
    and optional ``sources`` int64 ``[k]`` or ``[k, m]`` saying where each exemplar came from
    (e.g. its index in the training set; ``None`` for synthetic images), and optional
    ``weights`` float ``[k]``: how many samples of the class each exemplar stands for (the
    cluster sizes ``gamma_j`` of a facility-location selection; see :meth:`sample_weights`).
    """

    def __init__(self) -> None:
        self._images: dict[int, Tensor] = {}
        self._sources: dict[int, Tensor | None] = {}
        self._weights: dict[int, Tensor | None] = {}

    def put(
        self,
        label: int,
        images: Tensor,
        sources: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> None:
        """Store (or replace) the exemplars of class ``label``."""
        if not isinstance(images, Tensor) or images.dim() < 2 or not images.is_floating_point():
            raise ValueError(
                f"images of class {label} must be a float tensor [k, C, H, W] (normalised); got "
                f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}."
            )
        if len(images) == 0:
            raise ValueError(f"no exemplars given for class {label}; store at least one.")
        check_channels_first(images, f"images of class {label}")
        if not torch.isfinite(images).all():
            bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
            raise ValueError(
                f"images of class {label} contain NaN or inf in {bad} of {len(images)} images; "
                "drop or regenerate them before storing (a diverged condensation produces these)."
            )
        stored = [c for c in self._images if c != int(label)]
        if stored and images.shape[1:] != self._images[stored[0]].shape[1:]:
            raise ValueError(
                f"images of class {label} have shape {list(images.shape[1:])} per image but the "
                f"stored classes (e.g. class {stored[0]}) have "
                f"{list(self._images[stored[0]].shape[1:])}; all classes of a memory share one "
                "image shape: resize or crop them to match, or use another ClassMemory."
            )
        if sources is not None:
            sources = torch.as_tensor(sources).detach().cpu().long()
            if len(sources) != len(images):
                raise ValueError(
                    f"class {label}: {len(images)} images but {len(sources)} sources; give one "
                    "source per image (or none)."
                )
        if weights is not None:
            weights = torch.as_tensor(weights).detach().cpu().double()
            if weights.shape != (len(images),) or not bool((weights > 0).all()):
                raise ValueError(
                    f"class {label}: weights must be {len(images)} positive numbers, one per "
                    f"image; got shape {tuple(weights.shape)}. Pass weights=None for unweighted."
                )
        self._images[int(label)] = images.detach().cpu().clone()
        self._sources[int(label)] = sources
        self._weights[int(label)] = weights

    def classes(self) -> list[int]:
        """Stored class labels, ascending."""
        return sorted(self._images)

    def images(self, label: int) -> Tensor:
        return self._images[int(label)]

    def sources(self, label: int) -> Tensor | None:
        return self._sources[int(label)]

    def weights(self, label: int) -> Tensor | None:
        return self._weights[int(label)]

    def counts(self) -> dict[int, int]:
        """``{label: number of exemplars}``, labels ascending."""
        return {c: len(self._images[c]) for c in self.classes()}

    def __len__(self) -> int:
        return sum(len(x) for x in self._images.values())

    def __contains__(self, label: object) -> bool:
        return label in self._images

    def update(self, other: ClassMemory) -> None:
        """Add (or replace) every class of ``other``."""
        for c in other.classes():
            self.put(c, other.images(c), other.sources(c), other.weights(c))

    def truncate(self, per_class: int) -> None:
        """Keep the first ``per_class`` exemplars of every class (the top of each ranking)."""
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1; got {per_class}. Use clear() to empty.")
        for c in self.classes():
            self._images[c] = self._images[c][:per_class]
            if self._sources[c] is not None:
                self._sources[c] = self._sources[c][:per_class]
            if self._weights[c] is not None:  # the kept picks' clusters: no longer a partition
                self._weights[c] = self._weights[c][:per_class]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """``(images [M, C, H, W], labels int64 [M])``: classes ascending, each in rank order."""
        if not self._images:
            raise ValueError("the memory is empty; build it first (build_memory or put).")
        labels = [torch.full((len(self._images[c]),), c, dtype=torch.int64) for c in self.classes()]
        return torch.cat([self._images[c] for c in self.classes()]), torch.cat(labels)

    def sample_weights(self, power: float = 1.0) -> Tensor | None:
        """Replay weights aligned with :meth:`tensors`, or ``None`` if a class has none.

        Each class's weights are raised to ``power`` (1: the cluster sizes, 0.5: tempered, 0:
        uniform) and scaled to mean 1 inside the class, so weighting moves emphasis between
        the exemplars of a class and never between classes.
        """
        if not self._images:
            raise ValueError("the memory is empty; build it first (build_memory or put).")
        if any(self._weights[c] is None for c in self.classes()):
            return None
        _, labels = self.tensors()
        return class_mean_one(torch.cat([self._weights[c] for c in self.classes()]), labels, power)

    def state_dict(self) -> dict:
        """Plain tensors, ints and strings (loadable with ``torch.load(weights_only=True)``)."""
        classes = self.classes()
        return {
            "format": MEMORY_FORMAT,
            "version": MEMORY_VERSION,
            "classes": classes,
            "images": [self._images[c] for c in classes],
            "sources": [self._sources[c] for c in classes],
            "weights": [self._weights[c] for c in classes],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ClassMemory:
        check_state_header(
            state,
            MEMORY_FORMAT,
            MEMORY_VERSION,
            "class memory",
            "ClassMemory.state_dict() or ClassMemory.save",
        )
        parts = [state.get(key) for key in ("classes", "images", "sources")]
        if (
            not all(isinstance(part, list | tuple) for part in parts)
            or len({len(part) for part in parts}) != 1
        ):
            raise ValueError(
                "corrupt replay-lcmat class memory: it needs lists 'classes', 'images' and "
                "'sources' of equal length; write it again with ClassMemory.save."
            )
        memory = cls()
        weights = state.get("weights") or [None] * len(state["classes"])
        for c, images, sources, w in zip(
            state["classes"], state["images"], state["sources"], weights, strict=True
        ):
            memory.put(c, images, sources, w)
        return memory

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a crash while writing keeps the previous file)."""
        atomic_torch_save(path, self.state_dict())  # a unique temporary name, then a rename

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassMemory:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no memory file at {path}; write one with ClassMemory.save.")
        state = read_torch_file(path, "class memory", "ClassMemory.save")
        try:
            return cls.from_state_dict(state)
        except ValueError as err:
            raise CorruptDataError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        """One line (classes, exemplars per class, image shape and dtype), whatever the number of
        classes."""
        counts = sorted(set(self.counts().values()))
        if not counts:
            return "ClassMemory(empty)"
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        first = self._images[self.classes()[0]]
        shape = "x".join(str(d) for d in first.shape[1:])
        dtype = str(first.dtype).removeprefix("torch.")
        weighted = ", weighted" if any(w is not None for w in self._weights.values()) else ""
        return (
            f"ClassMemory({len(self.classes())} classes, {per} per class, "
            f"{len(self)} images {shape} {dtype}{weighted})"
        )
