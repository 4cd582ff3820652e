"""CIFAR-10 / CIFAR-100 through torchvision, with errors that say what to do offline."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from replay_lcmat.data.image_data import ImageData
from replay_lcmat.files import CorruptDataError

# Per-channel statistics of the training sets, in [0, 1] pixel units.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DOWNLOAD_TIMEOUT_S = 30.0


@contextmanager
def _socket_timeout(seconds: float):
    """Bound every socket operation of a download, so an offline machine fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _damage(dataset_cls: type, root: Path) -> list[str] | None:
    """What is wrong with torchvision's extracted folder under ``root``: None when there is no
    such folder, else one line per batch or meta file that is missing or fails its MD5 checksum
    (torchvision's own check reports both as "not found or corrupted")."""
    from torchvision.datasets.utils import check_integrity  # torchvision loads on first use

    folder = root / dataset_cls.base_folder
    if not folder.is_dir():
        return None
    meta = dataset_cls.meta
    problems = []
    for name, md5 in [
        *dataset_cls.train_list,
        *dataset_cls.test_list,
        [meta["filename"], meta["md5"]],
    ]:
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif not check_integrity(path, md5):  # torchvision's MD5 check
            problems.append(f"{path} is corrupt (truncated or damaged: its MD5 checksum differs)")
    return problems


def load_cifar(
    name: str, root: str | Path, *, download: bool = False
) -> tuple[ImageData, ImageData]:
    """Train and test splits of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``).

    Args:
        root: folder holding torchvision's extracted archive (``cifar-10-batches-py`` or
            ``cifar-100-python``), or where to download it.
        download: fetch the archive from the internet when it is missing.

    Returns:
        ``(train, test)`` with uint8 images ``[N, 3, 32, 32]``.
    """
    import torchvision

    if name not in CIFAR_STATS:
        raise ValueError(f"unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'.")
    dataset_cls = (
        torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    )
    root = Path(root).expanduser()
    splits = []
    for train in (True, False):
        if not download:
            try:
                ds = dataset_cls(root=str(root), train=train, download=False)
            except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
                problems = _damage(dataset_cls, root)
                if problems:
                    raise CorruptDataError(
                        f"{name} under root={str(root)!r} is damaged: {'; '.join(problems)}. "
                        f"Delete {root / dataset_cls.base_folder} and download it again "
                        f"(download=True, --download on the command line), or copy in an intact "
                        f"copy of torchvision's extracted {name} archive."
                    ) from err
                if problems is not None:  # the files check out: torchvision failed otherwise
                    raise RuntimeError(
                        f"could not load {name} from root={str(root)!r}: {err}"
                    ) from err
                raise FileNotFoundError(
                    f"{name} not found under root={str(root)!r} and download=False. Pass "
                    f"download=True (--download on the command line) on a machine with internet, "
                    f"or put torchvision's extracted {name} archive in that folder."
                ) from err
        else:
            try:
                with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                    ds = dataset_cls(root=str(root), train=train, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise RuntimeError(
                    f"could not download {name} into root={str(root)!r} (download=True): {err}. "
                    f"This machine may have no internet: download the archive elsewhere, put it in "
                    f"that folder, then use download=False."
                ) from err
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        mean, std = CIFAR_STATS[name]
        splits.append(ImageData(images, labels, tuple(ds.classes), mean, std))
    return splits[0], splits[1]
