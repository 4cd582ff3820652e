"""Replay memory without Avalanche: a per-class store and the memory policies that fill it.

A *policy* is the name of a registered selector (``"lcmat-s"``, ``"uniform"``, ``"herding"``, ...;
real exemplars) or condenser (``"lcmat-c"``, ``"dm"``, ``"dsa"``, ...; synthetic exemplars).

    memory = build_memory("lcmat-s", images, labels, per_class=10, outputs=extract_outputs(...))
    memory.save("memory.pt"); ClassMemory.load("memory.pt")

The memory-only protocol that uses them is in :mod:`replay_lcmat.continual`.

The Avalanche adapters in ``replay_lcmat.strategies`` call the same functions.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from replay_lcmat.files import CorruptDataError, read_torch_file
from replay_lcmat.validation import check_channels_first

MEMORY_FORMAT = "replay-lcmat/class-memory"
MEMORY_VERSION = 1

# Outer iterations of each condenser in its paper (spec sections 4 and 5b), used when a policy
# is given without iterations=.
PAPER_ITERATIONS = {"dc": 1000, "dsa": 1000, "lcmat-c": 1000, "dm": 20000}


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for a sub-task (a class, an experience, an evaluation) derived from ``seed``.

    Deterministic and well spread (NumPy's ``SeedSequence``); different keys give unrelated
    streams, so e.g. the uniform picks of class 3 do not depend on which classes came before.
    """
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


