"""Bad inputs, faults and misuse of condensation, checkpoints and the condense/select CLI:
each case gets an early error that names the problem, the file and the fix,
or a documented behaviour. Tiny random images and networks keep the file fast."""

import math
import os
import pickle
import re

import pytest
import torch

from replay_lcmat.cli import main
from replay_lcmat.cli.common import check_output_path
from replay_lcmat.condensation import DSA, load_synthetic, make_condenser
from replay_lcmat.condensation.storage import data_fingerprint, fingerprint_differences
from replay_lcmat.data import CorruptDataError
from replay_lcmat.memory import ClassMemory
from replay_lcmat.models import ConvNet
from replay_lcmat.validation import check_number

TINY = {
    "network_options": {"width": 4, "depth": 1},
    "batch_real": 4,
    "augment": False,
    "progress": False,
}
GM_TINY = TINY | {"outer_loop": 1, "inner_loop": 1, "batch_train": 8}


def _options(method, **extra):
    return (TINY if method == "dm" else GM_TINY) | extra


def _data(per_class=5, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randn(len(labels), 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1)
    return images, labels


def _run(path=None, *, seed=0, data=None, method="dm", iterations=1, **extra):
    images, labels = _data() if data is None else data
    condenser = make_condenser(
        method,
        iterations=iterations,
        seed=seed,
        checkpoint=path,
        **_options(method, **extra),
    )
    return condenser.condense(images, labels, per_class=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # results compared bit for bit


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


# ----------------------------------------------------- 1. resume checks network and data
def test_resume_refuses_another_network(tmp_path):
    path = tmp_path / "run.pt"
    _run(path)
    mlp = TINY | {"network": "mlp", "network_options": {}}
    with pytest.raises(ValueError, match=r"cannot resume.*network: saved 'convnet', now 'mlp'"):
        make_condenser("dm", iterations=2, **mlp).condense(*_data(), resume=path, per_class=2)
    with pytest.raises(ValueError, match=r"network_options: saved \{'width': 4"):
        make_condenser(
            "dm", iterations=2, **(TINY | {"network_options": {"width": 8, "depth": 1}})
        ).condense(*_data(), resume=path, per_class=2)


def test_resume_refuses_other_data_of_the_same_shape(tmp_path):
    path = tmp_path / "run.pt"
    images, labels = _data()
    _run(path, data=(images, labels))
    resumed = make_condenser("dm", iterations=2, **TINY)
    with pytest.raises(ValueError, match=r"other data \(pixel values: same shape but other"):
        resumed.condense(images + 0.5, labels, resume=path, per_class=2)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="labels: the same count per class but in another order"):
        resumed.condense(images, labels[order], resume=path, per_class=2)
    # the same data, another tensor: resumes
    resumed.condense(images.clone(), labels.clone(), resume=path, per_class=2)
    assert load_synthetic(path).fingerprint == data_fingerprint(images, labels)


def test_fingerprint_is_cheap_and_tells_what_differs():
    images, labels = _data()
    same = data_fingerprint(images, labels)
    assert fingerprint_differences(same, data_fingerprint(images.clone(), labels.clone())) == []
    moved = data_fingerprint(images * 1.01, labels)
    assert fingerprint_differences(same, moved)[0].startswith("pixel values")
    other = data_fingerprint(images[:-2], labels[:-2])
    assert fingerprint_differences(same, other) == [
        "images: saved shape [10, 1, 8, 8], now [8, 1, 8, 8]"
    ]


def test_checkpoint_without_fingerprint_still_resumes_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    expected = _run(iterations=2).images
    _run(path)
    old = load_synthetic(path)
    old.fingerprint = {}  # as saved before the fingerprint existed
    old.save(path)
    resumed = make_condenser("dm", iterations=2, checkpoint=path, **TINY)
    with pytest.warns(UserWarning, match="predates the data fingerprint.*cannot be checked"):
        got = resumed.condense(*_data(), resume=path, per_class=2).images
    assert torch.equal(got, expected)


def _factory(**shape):
    return ConvNet(**shape, width=4, depth=1)


def test_network_factory_is_recorded_without_memory_addresses(tmp_path):
    path = tmp_path / "run.pt"
    options = TINY | {"network": _factory, "network_options": None}
    make_condenser("dm", iterations=1, checkpoint=path, **options).condense(*_data(), per_class=2)
    saved = load_synthetic(path)
    assert saved.options["network"].startswith("<function _factory") and "0x" not in str(saved)
    # a set without a data fingerprint resumes with a warning
    saved.fingerprint = {}
    saved.save(path)
    resumed = make_condenser("dm", iterations=2, **options)
    with pytest.warns(UserWarning, match="predates the data fingerprint"):
        resumed.condense(*_data(), resume=path, per_class=2)


# ------------------------------------------------- 2. a rerun does not overwrite another run
def test_rerun_refuses_to_overwrite_another_run(tmp_path):
    path = tmp_path / "run.pt"
    _run(path, seed=0)
    before = path.read_bytes()
    with pytest.raises(
        ValueError,
        match=r"already holds another run \('dm', seed 0.*seed: saved 0, now 1.*overwrite=True",
    ):
        _run(path, seed=1)
    with pytest.raises(ValueError, match="other content"):
        _run(path, seed=0, data=_data(seed=3))
    assert path.read_bytes() == before  # untouched
    _run(path, seed=0)  # an identical run may rewrite its own file
    _run(path, seed=1, overwrite=True)
    assert load_synthetic(path).seed == 1


def test_rerun_refuses_to_overwrite_a_foreign_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("my notes\n")
    with pytest.raises(ValueError, match=r"notes.pt already exists and is not a synthetic set"):
        _run(path)
    assert path.read_text() == "my notes\n"
    _run(path, overwrite=True)
    assert load_synthetic(path).iteration == 1


def test_checkpoint_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint .* is a directory; pass a file path"):
        _run(tmp_path)


def test_cli_rerun_refuses_before_loading_data(tmp_path, monkeypatch, capsys):
    out = tmp_path / "syn.pt"
    base = [
        "condense",
        "--data",
        "digits",
        "--method",
        "dm",
        "--per-class",
        "1",
        "--iterations",
        "1",
    ]
    base += ["--option", 'network_options={"width":4}', "--option", "batch_real=4"]
    base += ["--device", "cpu", "--no-progress"]
    base += ["--out", str(out)]
    assert main(base) == 0
    capsys.readouterr()
    monkeypatch.setattr("replay_lcmat.cli.condense.load_dataset", _no_work)
    assert main(base + ["--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "already holds another run" in err and "seed: saved 0, now 3" in err
    assert "--overwrite" in err and "--resume" in err
    monkeypatch.undo()
    assert main(base + ["--seed", "3", "--overwrite"]) == 0
    assert load_synthetic(out).seed == 3


# ----------------------------------------------------- 3. ipc larger than a class
def _uneven(sizes=(3, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    images = torch.randn(len(labels), 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1)
    return images, labels


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "lcmat-c"])
@pytest.mark.parametrize("init", ["noise", "real"])
def test_a_class_smaller_than_per_class_is_kept_whole_with_the_engines_warning(method, init):
    """The small-class rule of every selection entry point: class 0 (3 images, per_class=4)
    is its real images, in index order, with the engine's warning; class 1 is condensed as a
    run on class 1 alone condenses it."""
    images, labels = _uneven()
    opts = _options(method, init=init)
    with pytest.warns(UserWarning) as caught:
        result = make_condenser(method, iterations=1, **opts).condense(images, labels, per_class=4)
    assert [str(w.message) for w in caught] == [
        "class 0 has only 3 sample(s), fewer than the 4 asked for: all of them are kept."
    ]
    assert result.labels.tolist() == [0] * 3 + [1] * 4
    assert torch.equal(result.images[:3], images[labels == 0])
    alone = make_condenser(method, iterations=1, classes=[1], **opts)
    expected = alone.condense(images, labels, per_class=4)
    assert torch.equal(result.images[3:], expected.images)
    assert result.losses == expected.losses
    assert torch.equal(result.synthetic.images, result.images)
    assert torch.equal(result.synthetic.labels, result.labels)


def test_every_class_smaller_than_per_class_gives_the_real_images():
    images, labels = _uneven((2, 3))
    with pytest.warns(UserWarning, match="class 0 has only 2 .*; class 1 has only 3 .*kept"):
        result = make_condenser("lcmat-c", iterations=5, **GM_TINY).condense(
            images, labels, per_class=4
        )
    order = torch.sort(labels, stable=True).indices
    assert torch.equal(result.images, images[order]) and torch.equal(result.labels, labels[order])
    assert result.losses == [] and result.synthetic.complete


def test_resuming_a_run_with_a_class_kept_whole_equals_the_uninterrupted_run(tmp_path):
    images, labels = _uneven()
    path = tmp_path / "syn.pt"
    run = {"checkpoint_every": 1, "seed": 3} | TINY
    with pytest.warns(UserWarning, match="class 0 has only 3"):
        whole = make_condenser("dm", iterations=3, **run).condense(images, labels, per_class=4)
        make_condenser("dm", iterations=1, checkpoint=path, **run).condense(
            images, labels, per_class=4
        )
        resumed = make_condenser("dm", iterations=3, checkpoint=path, **run).condense(
            images, labels, per_class=4, resume=path
        )
    assert torch.equal(resumed.images, whole.images) and resumed.losses == whole.losses
    assert torch.equal(load_synthetic(path).images, whole.images)


# ------------------------------------------------ 4. corrupt checkpoint and memory files
def _bad_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "replay-lcmat/synthetic-set", "x": torch.ones(100)}, good)
    data = good.read_bytes()
    files = {
        "zero": b"",
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 4,
        "text": b"hello\n",
        "pickle": pickle.dumps({"format": object}, protocol=4),
    }
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
        yield tmp_path / f"{name}.pt"


def test_corrupt_synthetic_set_files(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(
            CorruptDataError, match="corrupt or not a replay-lcmat synthetic set"
        ) as err:
            load_synthetic(path)
        assert str(path) in str(err.value) and "weights_only" not in str(err.value)
        with pytest.raises(ValueError, match="corrupt or not a replay-lcmat synthetic set"):
            make_condenser("dm", iterations=1, **TINY).condense(*_data(), resume=path, per_class=2)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "replay-lcmat/synthetic-set", "version": 1}, incomplete)
    with pytest.raises(CorruptDataError, match=r"incomplete.pt is a corrupt.*missing \['images'"):
        load_synthetic(incomplete)


