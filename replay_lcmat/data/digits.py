"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes): no download."""

from __future__ import annotations

import numpy as np
import torch

from replay_lcmat.data.image_data import ImageData, channel_stats


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Deterministic stratified train/test split of the digits, as uint8 ``[N, 1, 8, 8]``.

    The original 0..16 grey levels are scaled to 0..255. ``seed`` fixes the split.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_idx.sort()
    test_idx.sort()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    classes = tuple(str(c) for c in bunch.target_names)
    mean, std = channel_stats(x[train_idx])
    return (
        ImageData(x[train_idx], y[train_idx], classes, mean, std),
        ImageData(x[test_idx], y[test_idx], classes, mean, std),
    )