# ----------------------------------------------------------------------------- the store
class ClassMemory:
    """Exemplars stored per class, each class in rank order (first = most important).

    For every class label: ``images`` float ``[k, C, H, W]`` (normalised, detached, on the CPU)
    and optional ``sources`` int64 ``[k]`` or ``[k, m]`` saying where each exemplar came from
    (e.g. its index in the training set; ``None`` for synthetic images).
    """

    def __init__(self) -> None:
        self._images: dict[int, Tensor] = {}
        self._sources: dict[int, Tensor | None] = {}

    def put(self, label: int, images: Tensor, sources: Tensor | None = None) -> None:
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
        self._images[int(label)] = images.detach().cpu().clone()
        self._sources[int(label)] = sources

    def classes(self) -> list[int]:
        """Stored class labels, ascending."""
        return sorted(self._images)

    def images(self, label: int) -> Tensor:
        return self._images[int(label)]

    def sources(self, label: int) -> Tensor | None:
        return self._sources[int(label)]

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
            self.put(c, other.images(c), other.sources(c))

    def truncate(self, per_class: int) -> None:
        """Keep the first ``per_class`` exemplars of every class (the top of each ranking)."""
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1; got {per_class}. Use clear() to empty.")
        for c in self.classes():
            self._images[c] = self._images[c][:per_class]
            if self._sources[c] is not None:
                self._sources[c] = self._sources[c][:per_class]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """``(images [M, C, H, W], labels int64 [M])``: classes ascending, each in rank order."""
        if not self._images:
            raise ValueError("the memory is empty; build it first (build_memory or put).")
        labels = [torch.full((len(self._images[c]),), c, dtype=torch.int64) for c in self.classes()]
        return torch.cat([self._images[c] for c in self.classes()]), torch.cat(labels)

    def state_dict(self) -> dict:
        """Plain tensors, ints and strings (loadable with ``torch.load(weights_only=True)``)."""
        classes = self.classes()
        return {
            "format": MEMORY_FORMAT,
            "version": MEMORY_VERSION,
            "classes": classes,
            "images": [self._images[c] for c in classes],
            "sources": [self._sources[c] for c in classes],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ClassMemory:
        if not isinstance(state, dict) or state.get("format") != MEMORY_FORMAT:
            raise ValueError(
                "not a replay-lcmat class memory; pass the dict of ClassMemory.state_dict() or a "
                "file written by ClassMemory.save."
            )
        if state.get("version") != MEMORY_VERSION:
            raise ValueError(
                f"class memory version {state.get('version')!r}; expected {MEMORY_VERSION}."
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
        for c, images, sources in zip(
            state["classes"], state["images"], state["sources"], strict=True
        ):
            memory.put(c, images, sources)
        return memory

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a crash while writing keeps the previous file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

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
        return f"ClassMemory({self.counts()})"


# ------------------------------------------------------------------------- the policies
def selection_policies() -> list[str]:
    """Names of the selection policies (registered selectors)."""
    from replay_lcmat.selection import available_selectors

    return list(available_selectors())


def condensation_policies() -> list[str]:
    """Names of the condensation policies (registered condensers)."""
    from replay_lcmat.condensation import available_condensers

    return list(available_condensers())


def policy_kind(policy: str) -> str:
    """``"selection"`` or ``"condensation"``; raises for an unknown name, listing the known ones."""
    if policy in selection_policies():
        return "selection"
    if policy in condensation_policies():
        return "condensation"
    raise ValueError(
        f"unknown memory policy {policy!r}; selection policies: "
        f"{', '.join(selection_policies())}; condensation policies: "
        f"{', '.join(condensation_policies())}."
    )


def policy_needs_model(policy: str) -> bool:
    """True for selection policies that rank with a model's features or logits."""
    if policy_kind(policy) != "selection":
        return False
    from replay_lcmat.selection import SELECTORS

    return bool(SELECTORS[policy].needs)


def _accepts(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None and name in inspect.signature(init).parameters:
            return True
    return False


def warn_small_class(label: int, size: int, per_class: int) -> None:
    warnings.warn(
        f"class {label} has only {size} sample(s), fewer than the {per_class} exemplars per "
        "class asked for; all of them are stored.",
        UserWarning,
        stacklevel=3,
    )


def check_budget(per_class: int, name: str = "per_class") -> None:
    """Raise unless ``per_class`` is an integer >= 1 (``name`` is used in the message)."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {per_class!r}.")


def select_exemplars(
    policy,
    *,
    labels: Tensor,
    features: Tensor | None = None,
    logits: Tensor | None = None,
    per_class: int,
    seed: int = 0,
    rank_small: bool = False,
    **options,
) -> Tensor:
    """Class-balanced real exemplars picked by a selector.

    Each class is ranked on its own. With a policy name, every class gets a fresh selector,
    seeded with ``derive_seed(seed, label)`` where the selector takes a seed, so a class's picks
    do not depend on the other classes in the call. A class with at most ``per_class`` samples
    is kept whole in index order, without ranking, with a warning when it has fewer
    (``rank_small=True``: ranked whole instead, no warning).

    Args:
        policy: a selector name (see :func:`selection_policies`) or a
            :class:`replay_lcmat.selection.Selector` instance (used as configured).
        labels: int64 ``[n]``.
        features, logits: ``[n, d]`` / ``[n, c]`` of the selection model (see
            :func:`replay_lcmat.selection.extract_outputs`), for selectors that use them.
        per_class: exemplars per class.
        options: selector options for a policy name (e.g. ``eps=0.05`` for LCMat-S).

    Returns:
        int64 ``[m]`` indices into the inputs: classes ascending, each in rank (greedy) order.
    """
    from replay_lcmat.selection import SELECTORS, make_selector

    check_budget(per_class)
    if isinstance(policy, str):
        if policy_kind(policy) != "selection":
            raise ValueError(f"{policy!r} is a condensation policy; use condense_exemplars.")
        seeded_selector = _accepts(SELECTORS[policy], "seed") and "seed" not in options

        def selector_for(label: int):
            extra = {"seed": derive_seed(seed, label)} if seeded_selector else {}
            return make_selector(policy, **options, **extra)

    elif callable(getattr(policy, "select", None)):
        if options:
            raise ValueError("options apply to a policy name; configure the selector instead.")

        def selector_for(label: int):
            return policy

    else:
        raise ValueError(f"policy must be a selector name or a Selector; got {policy!r}.")
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) == 0:
        raise ValueError("no samples to select from: labels is empty.")
    picks = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) <= per_class and not (rank_small and len(members) > 1):
            if len(members) < per_class and not rank_small:
                warn_small_class(label, len(members), per_class)
            picks.append(members)
            continue
        result = selector_for(label).select(
            labels=labels[members],
            features=None if features is None else features[members],
            logits=None if logits is None else logits[members],
            per_class=min(per_class, len(members)),
        )
        picks.append(members[result.indices])
    return torch.cat(picks)


def condense_exemplars(
    policy: str,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int,
    iterations: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    **options,
) -> tuple[Tensor, Tensor]:
    """``per_class`` synthetic images of every class, learned by the condenser ``policy``.

    All classes with more than ``per_class`` samples are condensed in one call (seed ``seed``);
    a class with at most ``per_class`` samples is stored whole as real images (with a warning
    when it has fewer).

    Args:
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        iterations: outer iterations (default: the method's paper value, PAPER_ITERATIONS).
        options: condenser options (e.g. ``network_options={"width": 32}``, ``batch_real=64``).

    Returns:
        ``(images [m, C, H, W] float on the CPU, labels int64 [m])``, classes ascending.
    """
    from replay_lcmat.condensation import make_condenser

    check_budget(per_class)
    if policy_kind(policy) != "condensation":
        raise ValueError(f"{policy!r} is a selection policy; use select_exemplars.")
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a float normalised tensor [n, C, H, W].")
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) != len(images) or len(labels) == 0:
        raise ValueError(
            f"need one label per image and at least one image; got {len(images)} "
            f"images and {len(labels)} labels."
        )
    present, counts = torch.unique(labels, return_counts=True)
    big = [c for c, n in zip(present.tolist(), counts.tolist(), strict=True) if n > per_class]
    condensed: dict[int, Tensor] = {}
    if big:
        keep = torch.isin(labels, torch.tensor(big))
        condenser = make_condenser(
            policy,
            ipc=per_class,
            iterations=PAPER_ITERATIONS.get(policy, 1000) if iterations is None else iterations,
            device=device,
            seed=seed,
            progress=progress,
            **options,
        )
        syn, syn_labels = condenser.condense(images[keep.to(images.device)], labels[keep])
        syn, syn_labels = syn.detach().cpu(), syn_labels.cpu()
        condensed = {c: syn[syn_labels == c] for c in big}
    out_images, out_labels = [], []
    for c, n in zip(present.tolist(), counts.tolist(), strict=True):
        if c in condensed:
            part = condensed[c]
        else:
            if n < per_class:
                warn_small_class(c, n, per_class)
            part = images[(labels == c).to(images.device)].detach().cpu()
        out_images.append(part)
        out_labels.append(torch.full((len(part),), c, dtype=torch.int64))
    return torch.cat(out_images), torch.cat(out_labels)


def build_memory(
    policy: str,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int,
    outputs=None,
    model=None,
    stats: str | None = None,
    seed: int = 0,
    iterations: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **options,
) -> ClassMemory:
    """The memory of ``policy`` for the classes in ``labels``.

    Args:
        images: float normalised ``[n, C, H, W]``; labels: int64 ``[n]``.
        outputs: :class:`replay_lcmat.selection.ModelOutputs` of the selection model on
            ``images`` (needed by selection policies that use features or logits).
        model, stats: instead of ``outputs``, the selection model; its outputs are taken by
            :func:`replay_lcmat.selection.extract_outputs` with ``stats`` (default
            :data:`replay_lcmat.selection.extract.DEFAULT_STATS`) on ``device``.
        seed, iterations, device, progress, options: see :func:`select_exemplars` /
            :func:`condense_exemplars`.

    Returns:
        A :class:`ClassMemory`; selected exemplars carry their index into ``images`` as source.
    """
    memory = ClassMemory()
    if policy_kind(policy) == "selection":
        if outputs is not None and (model is not None or stats is not None):
            raise ValueError(
                "pass either outputs=... or model=... (with stats=...), not both: the outputs "
                "were already taken with some statistics."
            )
        if outputs is None and model is not None and policy_needs_model(policy):
            from replay_lcmat.selection.extract import DEFAULT_STATS, extract_outputs

            outputs = extract_outputs(
                model, images, labels, stats=stats or DEFAULT_STATS, device=device
            )
        if outputs is None and policy_needs_model(policy):
            raise ValueError(
                f"policy {policy!r} ranks with a model: pass model=<a model trained on these "
                "images> (and stats=...), or outputs=extract_outputs(model, images, labels) "
                "(replay_lcmat.selection)."
            )
        if outputs is not None and len(outputs.labels) != len(labels):
            raise ValueError(
                f"outputs cover {len(outputs.labels)} samples but there are {len(labels)} images; "
                "extract them from the same images."
            )
        picks = select_exemplars(
            policy,
            labels=labels,
            features=None if outputs is None else outputs.features,
            logits=None if outputs is None else outputs.logits,
            per_class=per_class,
            seed=seed,
            **options,
        )
        picked_labels = torch.as_tensor(labels).cpu()[picks]
        for c in torch.unique(picked_labels).tolist():
            idx = picks[picked_labels == c]
            memory.put(c, images[idx.to(images.device)], sources=idx)
        return memory
    if model is not None or stats is not None:
        raise ValueError(
            f"{policy!r} is a condensation policy: it trains its own networks, so model= and "
            "stats= do not apply; drop them."
        )
    syn, syn_labels = condense_exemplars(
        policy,
        images,
        labels,
        per_class=per_class,
        iterations=iterations,
        device=device,
        seed=seed,
        progress=progress,
        **options,
    )
    for c in torch.unique(syn_labels).tolist():
        memory.put(c, syn[syn_labels == c])
    return memory
