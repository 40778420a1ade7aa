"""Operand ranges ``A`` of the identity neurons (Eq. 9), observed on calibration batches."""
from __future__ import annotations

import math
from typing import List, Optional

import torch

SAMPLES_PER_BATCH = 1 << 16  # strided subsample kept per batch for percentile ranges


class RangeObserver:
    """Records ``max |x|`` exactly and a strided (deterministic) subsample of ``|x|`` per batch."""

    def __init__(self) -> None:
        self.max = 0.0
        self.samples: List[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        magnitude = x.detach().abs().flatten()
        if magnitude.numel() == 0:
            return
        self.max = max(self.max, float(magnitude.max()))
        stride = max(1, magnitude.numel() // SAMPLES_PER_BATCH)
        self.samples.append(magnitude[::stride].to(device="cpu", dtype=torch.float64))

    def range(self, percentile: Optional[float] = None) -> float:
        """``max |x|``, or the ``percentile`` of ``|x|`` (estimated on the subsample); at least the
        smallest normal float32, so an operand that was always zero still gets a valid range."""
        if not self.samples:
            raise RuntimeError("no calibration data was observed")
        if percentile is None or percentile >= 100.0:
            value = self.max
        else:
            if not 0.0 < percentile < 100.0:
                raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
            pool = torch.cat(self.samples)
            k = max(1, math.ceil(percentile / 100.0 * pool.numel()))
            value = float(pool.kthvalue(k).values)
        return max(value, torch.finfo(torch.float32).tiny)

    def rms(self) -> float:
        """Root mean square of ``x`` (estimated on the subsample)."""
        if not self.samples:
            raise RuntimeError("no calibration data was observed")
        return float(torch.cat(self.samples).square().mean().sqrt())
