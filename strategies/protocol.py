"""A whole continual run through Avalanche: one policy, one seed, accuracy after each experience."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from replay_lcmat.memory import ResultRow, memory_policy
from replay_lcmat.models import make_model
from replay_lcmat.seeding import seeded
from replay_lcmat.strategies.memory_only import MemoryOnlyRetrainPlugin
from replay_lcmat.strategies.plugins import LCMatReplayPlugin
from replay_lcmat.training import PROTOCOL_RETRAIN, TrainConfig

PROTOCOLS = ("paper", "replay")
STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"


def stream_accuracy(metrics: dict) -> float:
    """The stream accuracy of an Avalanche ``strategy.eval(test_stream)`` result."""
    keys = [k for k in metrics if k.startswith(STREAM_ACCURACY)]
    if len(keys) != 1:
        raise ValueError(
            f"expected one {STREAM_ACCURACY}* metric, found {keys}; evaluate with "
            "accuracy_metrics(stream=True) on the test stream."
        )
    return float(metrics[keys[0]])


def run_continual(
    benchmark,
    *,
    policy: str,
    options: Mapping[str, Any] | None = None,
    stats: str | None = None,
    model: str = "convnet",
    model_options: dict | None = None,
    protocol: str = "paper",
    per_class: int = 10,
    train_epochs: int = 10,
    lr: float = 0.01,
    train_mb_size: int = 128,
    retrain: TrainConfig = PROTOCOL_RETRAIN,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train an Avalanche ``Naive`` strategy over ``benchmark.train_stream`` with an LCMat memory.

    Protocols:
        ``"paper"``: :class:`MemoryOnlyRetrainPlugin`: a selection model trained on each
            experience (``train_epochs``; 0 for policies that need no model), memory built,
            then a fresh model trained on memory only (``retrain``) is evaluated.
        ``"replay"``: :class:`LCMatReplayPlugin`: the model trains on each experience plus
            replayed memory for ``train_epochs`` and is evaluated as it is.

    After experience ``k`` the model is evaluated on the test experiences ``0..k`` (all classes
    seen so far). The run happens inside :func:`replay_lcmat.seeding.seeded` (``seed``), so
    Avalanche's data-loader shuffling is reproducible and the global RNG is left untouched.

    The network is :func:`replay_lcmat.models.make_model` ``(model, **model_options)`` with
    the benchmark's number of classes and input shape (``"convnet"`` = ConvNet-3).

    ``policy`` is a memory policy name; ``options`` its selector's or condenser's own options
    and ``stats`` (selection policies that rank with a model) the statistics the model is read
    with, as in :func:`replay_lcmat.strategies.make_storage_policy`.

    Returns:
        One dict per experience: ``seed, policy, per_class, experience`` (1-based),
        ``classes_seen``, ``memory_size``, ``accuracy`` (stream accuracy in [0, 1]) and
        ``forgetting`` (Avalanche's stream forgetting, when defined).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}.")
    rows = []
    channels, height = benchmark.train_stream[0].dataset[0][0].shape[:2]
    with seeded(seed):
        net = make_model(
            model,
            in_channels=channels,
            num_classes=benchmark.n_classes,
            image_size=height,
            **(model_options or {}),
        )
        if protocol == "paper":
            plugin = MemoryOnlyRetrainPlugin(
                per_class,
                policy,
                options=options,
                stats=stats,
                retrain=retrain,
                seed=seed,
                progress=progress,
            )
            epochs = train_epochs if memory_policy(policy).needs_model else 0
        else:
            plugin = LCMatReplayPlugin(
                per_class, policy, options=options, seed=seed, progress=progress, stats=stats
            )
            epochs = train_epochs
        evaluator = EvaluationPlugin(
            accuracy_metrics(stream=True, experience=True),
            forgetting_metrics(stream=True),
            loggers=[],
        )
        strategy = Naive(
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
            train_mb_size=train_mb_size,
            train_epochs=epochs,
            eval_mb_size=512,
            device=device,
            plugins=[plugin],
            evaluator=evaluator,
        )
        classes_seen = 0
        for k, experience in enumerate(benchmark.train_stream):
            strategy.train(experience, num_workers=0)
            metrics = strategy.eval(benchmark.test_stream[: k + 1], num_workers=0)
            classes_seen += len(experience.classes_in_this_experience)
            forgetting = [v for n, v in metrics.items() if n.startswith("StreamForgetting")]
            row = ResultRow(
                seed=seed,
                policy=policy,
                per_class=per_class,
                experience=k + 1,
                classes_seen=classes_seen,
                memory_size=len(plugin.storage_policy.buffer),
                accuracy=stream_accuracy(metrics),
                forgetting=float(forgetting[0]) if forgetting else float("nan"),
            )
            rows.append(row.as_dict())
            if log is not None:
                log(row.log_line(f"{protocol}, "))
    return rows
