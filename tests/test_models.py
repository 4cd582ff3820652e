import copy

import pytest
import torch
import torchvision
from avalanche.models import SimpleCNN
from torch import nn

from replay_lcmat.models import MLP, ConvNet, ResNet18, make_model, split_head
from replay_lcmat.seeding import seeded


@pytest.mark.parametrize(
    ("model", "shape", "dim"),
    [
        (ConvNet(3, 10), (2, 3, 32, 32), 2048),  # ConvNet-3: 128 * 4 * 4
        (
            ConvNet(1, 10, image_size=8, width=16, depth=2, norm="batch", pooling="max"),
            (2, 1, 8, 8),
            64,
        ),
        (ResNet18(3, 10), (2, 3, 32, 32), 512),
        (MLP(64, 10, hidden=(32, 16)), (2, 1, 8, 8), 16),
    ],
)
def test_model_contract(model, shape, dim):
    x = torch.randn(*shape)
    model.eval()
    feats = model.features(x)
    assert feats.shape == (2, dim) and model.feature_dim == dim
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == dim
    assert torch.allclose(model(x), model.classifier(feats))
    features, head = split_head(model, example=x)
    assert head is model.classifier
    assert torch.allclose(features(x), feats)


def test_convnet3_structure():
    net = ConvNet(3, 10)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == 128 and m.affine for m in norms)
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.modules()) == 3
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (128, (3, 3), (1, 1))
    ] * 3


def test_resnet18_cifar_stem_has_no_maxpool():
    net = ResNet18(3, 100)
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.2e6, rel=0.02)


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: SimpleCNN(num_classes=10), (3, 3, 32, 32)),
        (lambda: torchvision.models.resnet18(num_classes=7), (3, 3, 32, 32)),
    ],
)
def test_split_head_of_foreign_models(factory, shape):
    with seeded(0):
        model = factory().eval()
    x = torch.randn(*shape)
    features, head = split_head(model, example=x)
    assert isinstance(head, nn.Linear)
    feats = features(x)
    assert feats.dim() == 2 and feats.shape[1] == head.in_features
    assert torch.allclose(head(feats), model(x), atol=1e-6)


def test_split_head_errors():
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        split_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    softmaxed = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="something runs after it"):
        split_head(softmaxed, example=torch.randn(2, 1, 2, 2))


def test_make_model_and_seeded_init_is_reproducible():
    with seeded(3):
        a = make_model("convnet", in_channels=1, num_classes=4, image_size=8, width=8)
    state = torch.random.get_rng_state()
    with seeded(3):
        b = make_model("convnet", in_channels=1, num_classes=4, image_size=8, width=8)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="unknown model 'vgg'.*convnet, resnet18, mlp"):
        make_model("vgg", in_channels=3, num_classes=10, image_size=32)


def test_split_head_names_non_finite_examples_and_a_nan_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    bad = torch.randn(2, 1, 2, 2)
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"the example batch contain NaN or inf in 1 of 2"):
        split_head(model, example=bad)
    with torch.no_grad():
        model[1].bias[2] = float("nan")
    with pytest.raises(ValueError, match=r"returns NaN or inf on finite inputs.*\['1\.bias'\]"):
        split_head(model, example=torch.randn(2, 1, 2, 2))


@pytest.mark.parametrize(("norm", "activation"), [("instance", "relu"), ("batch", "leakyrelu")])
def test_convnet_activations_in_place_same_values_and_gradients(norm, activation):
    # in-place activations save a buffer per block; the values and gradients must be those of
    # the same network with out-of-place activations
    with seeded(0):
        net = ConvNet(3, 10, image_size=8, width=8, depth=2, norm=norm, activation=activation)
    acts = [m for m in net.modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]
    assert len(acts) == 2 and all(m.inplace for m in acts)
    out_of_place = copy.deepcopy(net)
    for m in out_of_place.modules():
        if isinstance(m, nn.ReLU | nn.LeakyReLU):
            m.inplace = False
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    results = []
    for model in (net, out_of_place):
        y = model(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
        results.append((y, grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
