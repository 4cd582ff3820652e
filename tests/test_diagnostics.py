"""Diagnostics: bound terms vs. materialised per-sample quantities (library closed form and
torch.func), loss contours (centre = loss at θ, model untouched), memory grids (denormalised
pixels = source pixels), spectra, the pictures and ``replay-lcmat inspect``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import grad, hessian, vmap

from replay_lcmat.cli import main
from replay_lcmat.condensation.storage import SyntheticSet
from replay_lcmat.curvature import (
    diag_hessian_variances,
    last_layer_diag_hessians,
    last_layer_grads,
)
from replay_lcmat.data import load_dataset
from replay_lcmat.diagnostics import (
    MemorySet,
    bound_markdown,
    bound_terms,
    compare_subsets,
    curvature_spectrum,
    denormalize,
    filter_normalized_direction,
    load_class_memory,
    load_condensed,
    loss_surface,
    memory_grid,
    plot_bound_terms,
    plot_curvature_spectrum,
    plot_loss_contours,
    plot_memory_grid,
    selection_images,
    write_bound_csv,
)
from replay_lcmat.memory import ClassMemory
from replay_lcmat.models import ConvNet
from replay_lcmat.seeding import make_generator

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread avoids contention on the shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")[0]


# ---------------------------------------------------------------------------- bound terms
def tiny_head(n=14, d=5, c=4, seed=0):
    gen = make_generator(seed)
    head = nn.Linear(d, c).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=gen, dtype=torch.float64))
        head.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % c  # every class present
    with torch.no_grad():
        z = head(h)
    return head, h, z, y


def autograd_per_sample(head, h, y):
    """Per-sample gradients and diagonal Hessians of CE w.r.t. [b, W.flatten()], by torch.func."""
    c, d = head.weight.shape
    theta = torch.cat([head.bias.detach(), head.weight.detach().flatten()])

    def loss(params, x, target):
        z = params[c:].view(c, d) @ x + params[:c]
        return nn.functional.cross_entropy(z.unsqueeze(0), target.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(theta, h, y)
    hess = vmap(hessian(loss), in_dims=(None, 0, 0))(theta, h, y).diagonal(dim1=1, dim2=2)
    return grads, hess


def brute_terms(grads, hess, losses, rows, *, rho, k_dims, weights=None):
    """The bound terms from materialised per-sample quantities; K from a full sort."""
    variances = hess.var(0, unbiased=False)
    top = torch.argsort(variances, descending=True)[:k_dims]
    w = torch.ones(len(rows), dtype=torch.float64) if weights is None else weights.double()
    w = w / w.sum()
    dlam = (hess.mean(0) - w @ hess[rows]).abs()
    return {
        "gradient_gap": float((grads.mean(0) - w @ grads[rows]).norm()),
        "curvature_gap_topk": 0.5 * rho * float(dlam[top].sum()),
        "curvature_gap_all": 0.5 * rho * float(dlam.sum()),
        "curvature_gap_max": 0.5 * rho * float(dlam.max()),
        "loss_gap": float((losses.mean() - w @ losses[rows]).abs()),
    }


def assert_terms_close(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("k_dims", [3, 7, 100])
def test_bound_terms_match_materialised_gradients_and_hessians(k_dims):
    head, h, z, y = tiny_head()
    subset = torch.tensor([0, 3, 5, 5, 9, 12])  # a repeated index counts twice
    losses = nn.functional.cross_entropy(z, y, reduction="none")
    auto_g, auto_h = autograd_per_sample(head, h, y)
    lib_g, lib_h = last_layer_grads(h, z, y), last_layer_diag_hessians(h, z)
    torch.testing.assert_close(lib_g, auto_g)
    torch.testing.assert_close(lib_h, auto_h)
    got = bound_terms(h, z, y, subset, rho=0.3, k_dims=k_dims)
    assert got["n_full"] == 14 and got["n_subset"] == 6 and got["k_dims"] == k_dims
    for g, hh in ((auto_g, auto_h), (lib_g, lib_h)):
        assert_terms_close(got, brute_terms(g, hh, losses, subset, rho=0.3, k_dims=k_dims))
    if k_dims >= lib_h.shape[1]:
        assert got["curvature_gap_topk"] == pytest.approx(got["curvature_gap_all"])


@pytest.mark.parametrize("weighted", [False, True])
def test_bound_terms_per_class_match_brute_force_on_each_class(weighted):
    head, h, z, y = tiny_head(n=16)
    subset = torch.tensor([1, 4, 6, 11, 8])  # classes 1, 0, 2, 3, 0
    weights = torch.tensor([2.0, 1.0, 4.0, 3.0, 0.5]) if weighted else None
    got = bound_terms(h, z.float(), y, subset, rho=0.5, k_dims=4, per_class=True, weights=weights)
    assert got["weighted"] is weighted
    auto_g, auto_h = autograd_per_sample(head, h, y)
    losses = nn.functional.cross_entropy(z, y, reduction="none")
    assert sorted(got["per_class"]) == [0, 1, 2, 3]
    for c, terms in got["per_class"].items():
        members = torch.nonzero(y == c).flatten()
        in_class = y[subset] == c
        picked = subset[in_class]
        rows = torch.tensor([members.tolist().index(i) for i in picked.tolist()])
        w = None if weights is None else weights[in_class]
        expected = brute_terms(
            auto_g[members], auto_h[members], losses[members], rows, rho=0.5, k_dims=4, weights=w
        )
        # float32 logits in, float64 inside: agreement to float32 rounding of the logits
        for key, value in expected.items():
            assert terms[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (c, key)
        assert terms["n_subset"] == len(picked) and terms["n_full"] == len(members)


def test_weighted_bound_terms_match_brute_force_and_repeats():
    head, h, z, y = tiny_head()
    subset, weights = torch.tensor([0, 3, 5, 9]), torch.tensor([1.0, 3.0, 0.0, 2.0])
    losses = nn.functional.cross_entropy(z, y, reduction="none")
    auto_g, auto_h = autograd_per_sample(head, h, y)
    got = bound_terms(h, z, y, subset, rho=0.7, k_dims=6, weights=weights)
    expected = brute_terms(auto_g, auto_h, losses, subset, rho=0.7, k_dims=6, weights=weights)
    assert_terms_close(got, expected)
    # integer weights = repeating each index that many times
    repeated = bound_terms(h, z, y, torch.tensor([0, 3, 3, 3, 9, 9]), rho=0.7, k_dims=6)
    assert_terms_close(got, {k: repeated[k] for k in expected})
    with pytest.raises(ValueError, match="one value per subset element"):
        bound_terms(h, z, y, subset, weights=torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        bound_terms(h, z, y, subset, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_bound_terms_zero_for_the_full_set_and_scale_with_rho():
    _, h, z, y = tiny_head()
    full = bound_terms(h, z, y, torch.arange(14))
    for key in ("gradient_gap", "curvature_gap_topk", "curvature_gap_all", "loss_gap"):
        assert full[key] == pytest.approx(0.0, abs=1e-12)
    a = bound_terms(h, z, y, torch.tensor([2, 3]), rho=0.5)
    b = bound_terms(h, z, y, torch.tensor([2, 3]), rho=1.0)
    assert b["gradient_gap"] == a["gradient_gap"]
    assert b["curvature_gap_topk"] == pytest.approx(2 * a["curvature_gap_topk"])
    mask = torch.zeros(14, dtype=torch.bool)
    mask[[2, 3]] = True
    assert bound_terms(h, z, y, mask, rho=0.5) == a


def test_bound_terms_errors_name_the_fix():
    _, h, z, y = tiny_head()
    with pytest.raises(ValueError, match="empty"):
        bound_terms(h, z, y, torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="14 samples"):
        bound_terms(h, z, y, torch.tensor([0, 14]))
    with pytest.raises(ValueError, match="class 1 has no"):
        bound_terms(h, z, y, torch.tensor([0, 2, 3]), per_class=True)
    with pytest.raises(ValueError, match="features must be"):
        bound_terms(h[0], z, y, torch.tensor([0]))
    with pytest.raises(ValueError, match="k_dims"):
        bound_terms(h, z, y, torch.tensor([0]), k_dims=0)


def test_compare_subsets_table_csv_and_bar_plot(tmp_path):
    _, h, z, y = tiny_head(n=16)
    subsets = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([4, 5, 6, 7, 8])}
    weights = {"b": torch.arange(1.0, 6.0)}
    rows = compare_subsets(h, z, y, subsets, k_dims=5, per_class=True, weights=weights)
    assert [r["weighted"] for r in rows] == [False] * 5 + [True] * 5
    weighted_b = bound_terms(h, z, y, subsets["b"], k_dims=5, weights=weights["b"])
    assert rows[5]["gradient_gap"] == weighted_b["gradient_gap"]
    assert [r["method"] for r in rows if r["class"] == "all"] == ["a", "b"]
    assert len(rows) == 2 * (1 + 4)
    top = rows[0]
    assert top["bound_topk"] == top["gradient_gap"] + top["curvature_gap_topk"]
    alone = bound_terms(h, z, y, subsets["a"], k_dims=5)
    assert all(top[k] == alone[k] for k in alone if k != "per_class")
    text = bound_markdown(rows)
    assert "| a | 4 | no |" in text and "| b | 5 | yes |" in text and "mean over classes" in text
    csv_text = write_bound_csv(rows, tmp_path / "t.csv").read_text().splitlines()
    assert csv_text[0].startswith("method,class,") and len(csv_text) == 1 + len(rows)
    assert_png(plot_bound_terms(rows, tmp_path / "bars.png"))
    with pytest.raises(ValueError, match="curvature"):
        plot_bound_terms(rows, tmp_path / "x.png", curvature="loss_gap")


# ---------------------------------------------------------------------------- contours
def tiny_convnet():
    torch.manual_seed(0)
    net = ConvNet(1, 3, image_size=8, width=4, depth=2, norm="batch")
    x = torch.randn(40, 1, 8, 8)
    y = torch.arange(40) % 3
    net.train()
    with torch.no_grad():
        net(x)  # non-trivial BatchNorm running statistics
    return net, x, y


def test_filter_normalised_direction():
    net, _, _ = tiny_convnet()
    d = filter_normalized_direction(net, make_generator(3))
    again = filter_normalized_direction(net, make_generator(3))
    for name, p in net.named_parameters():
        assert torch.equal(d[name], again[name])
        if p.dim() <= 1:
            assert not d[name].any(), name  # biases and norm parameters stay fixed
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.flatten(1).norm(dim=1))


def test_loss_surface_centre_is_the_loss_at_theta_and_model_is_untouched(tmp_path):
    net, x, y = tiny_convnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    surface = loss_surface(
        net, {"T": (x, y), "S": (x[:6], y[:6])}, steps=3, span=0.5, seed=1, max_samples=None
    )
    assert net.training  # train flag restored
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params and BN buffers
    net.eval()
    with torch.no_grad():
        at_theta = nn.functional.cross_entropy(net(x), y).item()
        at_theta_s = nn.functional.cross_entropy(net(x[:6]), y[:6]).item()
    assert surface.coords.tolist() == [-0.5, 0.0, 0.5]
    assert surface.center("T") == pytest.approx(at_theta, rel=1e-6)
    assert surface.center("S") == pytest.approx(at_theta_s, rel=1e-6)
    assert surface.losses["T"].shape == (3, 3) and surface.samples == {"T": 40, "S": 6}
    assert not torch.allclose(surface.losses["T"][0, 0], surface.losses["T"][1, 1])
    assert_png(plot_loss_contours(surface, tmp_path / "contours.png"))
    capped = loss_surface(net, {"T": (x, y)}, steps=3, seed=1, max_samples=10)
    assert capped.samples == {"T": 10}
    with pytest.raises(ValueError, match="odd"):
        loss_surface(net, {"T": (x, y)}, steps=4)


# ----------------------------------------------------------------------------- grids
def test_memory_grid_denormalised_pixels_equal_source_images(digits):
    idx = torch.cat([digits.class_indices(c)[:k] for c, k in ((0, 3), (2, 5), (7, 1))])
    source = digits.subset(idx)
    normalised = MemorySet(
        "norm", source.normalized(), source.labels, digits.mean, digits.std, digits.classes
    )
    raw = MemorySet.from_image_data(digits, idx[:3], name="raw")  # class 0 only
    grid = memory_grid([normalised, raw], columns=2, classes=[0, 2, 7, 9])
    assert grid.class_names == ["0", "2", "7", "9"] and grid.rows_per_class == 3
    expected = source.images.float() / 255.0
    for band, c in enumerate([0, 2, 7]):
        members = expected[source.labels == c]
        for slot, image in enumerate(members):
            rows, cols = grid.cell(band, slot)
            pixels = grid.grids["norm"][:, rows, cols]
            assert pixels.shape == (3, 8, 8)
            assert (pixels - image).abs().max() <= 1.0 / 255.0
        # empty slots and the band of class 9 stay blank
        rows, cols = grid.cell(band, len(members))
        assert torch.all(grid.grids["norm"][:, rows, cols] == 1.0)
    for slot in range(3):
        rows, cols = grid.cell(0, slot)
        assert torch.equal(grid.grids["raw"][0, rows, cols], expected[slot, 0])
        rows, cols = grid.cell(1, slot)
        assert torch.all(grid.grids["raw"][:, rows, cols] == 1.0)  # raw has no class 2
    assert torch.all(grid.grids["norm"][:, 3 * grid.band_height :, :] == 1.0)
    assert torch.equal(denormalize(source.images, digits.mean, digits.std), expected)


def test_memory_grid_from_selection_condensed_and_memory_files(tmp_path, digits):
    idx = torch.cat([digits.class_indices(c)[:2] for c in range(10)])
    record = selection_file(
        "lcmat-s",
        [
            {"label": c, "class": str(c), "indices": idx[2 * c : 2 * c + 2].tolist()}
            for c in range(10)
        ],
    )
    (tmp_path / "sel.json").write_text(json.dumps(record))
    selection = selection_images(tmp_path / "sel.json", digits)
    assert torch.equal(selection.images, digits.images[idx]) and selection.name == "lcmat-s"
    x, y = digits.normalized()[idx], digits.labels[idx]
    SyntheticSet(x + 0.1, y, "dm", {}, 0, 5).save(tmp_path / "syn.pt")
    memory = ClassMemory()
    for c in range(10):
        memory.put(c, x[y == c], sources=idx[y == c])
    memory.save(tmp_path / "mem.pt")
    stats = {"mean": digits.mean, "std": digits.std, "classes": digits.classes}
    condensed = load_condensed(tmp_path / "syn.pt", **stats)
    kept = load_class_memory(tmp_path / "mem.pt", **stats)
    assert condensed.name == "dm" and kept.name == "mem"
    torch.testing.assert_close(kept.pixels(), selection.pixels(), atol=1 / 255, rtol=0)
    assert_png(plot_memory_grid([selection, condensed, kept], tmp_path / "grid.png"))
    record["by_class"][0]["label"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other data"):
        selection_images(tmp_path / "bad.json", digits)
    with pytest.raises(FileNotFoundError, match="replay-lcmat select"):
        selection_images(tmp_path / "missing.json", digits)


# ----------------------------------------------------------------------------- spectrum
def test_curvature_spectrum_is_the_sorted_variance_of_one_class(tmp_path):
    _, h, z, y = tiny_head(n=20)
    values = curvature_spectrum(h, z, y, 2)
    rows = y == 2
    brute = last_layer_diag_hessians(h[rows], z[rows]).var(0, unbiased=False)
    torch.testing.assert_close(values, brute.sort(descending=True).values)
    torch.testing.assert_close(
        curvature_spectrum(h, z), diag_hessian_variances(h, z).sort()[0].flip(0)
    )
    assert_png(plot_curvature_spectrum({"class 2": values}, tmp_path / "s.png", k_dims=5))
    with pytest.raises(ValueError, match="no sample has label 9"):
        curvature_spectrum(h, z, y, 9)


# ----------------------------------------------------------------------------------- CLI
def selection_file(method: str, groups: list[dict]) -> dict:
    """A version-1 selection record of digits with these class groups."""
    flat = [i for g in groups for i in g["indices"]]
    return {"format": "replay-lcmat selection", "version": 1, "data": "digits", "method": method, "indices": flat, "by_class": groups}  # fmt: skip


MODEL = ["--data", "digits", "--model", "mlp", "--pretrain-epochs", "1", "--no-progress"]


@pytest.mark.slow
def test_inspect_cli_writes_every_picture(tmp_path, digits, capsys):
    idx = [digits.class_indices(c)[:3].tolist() for c in range(10)]
    record = selection_file("uniform", [{"label": c, "indices": idx[c]} for c in range(10)])
    sel = tmp_path / "uniform.json"
    sel.write_text(json.dumps(record))
    assert main(["inspect", "grid", "--selection", str(sel), str(sel), "--out", str(tmp_path / "g.png")]) == 0  # fmt: skip
    assert_png(tmp_path / "g.png")
    out = tmp_path / "b.png"
    argv = ["inspect", "bounds", *MODEL, "--selection", str(sel), "--methods", "lcmat-s", "craig"]
    argv += ["--per-class", "3", "--k-dims", "20", "--by-class", "--weighted"]
    assert main([*argv, "--out", str(out)]) == 0
    assert_png(out)
    table = out.with_suffix(".md").read_text()
    assert "| uniform | 30 | no |" in table and "| lcmat-s | 30 | no |" in table
    assert "| craig | 30 | yes |" in table
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 1 + 3 * 11
    argv = ["inspect", "contours", *MODEL, "--selection", str(sel), "--steps", "3"]
    assert main([*argv, "--samples", "100", "--out", str(tmp_path / "c.png")]) == 0
    assert_png(tmp_path / "c.png")
    argv = ["inspect", "spectrum", *MODEL, "--classes", "0", "3"]
    assert main([*argv, "--out", str(tmp_path / "s.png")]) == 0
    assert_png(tmp_path / "s.png")
    assert "top 100 hold" in capsys.readouterr().out


def test_inspect_cli_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    text = capsys.readouterr().out
    for picture in (
        "grid",
        "bounds",
        "contours",
        "spectrum",
        "Fig. 7",
        "Fig. 2",
        "Fig. 1b",
        "Fig. 6",
    ):
        assert picture in text
    assert main(["inspect"]) == 1
    assert "choose a picture" in capsys.readouterr().err
    missing, out = str(tmp_path / "nope.json"), str(tmp_path / "x.png")
    assert main(["inspect", "grid", "--selection", missing, "--out", out]) == 1
    assert "replay-lcmat select" in capsys.readouterr().err
    assert main(["inspect", "bounds", *MODEL, "--methods", "nope", "--fraction", "0.1", "--out", out]) == 1  # fmt: skip
    assert "unknown selection method 'nope'" in capsys.readouterr().err
    assert main(["inspect", "bounds", *MODEL, "--methods", "uniform", "--out", out]) == 1
    assert "needs a budget" in capsys.readouterr().err
    assert main(["inspect", "grid", "--memory", missing, "--out", out]) == 1
    assert "pass --data" in capsys.readouterr().err
    assert main(["inspect", "grid", "--selection", missing, "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert main(["inspect", "bounds", *MODEL, "--methods", "uniform", "--fraction", "2", "--out", out]) == 1  # fmt: skip
    assert "--fraction must be in (0, 1]" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(selection_file("uniform", [])))
    assert main(["inspect", "grid", "--selection", str(empty), "--out", out]) == 1
    assert "hold no images" in capsys.readouterr().err
    binary = tmp_path / "x.pt"  # a condensed set passed as a selection: name the file and flag
    binary.write_bytes(b"PK\x03\x04\x80\xff\xfe binary")
    assert main(["inspect", "grid", "--selection", str(binary), "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"{binary} is neither JSON nor a torch file" in err and "codec" not in err


def test_inspect_names_the_kind_of_a_file_given_to_the_wrong_option(tmp_path, digits, capsys):
    out = str(tmp_path / "g.png")
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps(selection_file("uniform", [{"label": 0, "indices": [0]}])))
    memory = ClassMemory()
    memory.put(0, digits.normalized()[:2], sources=torch.arange(2))
    memory.save(tmp_path / "mem.pt")
    torch.save({"format": "replay-lcmat/avalanche-run", "version": 1}, tmp_path / "run.pt")
    data = ["--data", "digits"]
    cases = [
        (["--selection", str(tmp_path / "mem.pt")], "mem.pt is a class memory", "--memory"),
        ([*data, "--condensed", str(sel)], "sel.json is a selection file", "--selection"),
        ([*data, "--memory", str(tmp_path / "run.pt")], "run.pt is an Avalanche run", "load_run"),
    ]
    for argv, kind, fix in cases:
        assert main(["inspect", "grid", *argv, "--out", out]) == 1
        err = capsys.readouterr().err
        assert kind in err and fix in err, err
