"""Selections as data: the version-1 selection file, ``replay_lcmat.load_selection``, a
``Subset`` of torchvision's ``ImageFolder`` addressing the same images, and LCMat-S's report
(gains, curvature share, overlap with eps=0) checked against brute-force computations."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import replay_lcmat
from replay_lcmat.cli import main
from replay_lcmat.data import load_dataset
from replay_lcmat.data.folder import image_folder_files, load_image_folder
from replay_lcmat.greedy import maximize
from replay_lcmat.selection import LCMatS, lcmat_dissimilarity, make_selector, selection_subset
from replay_lcmat.selection.record import selection_record
from replay_lcmat.selection.report import curvature_share, selection_report
from replay_lcmat.submodular import FacilityLocation

# created out of name order, with names whose numeric and string orders differ
NAMES = ("10.png", "2.png", "b.png", "a1.png", "1.png")
CLASSES = ("zebra", "ant", "Moth")  # string order: Moth, ant, zebra


def make_folder(root, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for name in NAMES:
                pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / name)
    return root


def select_argv(data, out, *extra):
    argv = ["select", "--data", str(data), "--model", "mlp", "--pretrain-epochs", "1"]
    return [*argv, "--out", str(out), "--no-progress", "--device", "cpu", *extra]


@pytest.mark.parametrize("as_archive", [False, True])
def test_folder_indices_address_the_same_images_in_torchvision_imagefolder(tmp_path, as_archive):
    folder = make_folder(tmp_path / "ds")
    data = folder
    if as_archive:
        data = tmp_path / "ds.tar.gz"
        with tarfile.open(data, "w:gz") as tar:
            tar.add(folder, arcname="ds")
    cache = tmp_path / "cache"
    train, _ = load_image_folder(data, cache_dir=cache, progress=False)
    files = image_folder_files(data, cache_dir=cache, progress=False)
    reference = ImageFolder(str(folder / "train"))  # the extracted folder
    assert len(files) == len(train) == len(reference) == 15
    for i, (path, target) in enumerate(reference.samples):
        assert files[i] == "/".join(path.split("/")[-2:])
        assert int(train.labels[i]) == target
        pixels = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
        assert torch.equal(train.images[i], pixels)

    out = tmp_path / "sel.json"
    argv = select_argv(
        data, out, "--method", "craig", "--per-class", "2", "--cache-dir", str(cache)
    )
    assert main(argv) == 0
    selection = replay_lcmat.load_selection(out)
    assert selection.files == tuple(files[i] for i in selection.indices.tolist())
    subset = selection_subset(out, ImageFolder(str(folder / "train")))
    assert subset.indices == selection.indices.tolist()
    for k, i in enumerate(selection.indices.tolist()):
        image, label = subset[k]
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), train.images[i])
        assert label == int(selection.labels[k])
    # the same folder with one file renamed: the file names no longer match
    other = make_folder(tmp_path / "other")
    (other / "train" / "ant" / "1.png").rename(other / "train" / "ant" / "z.png")
    with pytest.raises(ValueError, match="folder's files differ"):
        selection_subset(selection, ImageFolder(str(other / "train")))


def test_select_file_holds_flat_order_groups_weights_gains_and_report(tmp_path, capsys):
    out = tmp_path / "a.json"
    argv = select_argv("digits", out, "--method", "lcmat-s", "--per-class", "4")
    assert main([*argv, "--option", "weighted=true", "--option", "eps=0.5"]) == 0
    text = capsys.readouterr().out
    assert "curvature share of d" in text and "overlap with eps=0" in text
    record = json.loads(out.read_text())
    assert record["format"] == "replay-lcmat selection" and record["version"] == 1
    selection = replay_lcmat.load_selection(out)
    train, _ = load_dataset("digits")
    assert selection.num_samples == len(train) and selection.files is None  # not from files
    assert torch.equal(selection.labels, train.labels[selection.indices])
    assert selection.indices.tolist() == record["indices"]
    assert torch.equal(torch.cat(list(selection.by_class().values())), selection.indices)
    for label, group in selection.by_class().items():
        mask = selection.labels == label
        assert float(selection.weights[mask].sum()) == int((train.labels == label).sum())
        gains = selection.gains[mask]
        assert bool((gains[1:] <= gains[:-1] + 1e-6).all())  # greedy: non-increasing
        report = selection.report[label]
        assert 0 < report["curvature_share"] < 1 and 0 <= report["eps0_overlap"] <= 1
        assert len(group) == 4
    assert "with weights, gains" in repr(selection)


def test_loader_refuses_files_of_other_kinds_naming_them(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"data": "digits", "by_class": [{"label": 0, "indices": [1]}]}))
    with pytest.raises(ValueError, match=f"{old} is not a readable selection file"):
        replay_lcmat.load_selection(old)
    pt = tmp_path / "x.pt"
    torch.save({"a": 1}, pt)
    with pytest.raises(ValueError, match="binary content"):
        replay_lcmat.load_selection(pt)
    record = {"format": "replay-lcmat selection", "version": 1, "indices": [2, 1]}
    record["by_class"] = [{"label": 0, "indices": [1, 2]}]
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="differ from the concatenated"):
        replay_lcmat.load_selection(tmp_path / "bad.json")


def class_problem(n=40, d=6, c=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    return h, z, torch.full((n,), 2, dtype=torch.int64)


@pytest.mark.parametrize("eps", [0.0, 0.05, 2.0])
def test_curvature_share_matches_the_brute_force_pair_means(eps):
    h, z, y = class_problem()
    share = curvature_share(h, z, y, eps=eps, k_dims=7)
    grad = lcmat_dissimilarity(h, z, y, eps=0.0, k_dims=7)
    full = lcmat_dissimilarity(h, z, y, eps=eps, k_dims=7)
    off = ~torch.eye(len(y), dtype=torch.bool)
    torch.testing.assert_close(share.gradient_rms, float(grad[off].pow(2).mean().sqrt()))
    torch.testing.assert_close(share.curvature_mean, float((full - grad)[off].mean()), atol=1e-12, rtol=1e-9)  # fmt: skip
    true_share = float((full - grad)[off].mean() / full[off].mean())
    assert share.share <= true_share + 1e-12  # a lower bound, as documented
    if eps:
        assert share.share > 0.5 * true_share


def test_report_gains_and_eps0_overlap_against_independent_computations():
    h, z, _ = class_problem(n=60, scale=3.0)
    y = torch.arange(60) % 2
    selector = LCMatS(eps=1.0, k_dims=5, weighted=True)
    result = selector.select(features=h, logits=z, labels=y, per_class=6)
    gains, report = selection_report(selector, result, features=h, logits=z, labels=y)
    craig = make_selector("craig", weighted=False).select(
        features=h, logits=z, labels=y, per_class=6
    )
    for label in (0, 1):
        members = torch.nonzero(y == label).flatten()
        d = lcmat_dissimilarity(h[members], z[members], y[members], eps=1.0, k_dims=5)
        greedy = maximize(FacilityLocation(d.max() - d), 6, optimizer="naive")
        mine = y[result.indices] == label
        assert torch.equal(members[greedy.ranking], result.indices[mine])
        torch.testing.assert_close(gains[mine], greedy.gains.double(), rtol=1e-9, atol=1e-9)
        picked = set(result.indices[mine].tolist())
        other = set(craig.indices[y[craig.indices] == label].tolist())
        assert report[label]["eps0_overlap"] == len(picked & other) / 6
    assert min(r["eps0_overlap"] for r in report.values()) < 1  # eps=1 changes the picks here


def test_selection_dataset_for_avalanche(tmp_path):
    pytest.importorskip("avalanche")
    from replay_lcmat.strategies import selection_dataset

    folder = make_folder(tmp_path / "ds")
    out = tmp_path / "u.json"
    argv = select_argv(folder, out, "--method", "uniform", "--per-class", "3")
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    selection = replay_lcmat.load_selection(out)
    data = selection_dataset(out, ImageFolder(str(folder / "train")), task_label=2)
    assert len(data) == 9
    assert [int(t) for t in data.targets] == selection.labels.tolist()
    assert set(data.targets_task_labels) == {2}
    reference = ImageFolder(str(folder / "train"))
    x, label, task = data[4]
    ref_x, ref_label = reference[int(selection.indices[4])]
    assert np.array_equal(np.asarray(x), np.asarray(ref_x)) and label == ref_label and task == 2


def test_cifar10_archive_indices_address_the_same_images_in_imagefolder(cifar10_archive, tmp_path):
    """The real archive: a selection file made on it, read back through torchvision's
    ImageFolder over the extracted train/ folder (same file names, same pixels)."""
    cache = tmp_path / "cache"
    train, _ = load_image_folder(cifar10_archive, cache_dir=cache, progress=False)
    files = image_folder_files(cifar10_archive, cache_dir=cache)
    with tarfile.open(cifar10_archive) as tar:
        members = [m for m in tar.getmembers() if "/train/" in f"/{m.name}"]
        tar.extractall(tmp_path / "x", members=members, filter="data")
    (root,) = {p.parent for p in (tmp_path / "x").rglob("train")}
    reference = ImageFolder(str(root / "train"))
    assert [("/".join(p.split("/")[-2:]), t) for p, t in reference.samples] == [
        (f, int(c)) for f, c in zip(files, train.labels.tolist(), strict=True)
    ]
    result = make_selector("uniform", seed=3).select(labels=train.labels, per_class=2)
    record = selection_record_for(train, result, files)
    (tmp_path / "u.json").write_text(json.dumps(record))
    subset = selection_subset(tmp_path / "u.json", reference)
    for k, i in enumerate(result.indices.tolist()):
        image, label = subset[k]
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), train.images[i])
        assert label == int(train.labels[i])


def selection_record_for(train, result, files):
    return selection_record(
        indices=result.indices,
        labels=train.labels[result.indices],
        classes=train.classes,
        method="uniform",
        options={"seed": 3},
        seed=3,
        data="cifar10-jpeg.tar.gz",
        num_samples=len(train),
        files=files,
    )


def test_curvature_share_grows_with_the_scale_of_the_features():
    """README: lambda grows with h², g with h, so larger features (same logits) weigh the
    curvature term more; ratio of the two terms ~ the scale once ||h|| >> 1."""
    h, z, y = class_problem(n=30, scale=5.0)
    small, large = (curvature_share(a * h, z, y, eps=0.01, k_dims=7) for a in (1.0, 10.0))
    assert large.share > small.share
    ratio = (large.curvature_mean / large.gradient_rms) / (
        small.curvature_mean / small.gradient_rms
    )
    assert 8 < ratio < 10.5
