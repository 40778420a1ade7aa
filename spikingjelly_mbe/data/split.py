"""Seeded, deterministic train/test splits shared by every data loader."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import numpy as np

X = TypeVar("X")


@dataclass(frozen=True)
class LabeledSplit(Generic[X]):
    """Inputs and integer labels, split into train and test."""

    train_x: X
    train_y: np.ndarray
    test_x: X
    test_y: np.ndarray


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices of a seeded permutation of ``range(n)``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def take(items: Sequence | np.ndarray, index: np.ndarray) -> list | np.ndarray:
    """``items[index]`` for arrays, a list for sequences."""
    return items[index] if isinstance(items, np.ndarray) else [items[i] for i in index]


def labeled_split(x: Sequence | np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> LabeledSplit:
    """Split paired inputs/labels with :func:`split_indices`."""
    train, test = split_indices(len(y), test_fraction, seed)
    return LabeledSplit(take(x, train), y[train], take(x, test), y[test])
