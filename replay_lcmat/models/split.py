"""Split any classifier into a feature extractor and the head that maps features to its logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from replay_lcmat.validation import check_finite_images


class _HeadReached(Exception):
    """Raised inside a forward pass once the head's input is captured, to skip the head."""


class ModelFeatures(nn.Module):
    """``features(x)`` of a model: ``model.features`` when it has the library's contract, else the
    (flattened) input of ``head`` captured during ``model(x)``."""

    def __init__(self, model: nn.Module, head: nn.Linear, use_method: bool) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.use_method = use_method

    def forward(self, x: Tensor) -> Tensor:
        if self.use_method:
            return self.model.features(x)
        captured: list[Tensor] = []

        def grab(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])
            raise _HeadReached

        handle = self.head.register_forward_pre_hook(grab)
        try:
            self.model(x)
        except _HeadReached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"{type(self.model).__name__}.forward never called its last nn.Linear; split_head "
                "cannot find its features. Give the model a features(x) method and a classifier "
                "nn.Linear attribute."
            )
        return torch.flatten(captured[0], 1)


class OutputHead(nn.Module):
    """The module around a model's last ``nn.Linear`` that turns that layer's input into the
    model's output, e.g. Avalanche's ``IncrementalClassifier`` (which masks unseen classes) or
    a ``MultiHeadClassifier`` with the task label it was called with.

    ``forward(h)`` calls ``module(h, *args, **kwargs)`` with the extra (non-tensor) arguments
    the model passed it.
    """

    def __init__(self, module: nn.Module, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.module = module
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def forward(self, h: Tensor) -> Tensor:
        return self.module(h, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        return f"args={self.args}, kwargs={self.kwargs}"


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def _same(expected: Tensor, got: Tensor | None) -> bool:
    return (
        isinstance(got, Tensor)
        and expected.shape == got.shape
        and torch.allclose(expected, got.to(expected.dtype), rtol=1e-4, atol=1e-5)
    )


def _holds_tensor(value) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _run(model: nn.Module, example: Tensor) -> Tensor:
    """``model(example)``, with a clear message when the model needs more than the input."""
    try:
        out = model(example)
    except TypeError as err:
        raise ValueError(
            f"{type(model).__name__}(x) fails on the example batch: {err}. A model whose forward "
            "takes more than the input (e.g. Avalanche's multi-task models, forward(x, "
            "task_labels)) must be split through a module whose forward(x) calls "
            "model(x, task_label)."
        ) from err
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{type(model).__name__}(x) returns {shape}, not logits [batch, classes]; split_head "
            "needs a classifier whose output is one logit per class."
        )
    return out


def _check_finite_output(model: nn.Module, output: Tensor) -> None:
    """A model whose output on finite inputs is NaN/inf is broken; say so rather than blame
    the split (comparisons with NaN always fail)."""
    if bool(torch.isfinite(output).all()):
        return
    broken = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    broken += [
        n
        for n, b in model.named_buffers()
        if b.is_floating_point() and not bool(torch.isfinite(b).all())
    ]
    where = (
        f"its parameters/buffers {broken[:5]} hold NaN or inf (was it trained on NaN inputs or "
        "with a too-large learning rate?)"
        if broken
        else "its parameters are finite, so a layer overflows"
    )
    raise ValueError(
        f"{type(model).__name__}(x) returns NaN or inf on finite inputs: {where}. Retrain or "
        "reload the model from a good checkpoint, on finite data, before using it."
    )


def _trace(model: nn.Module, example: Tensor) -> tuple[list[nn.Linear], dict]:
    """The ``nn.Linear`` layers in the order ``model(example)`` calls them, and the last call
    ``(args, kwargs)`` of every submodule."""
    order: list[nn.Linear] = []
    calls: dict[nn.Module, tuple[tuple, dict]] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls[module] = (args, kwargs)
        if isinstance(module, nn.Linear):
            order.append(module)

    handles = [
        m.register_forward_pre_hook(record, with_kwargs=True)
        for m in model.modules()
        if m is not model
    ]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order, calls


def _enclosing(model: nn.Module, linear: nn.Linear) -> list[nn.Module]:
    """The modules that contain ``linear``, innermost first, without ``model`` itself."""
    name = next(n for n, m in model.named_modules() if m is linear)
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(len(parts) - 1, 0, -1)]


