"""Independent references for every registered selector and condenser, keyed by name.

``REFERENCES[name]`` is a :class:`Reference`: ``run_method()`` runs the library on a tiny
problem, ``run_reference(got)`` computes the same answer independently (brute-force loops,
autograd in float64, formulas restated from the papers) and
``compare(got, expected)`` asserts they agree: exact equality for selections, a float64
tolerance for condensation updates and losses. ``tests/test_references.py`` runs every
registered name through this table, so a new method without a reference fails there.

A reference may read the random draws the method made (the initial network, the shared
augmentation parameters, the first center of k-center), never its results. ``wrong`` holds
deliberately broken references (a flipped sign, a missing term) that must NOT match: proof
that the comparison can fail.

The registries and the two verbs (select, condense) are called only from the four functions
right below; the condensation references also use the condensers' documented options (a
network factory, ``augment=`` a DSA instance, ``outer_loop``, ``inner_loop``, ``lr_net``...).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import Tensor, nn

from replay_lcmat.condensation import CONDENSERS, DSA, make_condenser
from replay_lcmat.selection import SELECTORS, make_selector


# ------------------------------------------------------------------ what is registered
def registered_selectors() -> list[str]:
    """Names of every registered selector (``replay_lcmat.selection.SELECTORS``)."""
    return list(SELECTORS)


def registered_condensers() -> list[str]:
    """Names of every registered condenser (``replay_lcmat.condensation.CONDENSERS``)."""
    return list(CONDENSERS)


# ------------------------------------------------------------------ the library calls
def run_selector(
    name: str, problem: SelectionProblem, **options: Any
) -> tuple[Tensor, Tensor | None]:
    """``(indices int64 [m], weights [m] or None)`` of selector ``name`` on ``problem``."""
    result = make_selector(name, **options).select(
        features=problem.features,
        logits=problem.logits,
        labels=problem.labels,
        per_class=problem.per_class,
    )
    return result.indices, result.weights


def run_condenser(
    name: str, images: Tensor, labels: Tensor, per_class: int, **options: Any
) -> tuple[Tensor, list[float]]:
    """``(synthetic images [k*per_class, C, H, W] in class order, loss of each iteration)``."""
    result = make_condenser(name, **options).condense(images, labels, per_class=per_class)
    return result.images, list(result.losses)


@dataclass(frozen=True)
class Reference:
    """A registered method, its independent reference and how to compare them."""

    what: str
    run_method: Callable[[], Any]
    run_reference: Callable[[Any], Any]
    compare: Callable[[Any, Any], None]
    wrong: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


REFERENCES: dict[str, Reference] = {}


# ===================================================================== selection
@dataclass(frozen=True)
class SelectionProblem:
    """Three interleaved classes: features ``[n, d]`` (>= 0), logits ``[n, c]``, float64."""

    features: Tensor
    logits: Tensor
    labels: Tensor
    per_class: int = 4


@cache
def selection_problem() -> SelectionProblem:
    """27 samples in 3 classes (9, 7, 11), 5 features, 3 logits; 4 picks per class."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 9 + [1] * 7 + [2] * 11)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    features = torch.randn(len(labels), 5, generator=gen, dtype=torch.float64).relu()
    logits = 2 * torch.randn(len(labels), 3, generator=gen, dtype=torch.float64)
    return SelectionProblem(features, logits, labels)


ClassPicker = Callable[[Tensor, Tensor, Tensor, int], tuple[list[int], Tensor | None]]


def by_class(problem: SelectionProblem, pick: ClassPicker) -> tuple[Tensor, Tensor | None]:
    """Run ``pick(h, z, y, budget) -> (local picks, local weights | None)`` class by class
    (ascending labels, members in index order) and map the picks back to global indices."""
    indices, weights = [], []
    for c in sorted(set(problem.labels.tolist())):
        members = [i for i, y in enumerate(problem.labels.tolist()) if y == c]
        m = torch.tensor(members)
        local, w = pick(
            problem.features[m], problem.logits[m], problem.labels[m], problem.per_class
        )
        indices += [members[j] for j in local]
        weights.append(w)
    has_weights = all(w is not None for w in weights)
    return torch.tensor(indices), torch.cat(weights) if has_weights else None


