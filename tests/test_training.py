import math

import pytest
import torch

from replay_lcmat.data import RandomCropFlip, load_digits
from replay_lcmat.models import MLP, ConvNet
from replay_lcmat.seeding import seeded
from replay_lcmat.training import evaluate, train


@pytest.fixture(scope="module")
def digits():
    train_set, test_set = load_digits()
    return train_set.normalized(), train_set.labels, test_set.normalized(), test_set.labels


def test_tiny_model_learns_digits_well_above_chance(digits):
    x, y, xt, yt = digits
    with seeded(0):
        model = MLP(64, 10, hidden=(64,))
    before = evaluate(model, xt, yt)
    train(model, x, y, epochs=5, lr=0.05, batch_size=64, progress=False)
    after = evaluate(model, xt, yt)
    assert after > 0.8 and after > before + 0.3


def test_training_is_reproducible_and_augmentation_changes_it(digits):
    x, y, _, _ = digits
    x, y = x[:200], y[:200]

    def run(seed, augment=None):
        with seeded(1):
            model = ConvNet(1, 10, image_size=8, width=8, depth=1)
        train(model, x, y, epochs=2, batch_size=32, seed=seed, augment=augment, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), run(0, RandomCropFlip(padding=1)))


def test_schedules_and_bad_input(digits):
    x, y, _, _ = digits
    model = MLP(64, 10)
    for schedule in ("cosine", "step", "constant"):
        train(model, x[:64], y[:64], epochs=1, schedule=schedule, progress=False)
    with pytest.raises(ValueError, match="unknown schedule"):
        train(model, x, y, epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="empty"):
        train(model, x[:0], y[:0], epochs=1)
    with pytest.raises(ValueError, match="normalised"):
        train(model, (x * 10).to(torch.uint8), y, epochs=1)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        evaluate(model, x[:5], y[:4])


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
@pytest.mark.parametrize("epochs", [1, 3, 4])
def test_per_step_learning_rates_follow_the_schedule_formulas(
    digits, monkeypatch, schedule, epochs
):
    """The lr of every optimiser step, recorded, against the closed forms written out here."""
    x, y = digits[0][:40], digits[1][:40]
    seen = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    model = MLP(64, 10, hidden=(8,))
    train(model, x, y, epochs=epochs, lr=0.2, batch_size=16, schedule=schedule, progress=False)
    per_epoch = 3  # ceil(40 / 16)
    total = epochs * per_epoch
    if schedule == "cosine":
        expected = [0.2 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    elif schedule == "step":
        expected = [0.2 if t < (epochs // 2) * per_epoch else 0.02 for t in range(total)]
    else:
        expected = [0.2] * total
    assert len(seen) == total
    torch.testing.assert_close(seen, expected, rtol=1e-12, atol=1e-15)
