import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from replay_lcmat.data import (
    ImageData,
    RandomCropFlip,
    class_order,
    load_cifar,
    load_dataset,
    load_digits,
    load_image_folder,
    select_classes,
    task_classes,
)
from replay_lcmat.data import folder as folder_module

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def write_image_folder(root, sizes=None, classes=("b_cls", "a_cls"), per_class=3, seed=0):
    """Writes root/{train,test}/<class>/<i>.png with random pixels; returns the pixels by path."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                size = (sizes or {}).get((split, cls, i), (6, 5))
                arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
                path = root / split / cls / f"{i:02d}.png"
                Image.fromarray(arr).save(path)
                pixels[(split, cls, i)] = arr
    return pixels


def test_cifar10_archive_loads_with_counts_and_class_order(cifar10):
    train, test = cifar10
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert train.classes == CIFAR10_CLASSES and test.classes == CIFAR10_CLASSES
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    # labels are grouped by class in label order; normalisation is near zero-mean, unit-std
    assert torch.equal(train.labels, torch.arange(10).repeat_interleave(5000))
    x = train.subset(torch.arange(0, 50_000, 50)).normalized()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_image_folder_from_dir_and_tar_agree_and_cache(tmp_path):
    root = tmp_path / "ds"
    pixels = write_image_folder(root)
    cache = tmp_path / "cache"
    train, test = load_image_folder(root, cache_dir=cache, progress=False)
    assert train.classes == ("a_cls", "b_cls")  # sorted folder names = label order
    assert train.images.shape == (6, 3, 6, 5) and len(test) == 6  # H=6, W=5
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.from_numpy(pixels[("train", "b_cls", 1)]).permute(2, 0, 1)
    assert torch.equal(train.images[4], expected)
    assert len(list(cache.glob("*.npz"))) == 1

    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="ds")
    train_t, test_t = load_dataset(archive, cache_dir=cache, progress=False)
    assert torch.equal(train_t.images, train.images) and torch.equal(test_t.labels, test.labels)
    assert len(list(cache.glob("*.npz"))) == 2

    # the second load comes from the cache: decoding is not called again
    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    original = folder_module._decode_source
    folder_module._decode_source = fail
    try:
        again, _ = load_dataset(archive, cache_dir=cache, progress=False)
    finally:
        folder_module._decode_source = original
    assert torch.equal(again.images, train.images) and again.mean == train.mean


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", cache_dir=tmp_path)
    only_train = tmp_path / "only_train"
    write_image_folder(only_train)
    for p in sorted((only_train / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (only_train / "test").rmdir()
    with pytest.raises(ValueError, match="no images under test/"):
        load_image_folder(only_train, cache_dir=tmp_path / "c1", progress=False)
    mixed = tmp_path / "mixed"
    write_image_folder(mixed, sizes={("test", "a_cls", 2): (7, 7)})
    with pytest.raises(ValueError, match="mixed sizes"):
        load_image_folder(mixed, cache_dir=tmp_path / "c2", progress=False)


def test_unknown_dataset_name_is_named():
    with pytest.raises(
        FileNotFoundError, match="unknown dataset 'cifar11'.*cifar10, cifar100, digits"
    ):
        load_dataset("cifar11")


def test_torchvision_cifar_offline_errors_name_root_and_flag(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"root='.*empty'.*download=True"):
        load_cifar("cifar100", tmp_path / "empty", download=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(RuntimeError, match=r"could not download cifar10 into root=.*no internet"):
        load_cifar("cifar10", tmp_path / "dl", download=True)


def test_digits_split_is_deterministic_and_stratified():
    train, test = load_digits(seed=0)
    again, _ = load_digits(seed=0)
    other, _ = load_digits(seed=1)
    assert len(train) + len(test) == 1797 and train.shape == (1, 8, 8)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.labels, other.labels)
    counts = train.labels.bincount().float()
    assert counts.min() / counts.max() > 0.9
    assert int(train.images.max()) == 255


def test_image_data_validation():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ImageData(x, torch.tensor([0, 1, 2]), ("a", "b"), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="4-D"):
        ImageData(x[:, 0], torch.tensor([0, 1, 1]), ("a", "b"), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageData(x, torch.tensor([0, 1]), ("a", "b"), (0.5,), (0.5,))


def test_class_order_and_subsetting():
    assert class_order(100, 0) == np.random.RandomState(0).permutation(100).tolist()
    assert class_order(5, None) == [0, 1, 2, 3, 4]
    assert task_classes([4, 2, 0, 1, 3, 5], 3) == [[4, 2], [0, 1], [3, 5]]
    with pytest.raises(ValueError, match="equal tasks"):
        task_classes(range(10), 3)
    train, _ = load_digits()
    sub = select_classes(train, [7, 3], relabel=True)
    assert sub.classes == ("7", "3")
    assert torch.equal(
        sub.labels, (train.labels[(train.labels == 7) | (train.labels == 3)] == 3).long()
    )
    kept = select_classes(train, [7, 3])
    assert set(kept.labels.tolist()) == {3, 7} and kept.classes == train.classes
    with pytest.raises(ValueError, match="not labels of this dataset"):
        select_classes(train, [10])


def test_random_crop_flip_is_a_crop_of_the_padded_image_and_seeded():
    x = torch.randn(16, 3, 8, 8)
    aug = RandomCropFlip(padding=2)
    out = aug(x, torch.Generator().manual_seed(0))
    again = aug(x, torch.Generator().manual_seed(0))
    other = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.equal(out, again) and not torch.equal(out, other)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):
        crops = [
            c
            for dy in range(5)
            for dx in range(5)
            for c in (padded[i, :, dy : dy + 8, dx : dx + 8],)
        ]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    flips = RandomCropFlip(padding=0)(x, torch.Generator().manual_seed(3))
    flipped = [torch.equal(flips[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(flips[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)
