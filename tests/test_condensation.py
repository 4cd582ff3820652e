"""Condensation (DC, DSA, DM, LCMat-C): objectives vs. independent computations, the condenser
contract, reproducibility, save/resume and bad input. Tiny images and networks keep it fast."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replay_lcmat.condensation import (
    available_condensers,
    gradient_variance_gap,
    head_variance_gap,
    layerwise_distance,
    load_synthetic,
    make_condenser,
    mean_embedding_loss,
)
from replay_lcmat.condensation.objectives import head_grad_variances
from replay_lcmat.curvature import last_layer_grads
from replay_lcmat.models import ConvNet
from replay_lcmat.seeding import seeded

METHODS = ["dc", "dsa", "dm", "lcmat-c"]
TINY_NET = functools.partial(ConvNet, width=8, depth=2)
FAST = {"network": TINY_NET, "batch_real": 8, "progress": False}
GM_FAST = FAST | {"outer_loop": 2, "inner_loop": 1, "batch_train": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


def _options(method, **extra):
    return (FAST if method == "dm" else GM_FAST) | extra


def _data(classes=(0, 1, 2), per_class=12, size=8, seed=0):
    """Images whose classes differ by a fixed per-class pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(max(classes) + 1, 3, size, size, generator=g)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = patterns[labels] + 0.5 * torch.randn(len(labels), 3, size, size, generator=g)
    return images, labels


# ----------------------------------------------------------------------------- objectives
def test_layerwise_distance_zero_for_identical_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(5, 7, generator=g), torch.randn(4)]
    assert layerwise_distance(grads, grads).abs() < 1e-6
    # scaling each gradient does not change the cosine distance
    assert layerwise_distance(grads, [2.5 * t for t in grads]).abs() < 1e-6
    other = [t + torch.randn(t.shape, generator=g) for t in grads]
    assert layerwise_distance(grads, other) > 0.1
    # 1-D tensors (biases, norms) are ignored
    assert layerwise_distance(grads, grads[:2] + [torch.randn(4, generator=g)]).abs() < 1e-6


def test_layerwise_distance_value():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [-1.0, -1.0]])
    # row 0: orthogonal (1 - 0); row 1: opposite (1 - (-1))
    assert layerwise_distance([a], [b]).item() == pytest.approx(3.0)
    conv_a, conv_b = a.view(2, 2, 1, 1), b.view(2, 2, 1, 1)
    assert layerwise_distance([conv_a], [conv_b]).item() == pytest.approx(3.0)


def _per_sample_head_grads(head, features, labels, create_graph):
    """Per-sample gradients of cross-entropy w.r.t. (bias, weight), one backward per sample."""
    rows = []
    for h, y in zip(features, labels, strict=True):
        loss = F.cross_entropy(head(h.unsqueeze(0)), y.unsqueeze(0), reduction="sum")
        gb, gw = torch.autograd.grad(loss, (head.bias, head.weight), create_graph=create_graph)
        rows.append(torch.cat([gb, gw.flatten()]))
    return torch.stack(rows)


def test_variance_gap_matches_per_sample_autograd_loop():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh())
    head = nn.Linear(5, 4)
    real = torch.randn(9, 3, 2, 2)
    syn = torch.randn(4, 3, 2, 2, requires_grad=True)
    label, rho = 2, 0.7
    h_real, h_syn = body(real), body(syn)

    ours = head_variance_gap((h_real, head(h_real)), (h_syn, head(h_syn)), label, rho)

    g_real = _per_sample_head_grads(head, h_real, torch.full((9,), label), False)
    g_syn = _per_sample_head_grads(head, h_syn, torch.full((4,), label), True)
    mean_real, mean_syn = g_real.mean(0), g_syn.mean(0)
    var_real = ((g_real - mean_real) ** 2).sum(0) / (9 - 1)
    var_syn = ((g_syn - mean_syn) ** 2).sum(0) / (4 - 1)
    reference = 0.5 * rho * (var_real - var_syn).abs().sum()
    torch.testing.assert_close(ours, reference)
    assert torch.equal(gradient_variance_gap(g_real, g_real, rho), torch.zeros(()))

    # differentiable w.r.t. the synthetic pixels, with the same gradient as the loop
    (grad_ours,) = torch.autograd.grad(ours, syn, retain_graph=True)
    (grad_ref,) = torch.autograd.grad(reference, syn)
    assert grad_ours.abs().sum() > 0
    torch.testing.assert_close(grad_ours, grad_ref)