def head_grads_and_hessians(h: Tensor, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample gradient and Hessian diagonal of ``CE(z + W h + b, y)`` w.r.t. ``(b, W)`` at
    ``W = 0, b = 0`` by autograd, ``[n, c(d+1)]`` each (b first, then W by rows).

    Every sample gets its own copy of ``theta = (b, W)``, so one backward pass of the summed
    loss gives all per-sample gradients, and one more per coordinate a Hessian diagonal column.
    """
    (n, d), c = h.shape, z.shape[1]
    theta = torch.zeros(n, c * (d + 1), dtype=h.dtype, requires_grad=True)
    weight = theta[:, c:].view(n, c, d)
    logits = z + (weight @ h.unsqueeze(2)).squeeze(2) + theta[:, :c]
    loss = F.cross_entropy(logits, y, reduction="sum")
    (grads,) = torch.autograd.grad(loss, theta, create_graph=True)
    columns = [
        torch.autograd.grad(grads[:, k].sum(), theta, retain_graph=True)[0][:, k]
        for k in range(theta.shape[1])
    ]
    return grads.detach(), torch.stack(columns, dim=1)


def pairwise_norms(x: Tensor, p: float = 2.0) -> Tensor:
    """``[n, n]`` of ``||x_i - x_j||_p`` by a loop over pairs."""
    n = len(x)
    return torch.tensor(
        [[float((x[i] - x[j]).norm(p=p)) for j in range(n)] for i in range(n)], dtype=x.dtype
    )


def greedy_facility_location(sim: Tensor, budget: int) -> list[int]:
    """Naive greedy on ``F(S) = sum_i max(0, max_{j in S} s_ji)``; ties (to 1e-9) to the lowest
    index. ``sim[j]`` is candidate ``j``'s similarity to every point."""
    picks, cov = [], torch.zeros(sim.shape[1], dtype=sim.dtype)
    for _ in range(budget):
        values = torch.maximum(cov.unsqueeze(0), sim).clamp(min=0).sum(1)
        values[picks] = -torch.inf
        best = values.max()
        j = int(torch.nonzero(values >= best - 1e-9 * max(1.0, float(best.abs())))[0])
        picks.append(j)
        cov = torch.maximum(cov, sim[j])
    return picks


def representation_counts(sim: Tensor, picks: list[int]) -> Tensor:
    """``gamma_j``: points whose most similar pick is ``j`` (ties: the earlier pick)."""
    counts = [0.0] * len(picks)
    for i in range(sim.shape[1]):
        values = [float(sim[j, i]) for j in picks]
        counts[values.index(max(values))] += 1
    return torch.tensor(counts, dtype=sim.dtype)


def facility_location_picks(
    d: Tensor, budget: int, weighted: bool
) -> tuple[list[int], Tensor | None]:
    """Greedy on ``s = max(d) - d`` (LCMat paper Sec. 3, offset "max")."""
    sim = d.max() - d
    picks = greedy_facility_location(sim, budget)
    return picks, representation_counts(sim, picks) if weighted else None


def lcmat_dissimilarity_reference(
    h: Tensor, z: Tensor, y: Tensor, eps: float, k_dims: int
) -> Tensor:
    """``||g_i - g_j||_2 + eps ||lambda_iK - lambda_jK||_1`` with everything materialised; K =
    the ``k_dims`` Hessian coordinates of largest variance over the class."""
    g, lam = head_grads_and_hessians(h, z, y)
    top = torch.sort(lam.var(0), descending=True, stable=True).indices[:k_dims]
    return pairwise_norms(g) + eps * pairwise_norms(lam[:, top], p=1)


def reference_lcmat(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    per_class: int,
    eps: float = 0.01,
    k_dims: int = 100,
) -> list[int]:
    """LCMat-S picks (classes ascending, greedy order) with everything materialised."""
    problem = SelectionProblem(features, logits, labels, per_class)
    indices, _ = by_class(
        problem,
        lambda h, z, y, b: facility_location_picks(
            lcmat_dissimilarity_reference(h, z, y, eps, k_dims), b, weighted=False
        ),
    )
    return indices.tolist()


def herding_picks(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
    """Each step adds the sample that brings the mean of the picks closest to the class mean."""
    chosen: list[int] = []
    target = h.mean(0)
    for _ in range(budget):
        gaps = [
            math.inf if j in chosen else float((h[chosen + [j]].mean(0) - target).norm())
            for j in range(len(h))
        ]
        chosen.append(gaps.index(min(gaps)))
    return chosen, None


def farthest_first(
    distance: Callable[[int, int], float], n: int, budget: int, first: int
) -> list[int]:
    """k-center greedy by a loop over pairs: the point farthest from its nearest pick next."""
    picks = [first]
    for _ in range(budget - 1):
        nearest = [
            -math.inf if i in picks else min(distance(i, j) for j in picks) for i in range(n)
        ]
        picks.append(nearest.index(max(nearest)))
    return picks


def symmetric_kl(p: Tensor, q: Tensor) -> float:
    """``KL(p||q) + KL(q||p)`` by a loop over classes."""
    return sum(
        float(a) * math.log(float(a) / float(b)) + float(b) * math.log(float(b) / float(a))
        for a, b in zip(p, q, strict=True)
    )


def class_seed(seed: int, label: int) -> int:
    """The documented per-class seed: the first word of NumPy's ``SeedSequence([seed, label])``."""
    return int(np.random.SeedSequence([seed, label]).generate_state(1)[0])


def kcenter_reference(
    problem: SelectionProblem, seed: int, on_probabilities: bool, per_class_seed: bool = True
) -> tuple[Tensor, None]:
    """k-center greedy per class; the first center of class ``c`` is drawn from a generator
    seeded with :func:`class_seed` ``(seed, c)`` (the documented contract; ``per_class_seed=False``:
    one generator seeded with ``seed`` for all classes, a deliberate mistake). Distances:
    Euclidean on features, or the symmetric KL of the predicted probabilities (contextual
    diversity)."""
    shared = torch.Generator().manual_seed(seed)

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
        gen = (
            torch.Generator().manual_seed(class_seed(seed, int(y[0]))) if per_class_seed else shared
        )
        first = int(torch.randint(len(y), (1,), generator=gen))
        if on_probabilities:
            p = torch.softmax(z, dim=1)
            dist = lambda i, j: symmetric_kl(p[i], p[j])  # noqa: E731
        else:
            dist = lambda i, j: math.dist(h[i].tolist(), h[j].tolist())  # noqa: E731
        return farthest_first(dist, len(y), budget, first), None

    return by_class(problem, pick)


def uniform_reference(
    problem: SelectionProblem, seed: int, per_class_seed: bool = True
) -> tuple[Tensor, None]:
    """Documented contract: class ``c`` takes the first ``budget`` entries of a random
    permutation of its members drawn from a generator seeded with :func:`class_seed`
    ``(seed, c)`` (``per_class_seed=False``: one generator for all classes, a mistake)."""
    shared = torch.Generator().manual_seed(seed)

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
        gen = (
            torch.Generator().manual_seed(class_seed(seed, int(y[0]))) if per_class_seed else shared
        )
        return torch.randperm(len(y), generator=gen)[:budget].tolist(), None

    return by_class(problem, pick)


def uncertainty_picks(kind: str) -> ClassPicker:
    """Most uncertain first (numpy scores, stable sort: ties to the lowest index)."""

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
        p = np.exp(z.numpy() - z.numpy().max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top2 = -np.sort(-p, axis=1)[:, :2]
        score = {
            "least-confidence": 1 - p.max(1),
            "entropy": -(p * np.log(p)).sum(1),
            "margin": top2[:, 1] - top2[:, 0],
        }[kind]
        return np.argsort(-score, kind="stable")[:budget].tolist(), None

    return pick


def gradmatch_picks(ridge: float) -> ClassPicker:
    """Orthogonal matching pursuit towards ``t = sum_i g_i`` on materialised gradients; weights
    ``argmin_{w >= 0} ||A w - t||^2 + lam ||w||^2`` as one augmented NNLS problem,
    ``lam = ridge * mean_i ||g_i||^2``."""

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], Tensor]:
        g, _ = head_grads_and_hessians(h, z, y)
        g_np, target = g.numpy(), g.sum(0).numpy()
        lam = ridge * float((g_np**2).sum(1).mean())
        picks: list[int] = []
        w = np.zeros(0)
        for _ in range(budget):
            residual = target - g_np[picks].T @ w
            score = g_np @ residual
            score[picks] = -np.inf
            picks.append(int(np.argmax(score)))
            a = g_np[picks].T
            stacked = np.vstack([a, math.sqrt(lam) * np.eye(len(picks))])
            w, _ = nnls(stacked, np.concatenate([target, np.zeros(len(picks))]))
        return picks, torch.from_numpy(w)

    return pick


def glister_picks(eta: float) -> ClassPicker:
    """Greedy Glister with an explicit last-layer update: the head ``(b, W)`` starts at the
    selection model (offset 0 on its logits), each step picks ``argmax_j g_j . gbar(theta_t)``
    (``gbar`` the class's mean gradient by autograd) and moves ``theta -= eta g_j``."""

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
        c, d = z.shape[1], h.shape[1]
        g0, _ = head_grads_and_hessians(h, z, y)
        theta = torch.zeros(c * (d + 1), dtype=h.dtype)
        picks: list[int] = []
        for _ in range(budget):
            t = theta.clone().requires_grad_(True)
            loss = F.cross_entropy(z + h @ t[c:].view(c, d).T + t[:c], y)
            (gbar,) = torch.autograd.grad(loss, t)
            score = g0 @ gbar
            score[picks] = -torch.inf
            j = int(torch.argmax(score))
            picks.append(j)
            theta = theta - eta * g0[j]
        return picks, None

    return pick


def assert_same_selection(
    got: tuple[Tensor, Tensor | None], expected: tuple[Tensor, Tensor | None]
) -> None:
    """Same indices in the same order (exact); weights equal to float64 rounding."""
    assert got[0].tolist() == expected[0].tolist(), (got[0].tolist(), expected[0].tolist())
    assert (got[1] is None) == (expected[1] is None), "one side has weights, the other none"
    if got[1] is not None:
        torch.testing.assert_close(got[1].double(), expected[1].double(), rtol=1e-6, atol=1e-8)


def _selector(
    name: str,
    what: str,
    reference: Callable[[SelectionProblem], Any],
    wrong: dict[str, Callable[[SelectionProblem], Any]],
    **options: Any,
) -> None:
    """Register ``name``: the method with ``options`` vs. ``reference``; ``wrong`` holds
    references with one deliberate mistake each."""
    REFERENCES[name] = Reference(
        what=what,
        run_method=lambda: run_selector(name, selection_problem(), **options),
        run_reference=lambda got: reference(selection_problem()),
        compare=assert_same_selection,
        wrong={
            label: (lambda got, f=mistake: f(selection_problem()))
            for label, mistake in wrong.items()
        },
    )


def gradient_distances(h: Tensor, z: Tensor, y: Tensor) -> Tensor:
    """Craig: distances of the autograd gradients."""
    return pairwise_norms(head_grads_and_hessians(h, z, y)[0])


def preconditioned_distances(h: Tensor, z: Tensor, y: Tensor, damping: float = 0.05) -> Tensor:
    """AdaCore: distances of ``g / (lambda + damping)``, both by autograd."""
    g, lam = head_grads_and_hessians(h, z, y)
    return pairwise_norms(g / (lam + damping))


def greedy_on(
    dissimilarity: Callable[[Tensor, Tensor, Tensor], Tensor], weighted: bool
) -> Callable:
    """Facility-location reference on ``dissimilarity(h, z, y)``, class by class."""
    return lambda problem: by_class(
        problem, lambda h, z, y, b: facility_location_picks(dissimilarity(h, z, y), b, weighted)
    )


def one_sided_kl_kcenter(problem: SelectionProblem, seed: int) -> tuple[Tensor, None]:
    """A wrong contextual diversity: k-center under ``KL(p_i || p_j)`` only."""

    def pick(h: Tensor, z: Tensor, y: Tensor, budget: int) -> tuple[list[int], None]:
        gen = torch.Generator().manual_seed(class_seed(seed, int(y[0])))
        first = int(torch.randint(len(y), (1,), generator=gen))
        p = torch.softmax(z, dim=1).tolist()
        kl = lambda i, j: sum(a * math.log(a / b) for a, b in zip(p[i], p[j], strict=True))  # noqa: E731
        return farthest_first(kl, len(y), budget, first), None

    return by_class(problem, pick)


_selector(
    "uniform",
    "seeded random permutation per class",
    lambda p: uniform_reference(p, 5),
    {
        "another seed": lambda p: uniform_reference(p, 6),
        "one generator for all classes": lambda p: uniform_reference(p, 5, per_class_seed=False),
    },
    seed=5,
)
_selector(
    "herding",
    "herding by a loop over candidates",
    lambda p: by_class(p, herding_picks),
    {"first samples": lambda p: by_class(p, lambda h, z, y, b: (list(range(b)), None))},
)
_selector(
    "kcenter",
    "k-center greedy with a loop over pairs (Euclidean)",
    lambda p: kcenter_reference(p, 2, on_probabilities=False),
    {
        "on probabilities": lambda p: kcenter_reference(p, 2, on_probabilities=True),
        "one generator for all classes": lambda p: kcenter_reference(
            p, 2, on_probabilities=False, per_class_seed=False
        ),
    },
    seed=2,
)
_selector(
    "contextual-diversity",
    "k-center greedy with a loop over pairs under the symmetric KL of softmax probabilities",
    lambda p: kcenter_reference(p, 3, on_probabilities=True),
    {
        "one-sided KL": lambda p: one_sided_kl_kcenter(p, 3),
        "Euclidean on features": lambda p: kcenter_reference(p, 3, on_probabilities=False),
    },
    seed=3,
)
for _kind, _other in (
    ("least-confidence", "entropy"),
    ("entropy", "margin"),
    ("margin", "least-confidence"),
):
    _selector(
        _kind,
        f"numpy {_kind} scores, stable sort",
        lambda p, k=_kind: by_class(p, uncertainty_picks(k)),
        {f"{_other} scores": lambda p, k=_other: by_class(p, uncertainty_picks(k))},
    )
_selector(
    "craig",
    "naive facility-location greedy on autograd gradient distances; weights by counting",
    greedy_on(gradient_distances, weighted=True),
    {"no weights": greedy_on(gradient_distances, weighted=False)},
)
_selector(
    "adacore",
    "naive greedy on distances of autograd gradients / (autograd Hessian diagonal + damping)",
    greedy_on(preconditioned_distances, weighted=True),
    {"not preconditioned": greedy_on(gradient_distances, weighted=True)},
    damping=0.05,
)
_selector(
    "lcmat-s",
    "naive greedy on materialised gradient + eps * top-K Hessian L1 distances (LCMat paper Sec. 3)",
    greedy_on(lambda h, z, y: lcmat_dissimilarity_reference(h, z, y, 0.5, 6), weighted=False),
    {
        "no curvature term (Craig)": greedy_on(gradient_distances, weighted=False),
        "all Hessian coordinates": greedy_on(
            lambda h, z, y: lcmat_dissimilarity_reference(h, z, y, 0.5, 100), weighted=False
        ),
    },
    eps=0.5,
    k_dims=6,
)
_selector(
    "gradmatch",
    "OMP on materialised gradients, weights by augmented NNLS",
    lambda p: by_class(p, gradmatch_picks(0.01)),
    {"ten times the ridge": lambda p: by_class(p, gradmatch_picks(0.1))},
    ridge=0.01,
)
_selector(
    "glister",
    "greedy with an explicit autograd head update",
    lambda p: by_class(p, glister_picks(0.5)),
    {"no head update": lambda p: by_class(p, glister_picks(0.0))},
    eta=0.5,
)


# ===================================================================== condensation
CLASSES = (2, 5)  # labels of the tiny data set; the matching networks see 0, 1
IPC = 2


@cache
def condensation_data() -> tuple[Tensor, Tensor]:
    """Two classes of five float64 images ``[10, 3, 6, 6]``: a class pattern plus noise."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(len(CLASSES), 3, 6, 6, generator=g, dtype=torch.float64)
    local = torch.arange(len(CLASSES)).repeat_interleave(5)
    images = patterns[local] + 0.5 * torch.randn(
        len(local), 3, 6, 6, generator=g, dtype=torch.float64
    )
    return images, torch.tensor(CLASSES)[local]


def tiny_network(*, in_channels: int, num_classes: int, image_size: int) -> nn.Sequential:
    """conv 3x3 (4 channels) -> tanh -> 2x2 average pool -> linear head, float64."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (image_size // 2) ** 2, num_classes),
    ).double()


