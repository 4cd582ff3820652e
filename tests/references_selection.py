"""Independent references of the selectors (see ``tests/references.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from reference_core import REFERENCES, Reference
from scipy.optimize import nnls
from torch import Tensor

from replay_lcmat.selection import make_selector


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
