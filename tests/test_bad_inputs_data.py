"""Bad data inputs (data loading): each gives a clear error or warning, or loads correctly."""

import io
import multiprocessing
import os
import re
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from replay_lcmat.cli import main
from replay_lcmat.data import CorruptDataError, load_cifar, load_image_folder
from replay_lcmat.data import archive as archive_module


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_folder(root, classes=("a", "b"), per_class=2, seed=0):
    """root/{train,test}/<class>/<i>.png, random 4x4 RGB; returns the pixels by relative path."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split in ("train", "test"):
        for cls in classes:
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                png(root / split / cls / f"{i}.png", arr)
                pixels[f"{split}/{cls}/{i}.png"] = arr
    return pixels


def make_tar(root, archive, arcname="ds"):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=arcname)
    return archive


def load(path, cache):
    return load_image_folder(path, cache_dir=cache, progress=False)


# -- the decode cache follows the folder's content ------------------------------------------------


def test_cache_follows_added_edited_and_removed_images(tmp_path):
    root, cache = tmp_path / "ds", tmp_path / "cache"
    write_folder(root)
    train, _ = load(root, cache)
    assert len(train) == 4

    added = np.full((4, 4, 3), 7, dtype=np.uint8)
    png(root / "train" / "a" / "2.png", added)
    train, _ = load(root, cache)
    assert len(train) == 5 and torch.equal(
        train.images[2], torch.from_numpy(added).permute(2, 0, 1)
    )

    edited = np.full((4, 4, 3), 200, dtype=np.uint8)
    png(root / "train" / "b" / "0.png", edited)
    train, _ = load(root, cache)
    assert torch.equal(train.images[3], torch.from_numpy(edited).permute(2, 0, 1))

    (root / "train" / "a" / "2.png").unlink()
    train, _ = load(root, cache)
    assert len(train) == 4 and train.labels.tolist() == [0, 0, 1, 1]
    # one cache file per source: older versions are removed when a new one is written
    assert len(list(cache.glob("*.npz"))) == 1


def test_damaged_cache_file_is_rebuilt(tmp_path):
    root, cache = tmp_path / "ds", tmp_path / "cache"
    pixels = write_folder(root)
    load(root, cache)
    (stored,) = cache.glob("*.npz")
    stored.write_bytes(b"not an npz")
    train, _ = load(root, cache)
    assert torch.equal(train.images[0], torch.from_numpy(pixels["train/a/0.png"]).permute(2, 0, 1))


# -- concurrent first loads -----------------------------------------------------------------------


def _load_in_child(root, cache, barrier, results):
    """Load with every rename held until all processes have written their temporary file."""
    real_replace = os.replace

    def replace_after_all(src, dst):
        barrier.wait(timeout=20)
        real_replace(src, dst)

    os.replace = replace_after_all
    try:
        train, _ = load_image_folder(root, cache_dir=cache, progress=False)
        results.put(("ok", int(train.images.sum())))
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put(("error", f"{type(err).__name__}: {err}"))


@pytest.mark.slow
def test_concurrent_first_loads_do_not_collide(tmp_path):
    root, cache = tmp_path / "ds", tmp_path / "cache"
    write_folder(root)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["replay_lcmat.data.folder"])
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_load_in_child, args=(root, cache, barrier, results)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [kind for kind, _ in outcomes] == ["ok"] * 3, outcomes
    assert len({total for _, total in outcomes}) == 1
    assert [p.name for p in cache.iterdir()] == [next(cache.glob("*.npz")).name]  # no temp left


# -- layout rules ---------------------------------------------------------------------------------


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    (root / "train" / "c").mkdir()
    with pytest.raises(
        ValueError, match=r"class folder\(s\) without images: train/c\b.*add images"
    ):
        load(root, tmp_path / "c1")
    archive = make_tar(root, tmp_path / "ds.tar.gz")
    with pytest.raises(ValueError, match=r"without images: ds/train/c\b"):
        load(archive, tmp_path / "c2")
    # hidden folders (e.g. .ipynb_checkpoints) and files are ignored, without a warning
    (root / "train" / "c").rmdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, _ = load(root, tmp_path / "c3")
    assert train.classes == ("a", "b")


def test_image_in_a_subfolder_of_a_class_is_an_error_naming_it(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    png(root / "train" / "a" / "sub" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"subfolder of a class folder: train/a/sub/x\.png.*move"):
        load(root, tmp_path / "c")


def test_image_directly_in_a_split_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    png(root / "test" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"directly in a split folder.*test/x\.png"):
        load(root, tmp_path / "c")


def test_two_top_folders_are_an_error_naming_both(tmp_path):
    root = tmp_path / "both"
    write_folder(root / "v1")
    write_folder(root / "v2")
    with pytest.raises(ValueError, match=r"2 datasets.*v1/, v2/.*Load one of them"):
        load(root, tmp_path / "c1")
    archive = make_tar(root, tmp_path / "both.tar.gz", arcname="both")
    with pytest.raises(ValueError, match=r"both/v1/, both/v2/"):
        load(archive, tmp_path / "c2")


def test_skipped_files_are_warned_about(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    png(root / "val" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (root / "train" / "a" / "2.tif").write_bytes(b"II*\0")
    (root / "README.txt").write_text("top-level notes are ignored without a warning")
    with pytest.warns(UserWarning) as caught:
        train, _ = load(root, tmp_path / "c")
    messages = " ".join(str(w.message) for w in caught)
    assert "outside train/ and test/: val/a/0.png" in messages
    assert "not an image suffix" in messages and "train/a/2.tif" in messages
    assert "README" not in messages and len(train) == 4


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    root = tmp_path / "grey16"
    rng = np.random.default_rng(0)
    expected = {}
    for split in ("train", "test"):
        for cls in ("a", "b"):
            arr = rng.integers(0, 65536, size=(4, 4), dtype=np.uint16)
            png(root / split / cls / "0.png", arr)
            assert Image.open(root / split / cls / "0.png").mode == "I;16"  # a real 16-bit PNG
            expected[(split, cls)] = np.rint(arr / 257.0).astype(np.uint8)
    train, _ = load(root, tmp_path / "c")
    assert train.shape == (1, 4, 4) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[0, 0], torch.from_numpy(expected[("train", "a")]))
    assert torch.equal(train.images[1, 0], torch.from_numpy(expected[("train", "b")]))


# -- corrupt archives, images and CIFAR batches ---------------------------------------------------


def _bad_archives(tmp_path):
    root = tmp_path / "ds"
    write_folder(root, per_class=8)
    good = make_tar(root, tmp_path / "good.tar.gz").read_bytes()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(root, arcname="ds")
    raw.seek(0)
    with tarfile.open(fileobj=raw) as tar:
        members = tar.getmembers()
    cut = members[len(members) // 2].offset  # a header boundary: tarfile alone stops quietly
    assert cut > 0
    archives = {
        "empty.tar.gz": b"",
        "garbage.tar.gz": b"this is not an archive" * 20,
        "truncated.tar.gz": good[: len(good) // 2],
        "truncated.tar": raw.getvalue()[:cut],
    }
    for name, data in archives.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in archives]


def test_corrupt_archives_name_the_path_and_the_fix(tmp_path):
    for archive in _bad_archives(tmp_path):
        path = re.escape(str(archive))
        with pytest.raises(CorruptDataError, match=rf"{path}.*(corrupt|empty).*[Rr]e-download"):
            load(archive, tmp_path / "cache")
        assert issubclass(CorruptDataError, ValueError)


def test_corrupt_image_names_the_member(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    (root / "train" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptDataError, match=r"cannot decode the image train/b/1\.png.*corrupt"):
        load(root, tmp_path / "c1")
    archive = make_tar(root, tmp_path / "ds.tar.gz")
    with pytest.raises(
        CorruptDataError, match=r"ds\.tar\.gz: cannot decode the image ds/train/b/1"
    ):
        load(archive, tmp_path / "c2")


def test_corrupt_cifar_batches_say_corrupt_with_the_path(tmp_path):
    import torchvision

    ds = torchvision.datasets.CIFAR10
    folder = tmp_path / "root" / ds.base_folder
    folder.mkdir(parents=True)
    for name, _ in [*ds.train_list, *ds.test_list]:
        (folder / name).write_bytes(b"truncated pickle")
    batch = re.escape(str(folder / "data_batch_1"))
    with pytest.raises(CorruptDataError, match=rf"{batch} is corrupt.*Delete") as caught:
        load_cifar("cifar10", tmp_path / "root")
    assert "batches.meta is missing" in str(caught.value)


# -- huge members are refused from their tar header, before reading ------------------------------


def test_tar_members_are_checked_by_name_and_size_before_reading(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_folder(root)
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="ds")
        blob = tarfile.TarInfo("ds/train/a/blob.bin")
        blob.size = 8 * 2**20  # zeros: compresses to a few KiB
        tar.addfile(blob, io.BytesIO(bytes(blob.size)))
    extracted = []
    real_extractfile = tarfile.TarFile.extractfile

    def recording_extractfile(self, member):
        extracted.append(getattr(member, "name", member))
        return real_extractfile(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", recording_extractfile)
    with pytest.warns(UserWarning, match="blob.bin"):
        train, _ = load(archive, tmp_path / "c1")
    assert len(train) == 4 and "ds/train/a/blob.bin" not in extracted

    extracted.clear()
    monkeypatch.setattr(archive_module, "MAX_IMAGE_BYTES", 50)  # every 4x4 PNG is larger
    with pytest.raises(
        ValueError, match=r"ds/test/a/0\.png is \d+ bytes, more than the 50 bytes.*not read"
    ):
        load(archive, tmp_path / "c2")
    assert extracted == []


# -- the command line prints one line, no traceback ------------------------------------------------


def test_cli_data_reports_a_corrupt_archive_in_one_line(tmp_path, capsys):
    for archive in _bad_archives(tmp_path):
        code = main(["data", "--data", str(archive), "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err
        assert code == 1
        assert err.strip().splitlines() == [err.strip()]
        assert err.startswith("replay-lcmat data: error: ") and str(archive) in err


def test_unwritable_cache_warns_and_still_loads(tmp_path):
    root = tmp_path / "ds"
    write_folder(root)
    (tmp_path / "a_file").write_text("")
    with pytest.warns(UserWarning, match=r"could not write the decode cache.*--cache-dir"):
        train, _ = load(root, tmp_path / "a_file" / "cache")
    assert len(train) == 4


# -- review cases: a member path that leaves the archive, a huge image ----------------------------


def test_tar_whose_members_all_go_up_names_the_skipped_members(tmp_path):
    data = io.BytesIO()
    Image.new("RGB", (4, 4)).save(data, "PNG")
    archive = tmp_path / "up.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("../train/a/x.png", "../test/a/y.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
    with pytest.raises(
        ValueError,
        match=r"no images under train/.*'\.\.' were skipped: \.\./train/a/x\.png.*tar -C",
    ):
        load(archive, tmp_path / "c")
    assert not (tmp_path.parent / "train").exists()  # nothing was written outside


def test_out_of_memory_while_decoding_is_not_called_corrupt(tmp_path, monkeypatch):
    from replay_lcmat.resources import NotEnoughMemoryError

    root = tmp_path / "ds"
    write_folder(root)

    def no_memory(img):
        raise MemoryError

    import replay_lcmat.data.decoding as decoding

    monkeypatch.setattr(decoding, "image_pixels", no_memory)
    with pytest.raises(NotEnoughMemoryError, match=r"not enough memory to decode the image .*4 x 4 pixels.*Free memory") as err:  # fmt: skip
        load(root, tmp_path / "c")
    assert not isinstance(err.value, CorruptDataError)
    assert "corrupt" not in str(err.value)