class RecordingNetworks:
    """Network factory that keeps a copy of every network it builds, before any training."""

    def __init__(self) -> None:
        self.initial: list[nn.Sequential] = []

    def __call__(self, **shape: int) -> nn.Sequential:
        net = tiny_network(**shape)
        self.initial.append(copy.deepcopy(net))
        return net

    def __repr__(self) -> str:
        return "RecordingNetworks()"


class RecordingDSA(DSA):
    """DSA that records each shared (matching) draw and each training batch it augments."""

    def __init__(self, strategy: str = "color_crop_flip", **strengths: float) -> None:
        super().__init__(strategy, **strengths)
        self.matching: list[Any] = []
        self.training: list[tuple[Tensor, Tensor]] = []
        self._in_training = False

    def sample(self, image_size: tuple[int, int], generator: torch.Generator, n: int = 1) -> Any:
        params = super().sample(image_size, generator, n)
        if not self._in_training:
            self.matching.append(params)
        return params

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self._in_training = True
        try:
            out = super().__call__(x, generator)
        finally:
            self._in_training = False
        self.training.append((x.detach().clone(), out.detach().clone()))
        return out


def shared_transform(x: Tensor, params: Any) -> Tensor:
    """The DSA transform with one parameter set, written independently: a flip, an integer
    shift with zeros outside (output pixel (r, c) reads input (r + dy, c + dx)), or brightness,
    saturation and contrast (DSA paper)."""
    v = {k: t.reshape(-1)[0] for k, t in params.values.items()}
    if params.kind == "flip":
        return x.flip(-1) if bool(v["flip"]) else x
    if params.kind == "crop":
        dy, dx = int(v["dy"]), int(v["dx"])
        out = torch.zeros_like(x)
        height, width = x.shape[-2:]
        for r in range(height):
            for c in range(width):
                if 0 <= r + dy < height and 0 <= c + dx < width:
                    out[:, :, r, c] = x[:, :, r + dy, c + dx]
        return out
    if params.kind == "color":
        y = x + float(v["brightness"])
        y = (y - y.mean(1, keepdim=True)) * float(v["saturation"]) + y.mean(1, keepdim=True)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        return (y - mean) * float(v["contrast"]) + mean
    raise AssertionError(f"the reference has no {params.kind!r} transform; use color/crop/flip")