def test_head_grad_variances_from_moments_match_the_gradient_matrix():
    # features with a large common offset and a small spread: the difference of moments cancels
    # most of its digits, so the float64 moments must still give the variance of the rows of
    # the explicit [n, c*(d+1)] gradient matrix (two-pass, float64)
    gen = torch.Generator().manual_seed(3)
    features = 50 + 0.01 * torch.randn(40, 6, generator=gen)
    logits = torch.randn(40, 5, generator=gen)
    ours = head_grad_variances(features, logits, 2)
    grads = last_layer_grads(features.double(), logits.double(), torch.full((40,), 2))
    reference = ((grads - grads.mean(0)) ** 2).sum(0) / (40 - 1)
    assert ours.dtype == torch.float64 and ours.shape == (5 * 7,)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-12)
    one = head_grad_variances(features[:1], logits[:1], 2)
    assert torch.equal(one, torch.zeros(5 * 7, dtype=torch.float64))


def test_mean_embedding_loss():
    a, b = torch.randn(6, 5), torch.randn(3, 5)
    expected = sum((a[:, k].mean() - b[:, k].mean()) ** 2 for k in range(5))
    torch.testing.assert_close(mean_embedding_loss(a, b), expected)
    assert mean_embedding_loss(a, a[torch.randperm(6)]).abs() < 1e-6


