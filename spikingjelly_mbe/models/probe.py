"""Logistic-regression linear probe fitted on frozen features (full-batch L-BFGS, seeded L2 choice)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.split import split_indices

L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> nn.Linear:
    linear = nn.Linear(x.shape[1], classes, dtype=x.dtype)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=500, history_size=20,
                                  tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def _accuracy(linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((linear(x).argmax(-1) == y).float().mean())


def fit_linear_probe(features: torch.Tensor, labels: np.ndarray, seed: int = 0,
                     l2_grid: tuple[float, ...] = L2_GRID, val_fraction: float = 0.2) -> tuple[nn.Linear, dict]:
    """Multinomial logistic regression on standardised ``features``, as one ``nn.Linear`` on raw features.

    The L2 strength is the grid value with the best accuracy on a seeded validation part of the
    training set (ties go to the stronger penalty); the probe is then refitted on all of it.
    """
    x = features.double()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    classes = int(y.max()) + 1
    fit, val = (torch.as_tensor(i) for i in split_indices(len(y), val_fraction, seed))
    scores = {l2: _accuracy(_fit(z[fit], y[fit], classes, l2), z[val], y[val]) for l2 in l2_grid}
    best = max(l2_grid, key=lambda l2: scores[l2])
    linear = _fit(z, y, classes, best)
    head = nn.Linear(x.shape[1], classes, dtype=x.dtype)
    with torch.no_grad():
        weight = linear.weight / std
        head.weight.copy_(weight)
        head.bias.copy_(linear.bias - weight @ mean)
    info = {"l2": best, "val_accuracy": scores[best], "train_accuracy": _accuracy(head, x, y)}
    return head.float(), info