@dataclass
class CondensationRun:
    """What one iteration of a condenser did: its initial and updated images, its loss, and the
    random draws a reference may reuse (initial network, DSA draws, augmented training batches)."""

    initial: Tensor
    updated: Tensor
    loss: float
    network: nn.Sequential
    augment: RecordingDSA | None


def condense_one_iteration(name: str, options: dict[str, Any]) -> CondensationRun:
    """Run ``name`` for 0 and for 1 iteration with the same seed (the 0-iteration run is the
    initialisation) on :func:`condensation_data`."""
    images, labels = condensation_data()
    options = dict(options)
    if options.get("augment") is True:
        options["augment"] = RecordingDSA(crop=0.34, flip=1.0)
    common = {"seed": 2, "batch_real": 64, "progress": False}
    initial, _ = run_condenser(
        name, images, labels, IPC, iterations=0, network=tiny_network, **common, **options
    )
    networks = RecordingNetworks()
    updated, losses = run_condenser(
        name, images, labels, IPC, iterations=1, network=networks, **common, **options
    )
    assert len(networks.initial) == 1, (
        f"{name} built {len(networks.initial)} networks in one iteration"
    )
    assert len(losses) == 1
    augment = options.get("augment") or None
    return CondensationRun(initial, updated, losses[0], networks.initial[0], augment)


