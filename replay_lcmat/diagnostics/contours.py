"""Loss contours of T and S around θ (the paper's Fig. 1b) along two filter-normalised random
directions (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets").

Direction ``d`` for a weight ``θ`` with at least two dimensions: Gaussian noise, then every
filter ``d[i]`` (slice along the first axis: a conv output channel, a row of a linear weight)
is rescaled to the norm of ``θ[i]``. Parameters with at most one dimension (biases,
normalisation scales and shifts) get a zero direction, i.e. they stay at θ. Buffers (BatchNorm
running statistics) stay as they are, and the model is evaluated in eval mode.

The model is never modified: the perturbed parameters are passed through
``torch.func.functional_call``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from replay_lcmat.seeding import derive_seed, make_generator


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """One random direction in parameter space, ``{name: tensor shaped like the parameter}``.

    Filter normalisation: ``d[i] <- d[i] * ||θ[i]|| / ||d[i]||`` for every slice ``i`` along
    the first axis of parameters with ``dim >= 2``; zero for parameters with ``dim <= 1``.
    The noise is drawn on the CPU in float32 from ``generator`` (parameters in registration
    order), so a seed gives the same direction on every device.
    """
    direction = {}
    for name, theta in model.named_parameters():
        noise = torch.randn(theta.shape, generator=generator)
        if theta.dim() <= 1:
            noise.zero_()
        else:
            rows = theta.detach().cpu().float().flatten(1)
            flat = noise.flatten(1)
            scale = rows.norm(dim=1) / flat.norm(dim=1).clamp_min(1e-12)
            noise = (flat * scale.unsqueeze(1)).view_as(noise)
        direction[name] = noise.to(theta.device, theta.dtype)
    return direction


@dataclass(frozen=True)
class LossSurface:
    """Mean cross-entropy of every set on a square grid around θ.

    Attributes:
        coords: float64 ``[steps]``, the step sizes ``a`` (= ``b``) along each direction,
            symmetric with ``coords[steps // 2] == 0`` exactly.
        losses: ``{set name: float64 [steps, steps]}``, ``losses[i, j]`` =
            ``L(θ + coords[i] d1 + coords[j] d2)`` in nats.
        samples: ``{set name: evaluation samples used}``.
        seed: the seed of the directions and the sample subsets.
    """

    coords: Tensor
    losses: dict[str, Tensor]
    samples: dict[str, int]
    seed: int

    def center(self, name: str) -> float:
        """The loss of set ``name`` at θ itself."""
        mid = len(self.coords) // 2
        return float(self.losses[name][mid, mid])


def mean_loss(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    params: Mapping[str, Tensor] | None = None,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> float:
    """Mean cross-entropy (nats) of ``model`` on float normalised ``inputs [n, ...]`` with
    int64 ``labels [n]``, with ``params`` (name -> tensor) in place of the model's own when
    given. Runs as the model is (set eval mode before); no gradients."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].to(device).float()
            y = labels[start : start + batch_size].to(device)
            out = model(x) if params is None else functional_call(model, dict(params), (x,))
            total += float(nn.functional.cross_entropy(out.double(), y, reduction="sum"))
    return total / len(inputs)


def loss_surface(
    model: nn.Module,
    sets: Mapping[str, tuple[Tensor, Tensor]],
    *,
    steps: int = 9,
    span: float = 1.0,
    seed: int = 0,
    max_samples: int | None = 1000,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> LossSurface:
    """``L(D; θ + a d1 + b d2)`` for every set D on a ``steps x steps`` grid, ``a, b`` in
    ``[-span, span]``; ``d1, d2`` from :func:`filter_normalized_direction` (seed ``seed``).

    The model is evaluated in eval mode on ``device`` and left as it was (parameters, buffers,
    train flag; it is moved to ``device``). Cost: ``steps**2`` forward passes over the samples
    of all sets. Measured with one thread of a busy 2-core CPU: the defaults (9 x 9, 1,000
    samples of T plus 100 of S) take 47 s for a width-16 ConvNet-3 on 32x32 images; a
    width-128 ConvNet-3 costs about 13 s per grid point there, so use a GPU or fewer ``steps``
    and ``max_samples`` for it.

    Args:
        model: the trained network θ.
        sets: ``{name: (inputs [n, ...] float normalised, labels int64 [n])}``, e.g.
            ``{"T": (x, y), "S": (x[idx], y[idx])}``.
        steps: grid points per axis; odd, so that θ itself (a = b = 0) is on the grid.
        span: largest step along a direction (1 = the size of the filters themselves).
        seed: seeds the directions and the choice of evaluation samples.
        max_samples: a set larger than this is evaluated on a random subset of this size
            (the same for every grid point); ``None``: all samples.
        batch_size: samples per forward pass.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or steps % 2 == 0:
        raise ValueError(
            f"steps must be an odd integer >= 1 so that θ is the centre of the grid; got {steps!r}."
        )
    if not span > 0:
        raise ValueError(f"span must be > 0; got {span}.")
    if not sets:
        raise ValueError("no sets to evaluate; pass {name: (inputs, labels)}.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None; got {max_samples}.")
    picked: dict[str, tuple[Tensor, Tensor]] = {}
    sampler = make_generator(derive_seed(seed, 1))
    for name, (x, y) in sets.items():
        y = torch.as_tensor(y).long()
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"set {name!r} has {len(x)} inputs and {len(y)} labels; pass a non-empty set "
                "with one label per input."
            )
        if max_samples is not None and len(x) > max_samples:
            keep = torch.randperm(len(x), generator=sampler)[:max_samples].sort().values
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        picked[name] = (x, y)
    was_training = model.training
    model.to(device).eval()
    try:
        directions = make_generator(seed)
        d1 = filter_normalized_direction(model, directions)
        d2 = filter_normalized_direction(model, directions)
        theta = {name: p.detach() for name, p in model.named_parameters()}
        half = steps // 2
        coords = torch.arange(-half, half + 1, dtype=torch.float64) * (span / max(half, 1))
        losses = {name: torch.empty(steps, steps, dtype=torch.float64) for name in picked}
        for i, a in enumerate(coords.tolist()):
            for j, b in enumerate(coords.tolist()):
                params = {n: theta[n] + a * d1[n] + b * d2[n] for n in theta}
                for name, (x, y) in picked.items():
                    losses[name][i, j] = mean_loss(
                        model, x, y, params, batch_size=batch_size, device=device
                    )
    finally:
        model.train(was_training)
    return LossSurface(coords, losses, {n: len(y) for n, (_, y) in picked.items()}, seed)


def plot_loss_contours(
    surface: LossSurface,
    path: str | os.PathLike,
    *,
    reference: str = "T",
    levels: int = 10,
    title: str = "",
) -> Path:
    """Contour lines of ``reference`` (solid) and of every other set (dashed), one panel per
    other set; both share levels at evenly spaced quantiles of the panel's losses, so the
    shapes compare directly. The centre (θ) is marked. Returns the path."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if reference not in surface.losses:
        raise ValueError(
            f"reference set {reference!r} is not in the surface (sets: {list(surface.losses)})."
        )
    others = [n for n in surface.losses if n != reference] or [reference]
    if len(surface.coords) < 2:
        raise ValueError("a contour needs at least 3 steps per axis; pass steps >= 3.")
    fig = Figure(figsize=(4.2 * len(others) + 0.4, 4.2))
    grid = surface.coords.numpy()
    for k, name in enumerate(others):
        ax = fig.add_subplot(1, len(others), k + 1)
        both = torch.stack([surface.losses[reference], surface.losses[name]])
        quantiles = torch.linspace(0.02, 0.98, levels, dtype=torch.float64)
        lv = torch.unique(torch.quantile(both.flatten(), quantiles)).numpy()
        if len(lv) < 2:  # a flat surface
            lv = None
        styles = [(reference, "C0", "solid"), (name, "C1", "dashed")]
        for set_name, colour, style in styles[: 1 if name == reference else 2]:
            # losses[i, j]: i along direction 1 (x axis), so transpose for contour's [y, x]
            z = surface.losses[set_name].T.numpy()
            lines = ax.contour(grid, grid, z, levels=lv, colors=colour, linestyles=style)
            ax.clabel(lines, fontsize=6, fmt="%.2g")
        ax.plot([0], [0], marker="*", color="k", markersize=8)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
        handles = [
            Line2D([], [], color=c, linestyle=s, label=f"L({n}), {surface.samples[n]} samples")
            for n, c, s in styles[: 1 if name == reference else 2]
        ]
        ax.legend(handles=handles, fontsize=7, loc="upper right")
        ax.set_title(f"{reference} vs {name}", fontsize=9)
    fig.suptitle(
        title
        or "Loss around θ along two filter-normalised random directions\n"
        f"(seed {surface.seed}; biases and 1-D parameters fixed; ★ = θ)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