def test_corrupt_class_memory_files(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(
            CorruptDataError, match="corrupt or not a replay-lcmat class memory"
        ) as err:
            ClassMemory.load(path)
        assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    incomplete = tmp_path / "memory.pt"
    torch.save({"format": "replay-lcmat/class-memory", "version": 1, "classes": [0]}, incomplete)
    with pytest.raises(CorruptDataError, match=r"memory.pt: corrupt replay-lcmat class memory"):
        ClassMemory.load(incomplete)


def test_cli_corrupt_resume_file_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    monkeypatch.setattr("replay_lcmat.cli.condense.load_dataset", _no_work)
    argv = [
        "condense",
        "--data",
        "digits",
        "--method",
        "dm",
        "--per-class",
        "1",
        "--iterations",
        "1",
    ]
    assert main(argv + ["--out", str(tmp_path / "o.pt"), "--resume", str(bad)]) == 1
    assert f"{bad} is corrupt or not a replay-lcmat synthetic set" in capsys.readouterr().err


# --------------------------------------------------------- 5. output paths checked first
def test_check_output_path(tmp_path):
    target = tmp_path / "a" / "b" / "x.pt"
    assert check_output_path(target) == target and target.parent.is_dir()
    with pytest.raises(ValueError, match=r"--out .* is a directory; pass a file path in it"):
        check_output_path(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"is under .*file.txt, which is a file, not a folder"):
        check_output_path(blocker / "sub" / "x.pt")


def test_check_output_path_unwritable_folder(tmp_path):
    if os.geteuid() == 0:  # root writes through any mode bits; /proc takes no new files
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs /proc or a non-root user")
        target = "/proc/replay-lcmat-test.pt"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "x.pt"
    with pytest.raises(ValueError, match=r"--out .*(replay-lcmat-test|x)\.pt cannot be written"):
        check_output_path(target)


@pytest.mark.parametrize("command", ["condense", "select"])
def test_cli_bad_out_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    module = f"replay_lcmat.cli.{command}"
    monkeypatch.setattr(f"{module}.load_dataset", _no_work)
    if command == "select":
        monkeypatch.setattr("replay_lcmat.cli.select.selection_model_outputs", _no_work)
        argv = ["select", "--data", "digits", "--method", "uniform", "--per-class", "2"]
    else:
        argv = ["condense", "--data", "digits", "--method", "dm", "--per-class", "1"]
        argv += ["--iterations", "1"]
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    assert main(argv + ["--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert main(argv + ["--out", str(blocker / "x.out")]) == 1
    assert "which is a file, not a folder" in capsys.readouterr().err


def test_cli_select_creates_a_missing_output_folder(tmp_path):
    out = tmp_path / "new" / "folder" / "sel.json"
    argv = ["select", "--data", "digits", "--method", "uniform", "--per-class", "1"]
    argv += ["--model", "mlp", "--pretrain-epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(argv + ["--out", str(out)]) == 0
    assert out.is_file()


# ------------------------------------------------------ 6. CLI budgets checked first
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["select", "--method", "uniform", "--per-class", "0"], "--per-class must be an integer"),
        (["select", "--method", "uniform", "--fraction", "1.5"], r"--fraction must be in \(0, 1\]"),
        (["select", "--method", "uniform", "--fraction", "nan"], r"--fraction must be in \(0, 1\]"),
        (
            ["condense", "--method", "dm", "--per-class", "0", "--iterations", "1"],
            "per_class .* >= 1",
        ),
        (["condense", "--method", "dm", "--per-class", "1", "--iterations", "-1"], "iterations"),
        (
            [
                "condense",
                "--method",
                "dm",
                "--per-class",
                "1",
                "--iterations",
                "1",
                "--option",
                "lr_img=NaN",
            ],
            "lr_img must be a finite real number > 0; got nan",
        ),
        (
            [
                "condense",
                "--method",
                "dm",
                "--per-class",
                "1",
                "--iterations",
                "1",
                "--option",
                "network=cnn",
            ],
            "unknown network 'cnn'",
        ),
    ],
)
def test_cli_budget_and_options_fail_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(f"replay_lcmat.cli.{argv[0]}.load_dataset", _no_work)
    if argv[0] == "select":
        monkeypatch.setattr("replay_lcmat.cli.select.selection_model_outputs", _no_work)
    argv = argv + ["--data", "digits", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    assert re.search(message, capsys.readouterr().err)


# ------------------------------------------------------------ 7. numeric options validated
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("iterations", -1, r"iterations must be an int >= 0; got -1 \(int\)"),
        ("iterations", 1.0, r"iterations must be an int >= 0; got 1\.0 \(float\)"),
        ("seed", 0.5, r"seed must be an int in \[0, \d+\]; got 0\.5"),
        ("seed", -1, r"seed must be an int in \[0, \d+\]; got -1"),
        ("lr_img", NAN, r"lr_img must be a finite real number > 0; got nan \(float\)"),
        ("lr_img", 0, r"lr_img must be a finite real number > 0; got 0 \(int\)"),
        ("momentum_img", 1.0, r"momentum_img must be a finite real number in \[0, 1\); got 1\.0"),
        ("batch_real", True, r"batch_real must be an int >= 1; got True \(bool\)"),
        ("batch_real", 0, r"batch_real must be an int >= 1; got 0"),
        ("checkpoint_every", 0, r"checkpoint_every must be an int >= 1; got 0"),
        ("rho", -0.1, r"rho must be a finite real number >= 0; got -0\.1"),
        ("rho", INF, r"rho must be a finite real number >= 0; got inf"),
        ("outer_loop", 0, r"outer_loop must be an int >= 1; got 0"),
        ("inner_loop", 1.5, r"inner_loop must be an int >= 0; got 1\.5 \(float\)"),
        ("lr_net", NAN, r"lr_net must be a finite real number > 0; got nan"),
        ("batch_train", 0, r"batch_train must be an int >= 1; got 0"),
        ("classes", [0, 0], r"lcmat-c option classes must be distinct labels"),
        ("classes", [0.5], r"lcmat-c option classes\[0\] must be an int; got 0\.5 \(float\)"),
        ("classes", "01", r"option classes must be a list of int labels or None; got '01'"),
        ("progress", "no", r"lcmat-c option progress must be True or False; got 'no' \(str\)"),
        ("init", "zeros", r"init must be one of 'noise', 'real'; got 'zeros' \(str\)"),
        ("network", "cnn", r"unknown network 'cnn'; choose one of convnet"),
        ("augment", DSA, r"option augment must be True, False or a DSA instance; got <class"),
    ],
)
def test_condenser_options_are_validated_at_construction(option, value, message):
    # every bad option value is a ValueError (a wrong type too): the CLI prints it in one line
    options = {"iterations": 1} | {option: value}
    with pytest.raises(ValueError, match=message):
        make_condenser("lcmat-c", **options)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("flip", 1.5, r"^DSA option flip must be a finite real number in \[0, 1\]; got 1\.5"),
        ("rotate", NAN, r"DSA option rotate must be a finite real number >= 0; got nan"),
        ("scale", 0.5, r"DSA option scale must be a finite real number >= 1; got 0\.5"),
        ("strategy", 3, r"DSA option strategy must be transform names joined by '_'; got 3"),
    ],
)
def test_dsa_options_are_validated(option, value, message):
    with pytest.raises(ValueError, match=message):
        DSA(**{option: value})


def test_check_number_returns_plain_values():
    import numpy as np

    assert check_number("dm", "n", np.int64(3), integer=True) == 3
    assert type(check_number("dm", "n", np.int64(3), integer=True)) is int
    assert type(check_number("dm", "x", 1, exclusive_minimum=0)) is float
    with pytest.raises(ValueError, match=r"^dm option x must be a finite real number; got None"):
        check_number("dm", "x", None)


# ------------------------------------------------------- review case: channels-last images
@pytest.mark.parametrize("method", ["dm", "lcmat-c"])
def test_channels_last_images_are_named_before_any_pooling(method):
    images, labels = _data()
    last = images.repeat(1, 3, 1, 1).permute(0, 2, 3, 1)  # [N, 8, 8, 3]
    condenser = make_condenser(method, iterations=1, **_options(method))
    with pytest.raises(ValueError, match=r"images look channels-last \[N, H, W, C\]; permute"):
        condenser.condense(last, labels, per_class=2)
