"""Seeded orthogonal matrices for function-preserving rotations (:mod:`.rotation`).

``'hadamard'``: random signs times a Walsh-Hadamard matrix when the width is a power of two; else
random signs times the Kronecker product of the largest power-of-two Hadamard dividing the width
with a Haar-random orthogonal matrix of the odd factor (QuaRot's construction for such widths).
``'orthogonal'``: a Haar-random orthogonal matrix of the whole width. Every entry of a randomised
Hadamard matrix has magnitude ``1/sqrt(d)``: one outlier channel spreads evenly over all ``d``.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

KINDS: Dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {}


def sylvester(n: int) -> torch.Tensor:
    """The ``n x n`` Walsh-Hadamard matrix (Sylvester's construction) scaled to be orthogonal, float64."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Walsh-Hadamard matrix needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n ** 0.5


def haar(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed random ``n x n`` orthogonal matrix (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))).contiguous()


def randomised_hadamard(n: int, generator: torch.Generator) -> torch.Tensor:
    """``diag(s) (H_p kron R_m)`` with ``n = p m``, ``p`` the largest power of two dividing ``n``,
    ``R_m`` Haar-random (absent when ``m = 1``) and random signs ``s``."""
    power = n & -n
    core = sylvester(power)
    if n // power > 1:
        core = torch.kron(core, haar(n // power, generator))
    signs = torch.randint(0, 2, (n, 1), generator=generator, dtype=torch.float64) * 2 - 1
    return signs * core


KINDS.update(hadamard=randomised_hadamard, orthogonal=haar)


def rotation(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """An ``n x n`` orthogonal matrix of ``kind`` (a key of :data:`KINDS`), float64, drawn from ``generator``."""
    return KINDS[kind](n, generator)