def _output_head(
    model: nn.Module, linear: nn.Linear, calls: dict, h: Tensor, expected: Tensor
) -> nn.Module | None:
    """``linear`` when ``linear(h)`` is the model's output, else the innermost module around it
    that was called with ``linear``'s input (and no other tensor) and reproduces the output."""
    if _same(expected, linear(h)):
        return linear
    linear_args = calls[linear][0]
    if not linear_args:  # called with keyword input only: no enclosing module to match
        return None
    linear_input = linear_args[0]
    for module in _enclosing(model, linear):
        if module not in calls:
            continue
        args, kwargs = calls[module]
        if not args or args[0] is not linear_input or _holds_tensor((args[1:], kwargs)):
            continue
        head = OutputHead(module, args[1:], kwargs)
        try:
            got = head(h)
        except Exception:  # a candidate that cannot replay is not the head
            continue
        if _same(expected, got):
            return head
    return None


def split_head(model: nn.Module, example: Tensor | None = None) -> tuple[nn.Module, nn.Module]:
    """``(features, head)`` such that ``model(x) == head(features(x))``, ``features(x)`` being
    ``[N, d]`` (flatten it when a model's ``features`` method returns more dimensions).

    Without ``example`` (models built by this library): a model with a ``features(x)`` method and
    a ``classifier`` ``nn.Linear`` is split there; any other at its last ``nn.Linear`` in
    registration order, the features being that layer's input captured by a hook.

    With ``example`` (any model; pass one batch of real inputs, model in eval mode) the split is
    checked on it and the first that reproduces ``model(example)`` is returned:

    1. ``features`` / ``classifier``, when the model has them (the library's models);
    2. the input of the last ``nn.Linear`` the forward pass calls (Avalanche's ``SimpleMLP``,
       whose ``features`` expects flattened input; torchvision's DenseNets, which apply a ReLU
       and pooling after ``features``), with that layer as the head;
    3. the same features, with as head the innermost module around that layer that turns them
       into the model's output: Avalanche's ``IncrementalClassifier`` (its masking of unseen
       classes is kept), or a ``MultiHeadClassifier`` with the task label it was called with.
       ``head`` is then an :class:`OutputHead`.

    Args:
        model: the classifier; ``model(x)`` must return logits ``[N, classes]``.
        example: input batch to verify the split on (recommended for models from elsewhere).

    Raises:
        ValueError: the model has no ``nn.Linear`` layer, needs more than ``x``, or no split
            reproduces its output on ``example`` (something runs after the head, e.g. softmax).
    """
    classifier = getattr(model, "classifier", None)
    use_method = isinstance(classifier, nn.Linear) and callable(getattr(model, "features", None))
    head = classifier if use_method else _last_linear(model)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so it has no last linear head to "
            "compute curvature on. Add a final nn.Linear classifier, or give the model a "
            "features(x) method and a classifier nn.Linear attribute."
        )
    if example is None:
        return ModelFeatures(model, head, use_method), head
    check_finite_images(example, "the example batch")
    with torch.no_grad():
        expected = _run(model, example)
        _check_finite_output(model, expected)
        if use_method:
            try:
                got = classifier(model.features(example).flatten(1))
            except Exception:  # features() rejecting the input: not the split
                got = None
            if _same(expected, got):
                return ModelFeatures(model, classifier, True), classifier
        order, calls = _trace(model, example)
        if not order:
            raise ValueError(
                f"{type(model).__name__}.forward calls no nn.Linear layer on the example batch; "
                "split_head needs a final nn.Linear classifier."
            )
        linear = order[-1]
        features = ModelFeatures(model, linear, use_method=False)
        out_head = _output_head(model, linear, calls, features(example), expected)
    if out_head is None:
        raise ValueError(
            f"{type(model).__name__}'s output is not its last nn.Linear applied to that "
            "layer's input (something runs after it, e.g. softmax, or the model is in train mode "
            "with dropout). Give the model a features(x) method and a classifier nn.Linear "
            "attribute that produces the logits, or run it in eval mode."
        )
    return features, out_head
