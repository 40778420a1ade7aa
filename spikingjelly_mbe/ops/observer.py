"""Operand ranges ``A`` of the identity neurons (Eq. 9), observed on calibration batches."""
from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import List, Optional

import torch

SAMPLES_PER_BATCH = 1 << 16  # strided subsample kept per batch for percentile ranges
# a calibration sample whose peak |x| exceeds this multiple of the median sample's stands far beyond the rest
# (six of the code's digits): calibration leaves it out of the range, which it would otherwise set alone
ISOLATED = 64.0
# the index of the calibration batch running now (set by the calibration loop), named by the warnings
CALIBRATION_BATCH: ContextVar[int] = ContextVar("spikingjelly_mbe_calibration_batch", default=-1)


@dataclass(frozen=True)
class Extreme:
    """A calibration sample standing far beyond the rest: its ``batch`` and ``sample`` (index along the
    operand's first dimension), its ``peak`` ``|x|`` and the median sample's (``typical``)."""

    batch: int
    sample: int
    peak: float
    typical: float


def sample_peaks(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` of each sample (each index of the first dimension; a scalar is one sample)."""
    magnitude = x.detach().abs()
    if magnitude.dim() == 0:
        return magnitude.reshape(1)
    if magnitude.numel() == 0:
        return magnitude.new_zeros(0)
    return magnitude.reshape(magnitude.shape[0], -1).amax(1)


class ChannelMean:
    """The mean of a tensor per channel (dimension ``dim``) over every other index and every call,
    summed in float64 on the tensor's device (no host synchronisation)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.sums: Optional[torch.Tensor] = None
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        dim = self.dim % x.dim() if x.dim() else 0
        others = [d for d in range(x.dim()) if d != dim]
        sums = x.detach().double().sum(others) if others else x.detach().double().reshape(-1)
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += x.numel() // sums.numel()

    def mean(self) -> Optional[torch.Tensor]:
        """The per-channel means, or ``None`` when nothing was observed."""
        return None if self.sums is None else self.sums / self.count


class RangeObserver:
    """Records ``max |x|`` exactly and a strided (deterministic) subsample of ``|x|`` per batch, and
    each sample's peak, from which :meth:`isolated` finds the samples standing far beyond the rest."""

    def __init__(self) -> None:
        self.max = 0.0
        self.samples: List[torch.Tensor] = []
        self.sample_peaks: List[torch.Tensor] = []  # one tensor per observed call: its samples' peaks
        self.batches: List[int] = []  # the calibration batch of each call
        self.left_out: Optional[List[torch.Tensor]] = None  # per call, the samples a second pass leaves out
        self.calls = 0

    def admit(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What of ``x`` to observe: on the first pass over the calibration batches all of it (its
        samples' peaks recorded); on a second pass (after :meth:`isolated`) ``x`` without the samples
        left out, or ``None`` when this operand observes nothing more."""
        if self.left_out is None:
            self.sample_peaks.append(sample_peaks(x))
            self.batches.append(CALIBRATION_BATCH.get())
            return x
        if self.calls >= len(self.left_out):
            return None
        drop = self.left_out[self.calls]
        self.calls += 1
        if not bool(drop.any()):
            return x
        kept = x[~drop.to(x.device)] if x.dim() else x.new_zeros(0)
        return kept if kept.numel() else None

    def isolated(self) -> List[Extreme]:
        """The observed samples whose peak exceeds :data:`ISOLATED` times the median sample's (the
        lower median, so with two samples the larger can stand beyond the smaller). When there are
        any, the observer restarts and a second pass over the same batches observes the rest
        (:meth:`admit`); otherwise a second pass observes nothing."""
        counts = [p.numel() for p in self.sample_peaks]
        peaks = torch.cat([p.float().cpu() for p in self.sample_peaks]) if self.sample_peaks else torch.zeros(0)
        typical = float(peaks.sort().values[(peaks.numel() - 1) // 2]) if peaks.numel() >= 2 else 0.0
        far = peaks > ISOLATED * typical if typical > 0 else torch.zeros(peaks.shape, dtype=torch.bool)
        self.left_out, self.calls = (list(far.split(counts)) if bool(far.any()) else []), 0
        found = [Extreme(self.batches[call], int(s), float(self.sample_peaks[call][s]), typical)
                 for call, drop in enumerate(self.left_out) for s in drop.nonzero().flatten().tolist()]
        if found:
            self.max, self.samples = 0.0, []
        return found

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
