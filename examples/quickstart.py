"""Quick start: an Avalanche Naive strategy with an LCMat-S replay memory (offline, seconds)."""

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from replay_lcmat.data import load_dataset
from replay_lcmat.models import make_model
from replay_lcmat.strategies import LCMatReplayPlugin, tensor_benchmark

train, test = load_dataset("digits")  # or "cifar100", or an ImageFolder path / .tar.gz
benchmark = tensor_benchmark(train, test, n_experiences=5, seed=0)  # class-incremental
model = make_model("mlp", in_channels=1, num_classes=10, image_size=8)
strategy = Naive(
    model=model,
    optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    train_mb_size=32,
    train_epochs=5,
    plugins=[LCMatReplayPlugin(per_class=10, policy="lcmat-s")],  # or "uniform", "herding"
    evaluator=EvaluationPlugin(accuracy_metrics(stream=True)),
)
for k, experience in enumerate(benchmark.train_stream):
    strategy.train(experience)
    metrics = strategy.eval(benchmark.test_stream[: k + 1])  # all classes seen so far
    print(
        f"after experience {k + 1}: accuracy {metrics['Top1_Acc_Stream/eval_phase/test_stream/Task000']:.3f}"
    )
