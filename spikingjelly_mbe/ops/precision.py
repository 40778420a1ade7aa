"""Per-layer precision of the MBE_Id operand codes (Eq. 9), allocated from calibration under an error budget.

A ``T``-digit code of range ``A`` rounds ``|x|`` to the nearest multiple of the step
``delta = A / L``, ``L = 2^T - 1`` (a balanced-ternary code's ``(3^T - 1) / 2``, everywhere below); the rounding adds noise of RMS ``delta / sqrt(12)`` (a uniform
quantiser). Calibrated at ``A = max |x|``, the step follows the operand's largest value, and a
heavy-tailed operand (most values far below its maximum) gets far more precision than its error
needs, paid in spikes: a signed-digit code fires about one spike per three digits *below the
value's leading digit*, so every halving of ``delta`` costs every value a third of a spike more.

Under a ``budget`` ``eps`` the step is instead set so the rounding noise is ``eps`` of the
operand's RMS seen on the calibration batches, ``delta = sqrt(12) eps rms``, and the code's range
becomes ``max(A, delta L)``: the same ``T`` time steps, no value clamped that ``A`` would
keep, and the digits below ``delta`` never fire. When ``T`` digits cannot reach the budget's step
over ``[0, A]`` the range stays ``A`` (the full-precision code). A weight layer's input takes the
RMS of its *typical channel* (the median of the channels' RMS, :meth:`ChannelCenters.typical_rms`):
a few outlier channels 100x the others would set the step of every channel from their own scale.

The default budget, ``'auto'`` (:data:`AUTO_BUDGETS`), depends on the code and on ``T``: a
weight layer's input gets ``2^-(3.5 + 5T/16)`` (``2^-6`` at ``T=8``, where per-channel ranges (then four times each
channel's peak) left steps no budget of ``2^-9`` ever reached, ``2^-8.5`` at ``T=16``; the line
through the two measured settings), a product's operands keep ``2^-9``.

Per-channel ranges (:class:`ChannelPeaks`): an operand whose channels differ by orders of magnitude
(Transformer hidden states, whose few outlier channels reach 100x the others) is coded with one
range per channel, ``A_k = A min(1, 2 max_k |x| / max |x|)`` (:data:`CHANNEL_HEADROOM`): an outlier channel no longer
coarsens every other. The neuron of channel ``k`` has input gain ``1 / A_k`` and output weight
``A_k`` (Eq. 9 per neuron), so the code of ``x`` is ``A_k`` times the code of ``x / A_k`` in the
unit range.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from .coding import MAX_RANGE, MIN_RANGE

AUTO = "auto"
# the default (``budget='auto'``) relative RMS rounding noise of each kind of calibrated code at T time
# steps: a weight layer's input against its typical channel's RMS, a product's operand against its own
# RMS (the figures behind the schedule: docs, ``python -m experiments.convert experiment=real_table``)
AUTO_BUDGETS: Dict[str, Callable[[float], float]] = {
    "weight_input": lambda T: 2.0 ** -(3.5 + 5 * T / 16),
    "operand": lambda T: 2.0 ** -9,
}
DEFAULT_BUDGET = AUTO
Budget = Union[float, str, None]


def check_budget(budget: Budget) -> Budget:
    """``budget`` must be ``None`` (every code at full precision), ``'auto'`` or a number in ``(0, 1)``;
    returns it."""
    if budget is None or budget == AUTO:
        return budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget < 1.0:
        raise ValueError(f"budget must be None (full precision), 'auto' (the default per code and T) or the "
                         f"relative RMS rounding noise per operand in (0, 1), e.g. 2**-10; got {budget!r}")
    return float(budget)


def resolve_budget(budget: Budget, digits: float, kind: str) -> Optional[float]:
    """The budget a code of ``kind`` (a key of :data:`AUTO_BUDGETS`) uses at the precision of ``digits``
    binary digits (``T`` for a binary or signed code, ``log2(levels + 1)`` for another: a ternary code's
    ``T`` steps hold ``log2((3^T + 1) / 2)``): ``'auto'`` resolved, anything else checked
    (:func:`check_budget`)."""
    budget = check_budget(budget)
    return AUTO_BUDGETS[kind](digits) if budget == AUTO else budget


def budget_step(rms: float, budget: float) -> float:
    """The largest rounding step whose noise RMS ``delta / sqrt(12)`` is ``budget * rms``."""
    return math.sqrt(12.0) * budget * rms


def covering_range(A: float, step: Optional[float], levels: int) -> float:
    """The range of a code of ``levels`` steps (``2^T - 1`` for ``T`` binary digits) of step at least
    ``step`` that keeps ``[0, A]``: ``max(A, step levels)`` (``A`` when ``step`` is ``None`` or 0)."""
    return max(A, step * float(levels)) if step else A


# A channel's range: this multiple of its calibrated maximum (one digit of room). An input beyond its
# range is coded at a power-of-two shift of it (coding.overflow_shift), so more room would only coarsen
# every step.
CHANNEL_HEADROOM = 2.0
CHANNEL_FLOOR = 2.0 ** -8  # ... and at least this fraction of the operand's range (channels never seen)


def channel_shares(peaks: torch.Tensor) -> torch.Tensor:
    """Each channel's range as a fraction of the operand's: ``2 peak_k / max_k peak_k``, within
    ``[CHANNEL_FLOOR, 1]``."""
    peak = max(float(peaks.max()), MIN_RANGE)
    return (CHANNEL_HEADROOM * peaks / peak).clamp(min=CHANNEL_FLOOR, max=1.0)


class ChannelPeaks:
    """``max |x|`` per channel (dimension ``dim`` of the operand) over the calibration batches."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.peaks: Optional[torch.Tensor] = None

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float64 rows ``[elements / channels, channels]`` (one column per channel)."""
        return x.detach().double().cpu().movedim(self.dim % x.dim(), -1).reshape(-1, x.shape[self.dim])

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        self.merge(x.detach().abs().double().cpu().reshape(1) if x.dim() == 0 else self.rows(x).abs().amax(0))

    def merge(self, peaks: torch.Tensor) -> None:
        """Fold one batch's per-channel ``max |x|`` into the running peaks."""
        if self.peaks is None:
            self.peaks = peaks
        elif self.peaks.shape == peaks.shape:
            self.peaks = torch.maximum(self.peaks, peaks)
        else:  # the channel count changes between batches (e.g. a sequence length): one range for all
            self.peaks = torch.maximum(self.peaks.max(), peaks.max()).reshape(1)

    def shares(self) -> torch.Tensor:
        """:func:`channel_shares` of the observed peaks."""
        if self.peaks is None:
            raise RuntimeError("no calibration data was observed")
        return channel_shares(self.peaks)