def test_lcmat_c_loss_adds_the_variance_gap_of_each_class():
    """With whole classes as real batches and no augmentation, L(rho) - L(0) is the variance gap
    computed independently (per-sample autograd loop) on the same network."""
    images, labels = _data(per_class=5)
    losses, nets = {}, {}
    for rho in (0.0, 0.3):
        condenser = make_condenser(
            "lcmat-c", iterations=1, seed=4, rho=rho, augment=False, **_options("lcmat-c")
        )
        task = condenser._make_task(images, labels, 3)
        syn = condenser._initialise(task)
        net, features, head = task.new_network()
        nets[rho] = (net, features, head)
        losses[rho] = condenser.matching_loss(syn, task, net, features, head)
    net, features, head = nets[0.3]
    expected = 0.0
    for j in range(3):
        with torch.no_grad():
            h_real = features(images[labels == j])
            h_syn = features(syn[3 * j : 3 * j + 3])
        g_real = _per_sample_head_grads(head, h_real, torch.full((5,), j), False)
        g_syn = _per_sample_head_grads(head, h_syn, torch.full((3,), j), False)
        expected += 0.5 * 0.3 * (g_real.var(0) - g_syn.var(0)).abs().sum()
    torch.testing.assert_close(losses[0.3] - losses[0.0], expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- the condensers
def test_registry():
    assert sorted(available_condensers()) == sorted(METHODS)
    with pytest.raises(ValueError, match="unknown condenser 'nope'.*Known.*lcmat-c"):
        make_condenser("nope", iterations=1)
    with pytest.raises(ValueError, match="unknown option.*'rhoo'.*accepted"):
        make_condenser("lcmat-c", iterations=1, rhoo=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_output_shapes_label_balance_and_gradients_reach_pixels(method):
    images, labels = _data(classes=(7, 2, 5), per_class=6)
    made = {}
    for iterations in (0, 1):
        condenser = make_condenser(
            method, iterations=iterations, seed=1, **_options(method, init="real")
        )
        made[iterations] = condenser.condense(images, labels, per_class=2)
    syn, syn_labels = made[1].images, made[1].labels
    assert syn.shape == (6, 3, 8, 8) and syn.dtype == images.dtype
    assert syn_labels.dtype == torch.long
    assert syn_labels.tolist() == [2, 2, 5, 5, 7, 7]
    initial = made[0].images
    # iterations=0 returns the initialisation: real images of the right class
    for image, label in zip(initial, syn_labels, strict=True):
        assert any(torch.equal(image, real) for real in images[labels == label])
    # one iteration moved every synthetic image: gradients reach all pixels' images
    moved = (syn - initial).flatten(1).abs().amax(1)
    assert (moved > 0).all(), moved


@pytest.mark.parametrize("method", METHODS)
def test_short_run_lowers_the_matching_loss(method):
    images, labels = _data(classes=(0, 1), per_class=16)
    # lcmat-c's paper lr (0.005) moves too little in a few iterations; the test checks descent
    options = _options(method, init="noise", batch_real=16, lr_img=0.1 if method != "dm" else 1.0)
    condenser = make_condenser(method, iterations=24, seed=0, **options)
    losses = torch.tensor(condenser.condense(images, labels, per_class=2).losses)
    assert len(losses) == 24 and torch.isfinite(losses).all()
    assert losses[-6:].mean() < 0.9 * losses[:6].mean(), losses


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_set_other_seed_other_set(method):
    images, labels = _data()
    runs = [
        make_condenser(method, iterations=2, seed=s, **_options(method))
        .condense(images, labels, per_class=2)
        .images
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_no_global_rng_side_effects():
    images, labels = _data()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_condenser("lcmat-c", iterations=1, **GM_FAST).condense(images, labels, per_class=2)
    assert torch.equal(torch.rand(3), expected)


def test_callback_reports_each_iteration():
    images, labels = _data()
    seen = []
    condenser = make_condenser(
        "dm", iterations=3, callback=lambda it, loss: seen.append((it, loss)), **FAST
    )
    result = condenser.condense(images, labels, per_class=2)
    assert [it for it, _ in seen] == [1, 2, 3]
    assert [loss for _, loss in seen] == result.losses


@pytest.mark.parametrize("method", ["dsa", "dm"])
def test_save_load_round_trip(method, tmp_path):
    images, labels = _data()
    path = tmp_path / "syn.pt"
    condenser = make_condenser(method, iterations=2, seed=7, checkpoint=path, **_options(method))
    result = condenser.condense(images, labels, per_class=2)
    syn, syn_labels = result.images, result.labels
    saved = load_synthetic(path)
    assert torch.equal(saved.images, syn) and torch.equal(saved.labels, syn_labels)
    assert saved.method == method and saved.seed == 7 and saved.iteration == 2
    assert saved.options["per_class"] == 2 and saved.options["batch_real"] == 8
    assert saved.state["losses"] == result.losses
    assert saved.options == result.options and saved.options["per_class"] == 2


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["lcmat-c", "dm"])
def test_resumed_run_equals_uninterrupted_run(method, tmp_path):
    images, labels = _data()
    opts = _options(method, checkpoint_every=1)
    full = make_condenser(method, iterations=4, seed=5, **opts)
    full_result = full.condense(images, labels, per_class=2)
    expected = full_result.images

    def stop_at_three(iteration, loss):
        if iteration == 3:
            raise _Interrupt

    path = tmp_path / "run.pt"
    interrupted = make_condenser(
        method, iterations=4, seed=5, checkpoint=path, callback=stop_at_three, **opts
    )
    with pytest.raises(_Interrupt):
        interrupted.condense(images, labels, per_class=2)
    # the iteration-3 callback raised after its checkpoint was due; file holds 3 or fewer
    assert load_synthetic(path).iteration <= 3
    resumed = make_condenser(method, iterations=4, seed=5, checkpoint=path, **opts)
    resumed_result = resumed.condense(images, labels, resume=path, per_class=2)
    assert torch.equal(resumed_result.images, expected)
    assert resumed_result.losses == full_result.losses
    assert load_synthetic(path).iteration == 4

    # extending a finished run: 2 iterations, then resume to 4 == 4 at once
    short = tmp_path / "short.pt"
    make_condenser(method, iterations=2, seed=5, checkpoint=short, **opts).condense(
        images, labels, per_class=2
    )
    extended = make_condenser(method, iterations=4, seed=5, **opts)
    assert torch.equal(
        extended.condense(images, labels, resume=short, per_class=2).images, expected
    )


def test_resume_refuses_a_different_run(tmp_path):
    images, labels = _data()
    path = tmp_path / "run.pt"
    make_condenser("dsa", iterations=1, seed=0, checkpoint=path, **GM_FAST).condense(
        images, labels, per_class=2
    )
    with pytest.raises(ValueError, match="seed"):
        make_condenser("dsa", iterations=2, seed=1, **GM_FAST).condense(
            images, labels, resume=path, per_class=2
        )
    with pytest.raises(ValueError, match="lr_img"):
        make_condenser("dsa", iterations=2, lr_img=0.5, **GM_FAST).condense(
            images, labels, resume=path, per_class=2
        )
    with pytest.raises(ValueError, match="iterations >= 1"):
        make_condenser("dsa", iterations=0, **GM_FAST).condense(
            images, labels, resume=path, per_class=2
        )
    with pytest.raises(FileNotFoundError, match="no synthetic set"):
        load_synthetic(tmp_path / "missing.pt")


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("per_class", [0, -3, 1.5])
def test_per_class_must_be_a_positive_integer(per_class):
    images, labels = _data()
    with pytest.raises(ValueError, match="per_class must be an int >= 1"):
        make_condenser("dsa", iterations=1, **GM_FAST).condense(images, labels, per_class=per_class)


def test_the_old_ipc_option_is_refused_with_its_new_place():
    with pytest.raises(ValueError, match="unknown option.*'ipc'"):
        make_condenser("dsa", iterations=1, ipc=2)


def test_lcmat_c_at_one_image_per_class_is_gradient_matching_plus_a_constant():
    # the variance of one synthetic image is its population variance, 0: the term is
    # ½ rho sum_k Var_k(G_real) (unbiased, by hand), with no gradient in the synthetic side
    g = torch.Generator().manual_seed(3)
    g_real = torch.randn(7, 5, generator=g, dtype=torch.float64)
    g_syn = torch.randn(1, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rho = 0.3
    mean = [sum(float(g_real[i, k]) for i in range(7)) / 7 for k in range(5)]
    by_hand = sum(sum((float(g_real[i, k]) - mean[k]) ** 2 for i in range(7)) / 6 for k in range(5))
    gap = gradient_variance_gap(g_real, g_syn, rho)
    torch.testing.assert_close(float(gap.detach()), 0.5 * rho * by_hand)
    (grad,) = torch.autograd.grad(gap, g_syn)
    assert torch.equal(grad, torch.zeros_like(grad))
    # so at per_class 1 LCMat-C takes plain gradient matching's steps, bit for bit
    images, labels = _data()
    runs = [
        make_condenser("lcmat-c", iterations=2, seed=1, rho=rho, **GM_FAST).condense(
            images, labels, per_class=1
        )
        for rho in (0.02, 0.0)
    ]
    assert runs[0].images.shape[0] == 3
    assert torch.equal(runs[0].images, runs[1].images)
    assert runs[0].losses != runs[1].losses  # the constant is in the loss
    # a class with fewer real images than per_class is kept whole (the small-class rule)
    images, labels = _data(per_class=1)
    with pytest.warns(UserWarning, match="class 0 has only 1 sample.*fewer than the 2"):
        result = make_condenser("lcmat-c", iterations=1, **GM_FAST).condense(
            images, labels, per_class=2
        )
    assert torch.equal(result.images, images) and torch.equal(result.labels, labels)


def test_bad_images_and_labels():
    images, labels = _data()
    condenser = make_condenser("dm", iterations=1, **FAST)
    with pytest.raises(ValueError, match="4-D"):
        condenser.condense(images.flatten(1), labels, per_class=2)
    with pytest.raises(TypeError, match="float"):
        condenser.condense(images.to(torch.uint8), labels, per_class=2)
    with pytest.raises(ValueError, match="one label per image"):
        condenser.condense(images, labels[:-1], per_class=2)
    with pytest.raises(ValueError, match="empty"):
        condenser.condense(images[:0], labels[:0], per_class=2)
    bad = images.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        condenser.condense(bad, labels, per_class=2)


def test_a_requested_class_with_no_samples():
    images, labels = _data(classes=(0, 1, 2))
    condenser = make_condenser("dsa", iterations=1, classes=[0, 1, 5], **GM_FAST)
    with pytest.raises(ValueError, match="class 5 has no samples"):
        condenser.condense(images, labels, per_class=2)


class _NaNAfterFirst:
    """Network factory whose second network outputs NaN features."""

    def __init__(self):
        self.calls = 0

    def __call__(self, **shape):
        self.calls += 1
        net = TINY_NET(**shape)
        if self.calls >= 2:
            with torch.no_grad():
                net.body[0].weight.fill_(float("nan"))
        return net


@pytest.mark.parametrize("method", ["lcmat-c", "dm"])
def test_nan_during_optimisation_stops_and_keeps_last_checkpoint(method, tmp_path):
    images, labels = _data()
    path = tmp_path / "syn.pt"
    condenser = make_condenser(
        method,
        iterations=5,
        checkpoint=path,
        checkpoint_every=1,
        **_options(method, network=_NaNAfterFirst()),
    )
    with pytest.raises(FloatingPointError, match=r"iteration 2\b.*iteration 1\) is kept"):
        condenser.condense(images, labels, per_class=2)
    kept = load_synthetic(path)
    assert kept.iteration == 1 and torch.isfinite(kept.images).all()


def test_network_is_seeded_without_global_state():
    # a sanity check of the helper the condensers rely on for reproducible networks
    with seeded(0):
        a = TINY_NET(in_channels=3, num_classes=2, image_size=8)
    with seeded(0):
        b = TINY_NET(in_channels=3, num_classes=2, image_size=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("method", ["dsa", "lcmat-c", "dm"])
def test_cpu_chunks_of_real_batches_give_the_whole_batch_result(method, monkeypatch):
    # on the CPU a ConvNet takes real batches in chunks of CPU_CHUNK images; the summed chunk
    # gradients over the batch size are the batch-mean gradient, so the set is the one of
    # whole-batch passes up to float rounding (instance norm treats every image on its own)
    import replay_lcmat.condensation.base as gm

    sizes = []

    def network(**shape):
        net = TINY_NET(**shape)
        net.body[0].register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
        return net

    images, labels = _data(per_class=40)
    steps = {} if method == "dm" else {"batch_train": 100}
    options = _options(method, network=network, batch_real=40, **steps)
    options |= {"iterations": 1, "lr_img": 1.0}  # a large step, for a visible change
    monkeypatch.setattr(gm, "CPU_CHUNK", 16)
    chunked = make_condenser(method, **options).condense(images, labels, per_class=3)
    assert sizes and max(sizes) == 16  # every real pass cut to 16 images
    monkeypatch.setattr(gm, "CPU_CHUNK", None)
    sizes.clear()
    whole = make_condenser(method, **options).condense(images, labels, per_class=3)
    assert max(sizes) >= 40
    init = make_condenser(method, **options | {"iterations": 0}).condense(
        images, labels, per_class=3
    )
    assert (whole.images - init.images).abs().max() > 1e-3
    torch.testing.assert_close(chunked.images, whole.images, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(chunked.losses), torch.tensor(whole.losses), rtol=1e-5, atol=1e-6
    )


def test_chunks_only_for_a_convnet_without_batch_norm_on_the_cpu():
    from replay_lcmat.condensation.base import CPU_CHUNK, Condenser
    from replay_lcmat.models import MLP, split_head

    cpu = torch.device("cpu")
    net = ConvNet(3, 10, image_size=8, width=4)
    assert Condenser.chunk_size(net, cpu) == CPU_CHUNK
    assert Condenser.chunk_size(split_head(net)[0], cpu) == CPU_CHUNK  # its features part
    assert Condenser.chunk_size(net, torch.device("meta")) is None  # other devices: whole
    batch_norm = ConvNet(3, 10, image_size=8, width=4, norm="batch")  # couples the images
    assert Condenser.chunk_size(batch_norm, cpu) is None
    assert Condenser.chunk_size(MLP(12, 3), cpu) is None
