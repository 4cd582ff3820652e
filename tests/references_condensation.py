"""Independent references of the condensers (see ``tests/references.py``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from reference_core import REFERENCES, Reference
from torch import Tensor, nn

from replay_lcmat.condensation import DSA, make_condenser


def run_condenser(
    name: str, images: Tensor, labels: Tensor, per_class: int, **options: Any
) -> tuple[Tensor, list[float]]:
    """``(synthetic images [k*per_class, C, H, W] in class order, loss of each iteration)``."""
    result = make_condenser(name, **options).condense(images, labels, per_class=per_class)
    return result.images, list(result.losses)


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