def class_pairs(
    syn: Tensor, draws: list[Any] | None, siamese: bool = True
) -> list[tuple[int, Tensor, Tensor]]:
    """``(local label, real images of the class, its synthetic images)``, class by class; when
    augmented, both under the class's shared draw (taken from the front of ``draws``, one per
    class). ``siamese=False`` (a deliberate mistake) gives the synthetic images the next
    class's draw."""
    images, labels = condensation_data()
    step = [draws.pop(0) for _ in CLASSES] if draws is not None else None
    pairs = []
    for j, c in enumerate(CLASSES):
        real, fake = images[labels == c], syn[j * IPC : (j + 1) * IPC]
        if step is not None:
            real = shared_transform(real, step[j])
            fake = shared_transform(fake, step[j if siamese else (j + 1) % len(CLASSES)])
        pairs.append((j, real, fake))
    return pairs


def cosine_distance_by_rows(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """DC's distance: over weight tensors (1-D ones skipped) and their output channels, ``1 - cos``."""
    total = torch.zeros((), dtype=torch.float64)
    for a, b in zip(real, fake, strict=True):
        if a.dim() == 1:
            continue
        for row in range(a.shape[0]):
            x, y = a[row].flatten(), b[row].flatten()
            total = total + 1 - torch.dot(x, y) / (x.norm() * y.norm())
    return total


def head_variance_gap_reference(
    net: nn.Sequential, real: Tensor, fake: Tensor, j: int, rho: float
) -> Tensor:
    """``½ rho sum_k |Var_k(G_real) - Var_k(G_syn)|``: per-sample gradients of the head (bias,
    weight) by one autograd call per sample, unbiased variances by hand."""
    head, body = net[-1], net[:-1]

    def per_sample(x: Tensor, differentiable: bool) -> Tensor:
        h = body(x) if differentiable else body(x).detach()
        rows = []
        for hi in h:
            loss = F.cross_entropy(head(hi.unsqueeze(0)), torch.tensor([j]), reduction="sum")
            gb, gw = torch.autograd.grad(
                loss, (head.bias, head.weight), create_graph=differentiable
            )
            rows.append(torch.cat([gb, gw.flatten()]))
        return torch.stack(rows)

    def variance(g: Tensor) -> Tensor:
        return ((g - g.mean(0)) ** 2).sum(0) / (len(g) - 1)

    return (
        0.5
        * rho
        * (variance(per_sample(real, False)) - variance(per_sample(fake, True))).abs().sum()
    )


def gradient_matching_loss(
    net: nn.Sequential, pairs: list[tuple[int, Tensor, Tensor]], rho: float
) -> Tensor:
    """Sum over classes of DC's distance between mean real and mean synthetic gradients (all
    weight tensors, by autograd) plus, for rho > 0, LCMat-C's variance gap (the LCMat paper's condensation objective)."""
    weights = [p for p in net.parameters() if p.dim() > 1]
    loss = torch.zeros((), dtype=torch.float64)
    for j, real, fake in pairs:
        y_real, y_fake = torch.full((len(real),), j), torch.full((len(fake),), j)
        g_real = torch.autograd.grad(F.cross_entropy(net(real), y_real), weights)
        g_fake = torch.autograd.grad(F.cross_entropy(net(fake), y_fake), weights, create_graph=True)
        loss = loss + cosine_distance_by_rows(list(g_real), list(g_fake))
        if rho > 0:
            loss = loss + head_variance_gap_reference(net, real, fake, j, rho)
    return loss


def network_step(net: nn.Sequential, x: Tensor, y: Tensor, lr: float) -> nn.Sequential:
    """One plain SGD step of every parameter on the mean cross-entropy of ``(x, y)``."""
    stepped = copy.deepcopy(net)
    grads = torch.autograd.grad(F.cross_entropy(stepped(x), y), list(stepped.parameters()))
    with torch.no_grad():
        for p, g in zip(stepped.parameters(), grads, strict=True):
            p -= lr * g
    return stepped


def labels_of_rows(rows: Tensor, source: Tensor, source_labels: Tensor, exact: bool) -> Tensor:
    """Labels of ``rows`` (an augmented training batch before its augmentation), found by
    matching each row to one row of ``source``; every source row must be used once.

    ``exact``: rows must equal source rows to float64 rounding (real images). Otherwise the
    source is the reference's synthetic images, which differ from the method's own when its
    first update is wrong (the final comparison catches that), so a row only has to be much
    closer to one source row than the source rows are to each other.
    """
    dist = torch.cdist(rows.flatten(1), source.flatten(1))
    nearest = dist.min(1)
    if exact:
        tolerance = 1e-9
    else:
        apart = torch.cdist(source.flatten(1), source.flatten(1))
        tolerance = 0.1 * float(apart[~torch.eye(len(source), dtype=torch.bool)].min())
    assert float(nearest.values.max()) < tolerance, "the network step used images outside its data"
    assert len(set(nearest.indices.tolist())) == len(source), "the network step missed images"
    return source_labels[nearest.indices]


def gradient_matching_reference(
    run: CondensationRun,
    *,
    rho: float,
    lr_img: float,
    momentum_img: float,
    lr_net: float,
    inner_data: str,
    sign: float = 1.0,
    augmented: bool = True,
    siamese: bool = True,
) -> tuple[Tensor, float]:
    """One outer iteration of two matching steps with one network step between them (DC's
    bi-level loop): images move by SGD with momentum on the matching loss; the network by one
    SGD step on all real (Eq. 15) or all synthetic images. Returns ``(images, mean loss)``."""
    images, labels = condensation_data()
    draws = list(run.augment.matching) if run.augment is not None and augmented else None
    if draws is not None:
        assert len(draws) == 2 * len(CLASSES), "expected one shared DSA draw per class and step"
    net, syn, velocity, losses = run.network, run.initial.clone(), None, []
    for step in range(2):
        leaf = syn.clone().requires_grad_(True)
        loss = gradient_matching_loss(net, class_pairs(leaf, draws, siamese), rho)
        (grad,) = torch.autograd.grad(loss, leaf)
        velocity = grad if velocity is None else momentum_img * velocity + grad
        syn = syn - sign * lr_img * velocity
        losses.append(loss.item())
        if step == 0:
            local = torch.arange(len(CLASSES))
            if inner_data == "real":
                source, source_labels = (
                    images,
                    (labels.unsqueeze(1) == torch.tensor(CLASSES)).long().argmax(1),
                )
            else:
                source, source_labels = syn, local.repeat_interleave(IPC)
            if run.augment is not None:
                ((x_in, x_out),) = run.augment.training
                found = labels_of_rows(x_in, source, source_labels, exact=inner_data == "real")
                net = network_step(net, x_out, found, lr_net)
            else:
                net = network_step(net, source, source_labels, lr_net)
    return syn, sum(losses) / 2


def distribution_matching_reference(
    run: CondensationRun, *, lr_img: float, augmented: bool = True
) -> tuple[Tensor, float]:
    """DM: ``sum_c ||mean embed(real_c) - mean embed(syn_c)||^2`` with the initial random
    network without its head; one SGD step of the images (momentum has no effect on the first)."""
    draws = list(run.augment.matching) if run.augment is not None and augmented else None
    if draws is not None:
        assert len(draws) == len(CLASSES), "expected one shared DSA draw per class"
    embed = run.network[:-1]
    leaf = run.initial.clone().requires_grad_(True)
    loss = torch.zeros((), dtype=torch.float64)
    for _, real, fake in class_pairs(leaf, draws):
        loss = loss + ((embed(real).mean(0) - embed(fake).mean(0)) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    return run.initial - lr_img * grad, loss.item()


def assert_same_update(got: CondensationRun, expected: tuple[Tensor, float]) -> None:
    """The updated images and the iteration's loss agree to float64 tolerance."""
    images, loss = expected
    torch.testing.assert_close(got.updated, images, rtol=1e-7, atol=1e-9)
    assert math.isclose(got.loss, loss, rel_tol=1e-9, abs_tol=1e-12), (got.loss, loss)


def _condenser(
    name: str,
    what: str,
    options: dict[str, Any],
    reference: Callable,
    wrong: dict[str, dict[str, Any]],
) -> None:
    run = cache(lambda: condense_one_iteration(name, options))
    REFERENCES[name] = Reference(
        what=what,
        run_method=run,
        run_reference=reference,
        compare=assert_same_update,
        wrong={
            label: (lambda got, k=change: reference(got, **k)) for label, change in wrong.items()
        },
    )


# passed to every gradient-matching condenser: two matching steps with one network step between
_GM = {"outer_loop": 2, "inner_loop": 1, "batch_train": 256, "lr_net": 0.5, "momentum_img": 0.5}


def _gm(options: dict[str, Any], inner_data: str) -> Callable:
    """The gradient-matching reference with the options passed to the method and the data the
    method's paper trains its network on between matching steps (its default, not passed)."""
    keys = ("rho", "lr_img", "momentum_img", "lr_net")
    return lambda run, **change: gradient_matching_reference(
        run, **{k: options.get(k, 0.0) for k in keys} | {"inner_data": inner_data} | change
    )


_DC = _GM | {"lr_img": 0.1}
_condenser(
    "dc",
    "DC distance by autograd in float64, no augmentation, network step on the synthetic images",
    _DC,
    _gm(_DC, inner_data="synthetic"),
    {"wrong sign": {"sign": -1.0}, "network on real data": {"inner_data": "real"}},
)
_DSA = _DC | {"augment": True}
_condenser(
    "dsa",
    "DC distance under the same DSA draw for real and synthetic images",
    _DSA,
    _gm(_DSA, inner_data="synthetic"),
    {
        "no augmentation": {"augmented": False},
        "different draws for real and synthetic": {"siamese": False},
        "wrong sign": {"sign": -1.0},
    },
)
_LCMAT_C = _GM | {"lr_img": 0.1, "rho": 0.5, "augment": True}
_condenser(
    "lcmat-c",
    "DC distance + ½ rho sum |Var_T - Var_S| of per-sample head gradients, network on real data",
    _LCMAT_C,
    _gm(_LCMAT_C, inner_data="real"),
    {"no variance term": {"rho": 0.0}, "network on synthetic data": {"inner_data": "synthetic"}},
)
_DM = {"lr_img": 1.0, "augment": True}
_condenser(
    "dm",
    "squared mean-embedding gap per class with the random network, one SGD step",
    _DM,
    lambda run, **change: distribution_matching_reference(
        run, **{"lr_img": _DM["lr_img"]} | change
    ),
    {"no augmentation": {"augmented": False}, "double step": {"lr_img": 2.0}},
)