class ChannelCenters(ChannelPeaks):
    """:class:`ChannelPeaks`, and per channel the center ``c_k`` a centered code subtracts (the median
    of the calibration batches' medians: the bulk of the channel's values, so they code near zero
    and fire few spikes), its extremes and its first two moments. A channel count that changes
    between batches leaves no centers (:meth:`centers` is ``None``)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.medians: List[torch.Tensor] = []
        self.low = self.high = self.sums = self.squares = None
        self.count = 0
        self.consistent = True

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        if not self.consistent or x.dim() == 0 or (self.low is not None and self.low.numel() != x.shape[self.dim]):
            self.consistent = False
            super().observe(x)
            return
        rows = self.rows(x)  # once, for the peaks and the centers' statistics
        self.merge(rows.abs().amax(0))
        stats = (rows.amin(0), rows.amax(0), rows.sum(0), rows.square().sum(0))
        if self.low is None:
            self.low, self.high, self.sums, self.squares = stats
        else:
            self.low, self.high = torch.minimum(self.low, stats[0]), torch.maximum(self.high, stats[1])
            self.sums, self.squares = self.sums + stats[2], self.squares + stats[3]
        self.medians.append(rows.median(0).values)
        self.count += rows.shape[0]

    def centers(self) -> Optional[torch.Tensor]:
        """``c_k``, or ``None`` when no consistent channels were observed."""
        if not self.consistent or not self.medians:
            return None
        return torch.stack(self.medians).median(0).values

    def centered_peaks(self, centers: torch.Tensor) -> torch.Tensor:
        """``max |x_k - c_k|`` per channel over the calibration batches (from the extremes)."""
        return torch.maximum(self.high - centers, centers - self.low)

    def typical_rms(self, centers: Optional[torch.Tensor]) -> Optional[float]:
        """The median over channels of each channel's RMS of ``x - c`` (``c = 0`` without ``centers``):
        ``sqrt((S2_k - 2 c_k S1_k + n c_k^2) / n)``; ``None`` when no consistent channels were observed."""
        if not self.consistent or self.squares is None:
            return None
        c = torch.zeros_like(self.sums) if centers is None else centers
        squares = (self.squares - 2 * c * self.sums + self.count * c.square()) / self.count
        return float(squares.clamp(min=0.0).sqrt().median())


def channel_ranges(A: float, shares: Optional[torch.Tensor], step: Optional[float], levels: int) -> torch.Tensor:
    """The channel ranges ``A * shares`` (``[A]`` without shares), each at least the covering range of
    ``step`` over the code's ``levels`` (:func:`covering_range`), as float32 normal numbers."""
    shares = torch.ones(1, dtype=torch.float64) if shares is None else shares
    return (A * shares).clamp(min=max(covering_range(0.0, step, levels), MIN_RANGE), max=MAX_RANGE).float()


def along(ranges: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``ranges`` (one per channel) shaped to broadcast against ``x`` along dimension ``dim``; an
    ``x`` with another channel count than calibration saw (a scalar, another sequence length) gets
    the largest range for every element (one range per operand)."""
    ranges = ranges.to(device=x.device, dtype=x.dtype)
    if x.dim() == 0 or x.shape[dim] != ranges.numel():
        return ranges.max()
    shape = [1] * x.dim()
    shape[dim % x.dim()] = -1
    return ranges.view(shape)


def channel_layout(ranges: torch.Tensor, x: torch.Tensor, dim: int) -> Tuple[int, int, torch.Tensor]:
    """``(channels, inner, ranges)``: ``x`` viewed as ``[outer, channels, inner]`` with its channels
    along ``dim`` and their float32 ``ranges``, the layout of :func:`along` for the fused kernels (one
    channel holding every element, at the largest range, where :func:`along` broadcasts that)."""
    if x.dim() == 0 or x.shape[dim] != ranges.numel():
        return 1, max(x.numel(), 1), ranges.max().reshape(1).float()
    inner = math.prod(x.shape[dim % x.dim() + 1:])
    return ranges.numel(), inner, ranges.float().contiguous()
