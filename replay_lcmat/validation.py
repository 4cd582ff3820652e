"""Checks of user input, in one place: the options of every selector, condenser and
:class:`~replay_lcmat.condensation.DSA`, and the image layout given to training and memories.

Every bad option value raises a ``ValueError`` (a wrong type included, so the CLI, which catches
``ValueError``, prints one clean line). The message names the owner (the selector or condenser),
the option, what is allowed and the value given with its type, e.g.
``lcmat-s option k_dims must be an int >= 1; got 2.5 (float)``.

Numbers come back as plain ``int`` / ``float`` (NumPy scalars are accepted). Booleans are not
numbers here: ``eps=True`` is a mistake, not ``eps=1``; nor is ``2.0`` an integer (nothing is
rounded).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import numpy as np
import torch
from torch import Tensor

# torch.Generator.manual_seed accepts seeds up to 2**64 - 1.
MAX_SEED = 2**64 - 1


def option_error(owner: str, name: str, allowed: str, value: object) -> ValueError:
    """The error of a bad option value: ``"<owner> option <name> must be <allowed>; got
    <value> (<type>)."``. Raise it from checks these functions do not cover."""
    return ValueError(
        f"{owner} option {name} must be {allowed}; got {value!r} ({type(value).__name__})."
    )


def _range(
    minimum: float | None,
    exclusive_minimum: float | None,
    maximum: float | None,
    exclusive_maximum: float | None,
) -> str:
    """``"in [a, b)"``, ``">= a"``, ``"< b"``, ... or ``""`` (unbounded)."""
    if minimum is not None and exclusive_minimum is not None:
        raise ValueError("give minimum or exclusive_minimum, not both.")
    if maximum is not None and exclusive_maximum is not None:
        raise ValueError("give maximum or exclusive_maximum, not both.")
    low_open, high_open = exclusive_minimum is not None, exclusive_maximum is not None
    low = exclusive_minimum if low_open else minimum
    high = exclusive_maximum if high_open else maximum
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    integer: bool = False,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
    exclusive_maximum: float | None = None,
    words: Collection[str] = (),
) -> int | float | str:
    """Check a numeric option (type, finiteness, range); return it as ``int`` / ``float``.

    Args:
        owner: the selector's or condenser's name (starts the message).
        name: the option's name; value: what was passed.
        integer: only integers are allowed (``2.5`` and ``2.0`` are rejected, not rounded).
        minimum, maximum: inclusive bounds; exclusive_minimum, exclusive_maximum: exclusive
            ones (``None``: unbounded on that side).
        words: strings also allowed and returned as is (e.g. ``("max",)`` for an offset).

    Raises:
        ValueError: a bool, a non-number (e.g. a string or ``None``), NaN or inf, a non-integer
            where an integer is needed, or a value out of range.
    """
    if isinstance(value, str) and value in words:
        return value
    kind = " or ".join([*map(repr, words), "an int" if integer else "a finite real number"])
    bounds = _range(minimum, exclusive_minimum, maximum, exclusive_maximum)
    allowed = f"{kind} {bounds}" if bounds else kind
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise option_error(owner, name, allowed, value)
    number = int(value) if integer else float(value)
    if (
        (not integer and not math.isfinite(number))
        or (minimum is not None and number < minimum)
        or (exclusive_minimum is not None and number <= exclusive_minimum)
        or (maximum is not None and number > maximum)
        or (exclusive_maximum is not None and number >= exclusive_maximum)
    ):
        raise option_error(owner, name, allowed, value)
    return number


def check_seed(owner: str, value: object) -> int:
    """A seed: an int in ``[0, 2**64 - 1]`` (what ``torch.Generator.manual_seed`` takes)."""
    return check_number(owner, "seed", value, integer=True, minimum=0, maximum=MAX_SEED)


def check_choice(owner: str, name: str, value: object, choices: Collection[str]) -> str:
    """One of ``choices``; the message lists them."""
    if not isinstance(value, str) or value not in choices:
        raise option_error(owner, name, f"one of {', '.join(map(repr, choices))}", value)
    return value


def check_flag(owner: str, name: str, value: object, *, allow_none: bool = False) -> bool | None:
    """``True`` / ``False`` (``"no"`` and ``1`` are not flags), or ``None`` with ``allow_none``
    (meaning "the method's default")."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        raise option_error(owner, name, "True or False" + (" or None" if allow_none else ""), value)
    return value


def check_channels_first(images: Tensor, what: str = "images") -> None:
    """Refuse a 4-D batch that looks channels-last ``[N, H, W, C]``, naming it as ``what``.

    The rule: a last dim of 1 or 3 (grey / RGB) after two dims that are neither, so images
    ``[N, 3, 8, 8]`` and feature maps such as ``[N, 64, 3, 3]`` or ``[N, 8, 1, 1]`` pass.
    """
    if images.dim() == 4 and images.shape[3] in (1, 3) and not {*images.shape[1:3]} & {1, 3}:
        raise ValueError(
            f"{what} look channels-last [N, H, W, C]; permute to [N, C, H, W] with "
            f"images.permute(0, 3, 1, 2) (got shape {tuple(images.shape)})."
        )


def as_input_matrix(name: str, x):
    """A selection input (``features`` / ``logits``) as a tensor, refused when it cannot be one.

    NumPy arrays are taken as tensors (as labels are); tensors on the ``meta`` device (shapes
    without data) and matrices with no columns are refused with the fix. Anything else is
    returned as it came, for the caller's shape and dtype checks.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise ValueError(
                f"{name} is a NumPy array of dtype {x.dtype}; pass a float array "
                f"({name}.astype(np.float32))."
            )
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        return x
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device (a shape without values); compute it on a real "
            "device (e.g. the model on 'cpu' after loading its weights) and pass that tensor."
        )
    if x.dim() == 2 and x.shape[1] == 0:
        raise ValueError(
            f"{name} has no columns (shape {tuple(x.shape)}); each sample needs at least one "
            f"value. Check how {name} were extracted (a model whose penultimate layer has width "
            "0, or an empty slice)."
        )
    return x


def check_finite_images(images: Tensor, what: str = "images", fix: str = "") -> None:
    """Refuse NaN or inf values in a batch of inputs, naming how many samples hold them.

    Raises:
        ValueError: naming ``what``, the count and the fix (drop or repair those samples).
    """
    if images.device.type == "meta":
        raise ValueError(
            f"{what} are on the meta device (shapes without values); pass real tensors."
        )
    if not images.is_floating_point() and not images.is_complex():
        return  # integers hold no NaN
    bad = ~torch.isfinite(images.reshape(len(images), -1)).all(1) if len(images) else None
    if bad is not None and bool(bad.any()):
        first = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"{what} contain NaN or inf in {int(bad.sum())} of {len(images)} samples (first at "
            f"rows {first}); drop or repair those samples{fix}. NaN would make every weight "
            "NaN."
        )
