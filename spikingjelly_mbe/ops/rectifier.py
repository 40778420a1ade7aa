"""Exact rectifiers on identity neurons: ReLU, piecewise-linear activations and max pooling (Eq. 9).

An MBE_Id neuron with a *positive* input gain never reaches threshold for a negative membrane
potential, so it fires the binary digits of ``relu(x)`` quantised to ``2^T`` levels of ``[0, A]``:
ReLU costs no fitted curve, only the operand coding of the products (error at most ``A / 2^(T+1)``).
Every piecewise-linear function is ``c0 + c1 x + sum_i w_i relu(x - t_i)`` (leaky ReLU, ReLU6,
hardtanh, clamp), and ``max(a, b) = a + relu(b - a)`` folds a pooling window.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..activations import activation_entry
from . import flops
from .base import DEFAULT_MODE, DEFAULT_T, CalibratedOp, Count, float_function, working_dtype
from .observer import Extreme, RangeObserver
from .precision import ChannelPeaks, along, channel_layout, channel_ranges
from .coding import (BEYOND_SHIFT, DEFAULT_CODE, MAX_RANGE, MIN_RANGE, IdentityCoder, check_code, check_steps,
                     equivalent_digits, finite, total)


class SpikingReLU(CalibratedOp):
    """``relu(x)`` as the spikes of one MBE_Id neuron of range ``[0, A]`` (Eq. 9, positive gain).

    With ``A=None`` the operator starts ``calibrating`` (float ReLU, ``max relu(x)`` observed), like
    the products; :meth:`finish_calibration` / :meth:`set_ranges` fix ``A``. A value above the range
    is coded at ``2^e A``, ``e >= 0`` the smallest exponent that holds it
    (:func:`~.coding.overflow_shift`: a comparison and an exponent shift of that neuron's spike
    weights), clamped and counted only beyond the largest shift. With ``per_channel`` the last
    dimension holds channels, coded as :class:`~.weight_input.SpikingWeightInput` codes its input:
    calibration gives channel ``k`` the range ``A_k = A`` times its share
    (:func:`~.precision.channel_shares`), so a channel far below the largest keeps its precision. ``code``:
    the digit code (:data:`~.coding.CODES`). SOPs: one per spike; ``ann_flops``:
    :attr:`ann_flops_per_element` (one comparison; 0 inside an activation that charges its own).
    """

    operands = 1  # ranges (A,)
    ann_flops_per_element = flops.RELU
    calibrated_buffers = ("channel_ranges",)

    def __init__(self, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, A: Optional[float] = None, code: str = DEFAULT_CODE,
                 per_channel: bool = False) -> None:
        super().__init__(mode)
        self.T, self.code, self.per_channel = check_steps(T), check_code(code), bool(per_channel)
        self.precision_digits = equivalent_digits(self.code, self.T)  # sets the working dtype
        self.coder = IdentityCoder(self.T, 1.0, self.code, shift_overflow=True)  # on relu(x) / A_k
        self.shares: Optional[torch.Tensor] = None  # each channel's share of A (per_channel), set by calibration
        self.register_buffer("channel_ranges", None)
        self.observer, self.peaks = RangeObserver(), ChannelPeaks(-1)
        self.calibrating = A is None
        if A is not None:
            self.set_ranges((A,))

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "SpikingReLU":
        """The spiking twin of an ``nn.ReLU`` module or of ``torch.relu`` / ``F.relu``. ``options``:
        ``T``, ``mode``, ``A`` (else calibrated), ``code``, ``per_channel``."""
        float_function(cls, float_op, (torch.relu, F.relu), (nn.ReLU,), "an nn.ReLU module or torch.relu / F.relu")
        return cls(**options)

    @property
    def ranges(self) -> Optional[Tuple[float]]:
        """``(A,)``, the largest channel range."""
        return None if self.channel_ranges is None else (float(self.channel_ranges.max()),)

    def set_ranges(self, ranges: Sequence[float]) -> None:
        """Fix the range ``(A,)`` of the neuron (times each channel's calibrated share) and stop calibrating."""
        ranges = tuple(ranges)
        if len(ranges) != 1 or not (isinstance(ranges[0], (int, float)) and math.isfinite(ranges[0]) and ranges[0] > 0):
            raise ValueError(f"SpikingReLU: ranges must be one positive finite number (A,), got {ranges!r}")
        if not MIN_RANGE <= ranges[0] <= MAX_RANGE:
            raise ValueError(f"SpikingReLU: the range A={ranges[0]!r} must lie in [2^-126, 2^126]; rescale the input")
        self.channel_ranges = channel_ranges(float(ranges[0]), self.shares, None, self.coder.levels)
        self.calibrating = False

    def calibrated_state(self) -> Dict[str, Any]:
        return {"shares": self.shares, "calibrating": self.calibrating}

    def restore_calibrated(self, state: Dict[str, Any]) -> None:
        self.shares, self.calibrating = state["shares"], state["calibrating"]

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float]:
        """``A`` from the observed ``max relu(x)`` (or its ``percentile``); with ``per_channel`` and no
        ``percentile``, each channel's share from its observed maximum."""
        if not self.observer.samples:
            raise RuntimeError("SpikingReLU: finish_calibration() before any calibration forward; run a few "
                               "batches while calibrating, or call set_ranges((A,))")
        per_channel = self.per_channel and percentile is None and self.peaks.peaks is not None
        self.shares = self.peaks.shares() if per_channel else None
        self.set_ranges((max(self.observer.range(percentile), MIN_RANGE),))
        self.observer, self.peaks = RangeObserver(), ChannelPeaks(-1)
        return self.ranges

    def isolated_extremes(self) -> Dict[str, List[Extreme]]:
        """Calibration samples standing far beyond the rest (:meth:`.RangeObserver.isolated`); when
        any, the statistics restart for a second pass that leaves them out."""
        found = self.observer.isolated()
        if found:
            self.peaks = ChannelPeaks(-1)
        return {"input": found} if found else {}

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if self.calibrating:
            self.check_input(x, "input")
            kept = self.observer.admit(F.relu(x))
            if kept is not None:
                self.observer.observe(kept)
                if self.per_channel:
                    self.peaks.observe(kept)
            return F.relu(x)
        if self.channel_ranges is None:
            raise RuntimeError("SpikingReLU has no range: calibrate it or pass A= / call set_ranges((A,))")
        if not self.simulating and x.numel() and self.coder.kernel_coded and kernels.triton_usable(x):
            _, inner, scale = channel_layout(self.channel_ranges, x, -1)
            value, _, stats, _ = self.coder.triton_code(x, rectify=True, scale=scale, inner=inner)
            return self.finish(x, value, stats[0], stats[1], stats[2])
        xs = x.to(working_dtype(x, self.precision_digits))
        if not self.simulating and x.numel() and self.coder.kernel_coded and kernels.usable(xs):
            channels, inner, ranges = channel_layout(self.channel_ranges, xs, -1)
            value, (spikes, clamped, nonfinite) = kernels.channel_code(
                xs, channels, inner, ranges, None, True, self.coder.kernel_params(xs.dtype, True))
            return self.finish(x, value, spikes, clamped, nonfinite)
        self.check_input(x, "input")
        positive = xs.clamp(min=0.0)  # below threshold: no spike
        scales = along(self.channel_ranges, positive, -1)
        unit = finite(positive / scales)  # the input of the unit-range neuron of each channel (gain 1 / A_k)
        code, clamped = self.coder.encode(unit, self.simulating, (0.0, math.inf))
        return self.finish(x, code.value * scales, total(code.counts), clamped, 0)

    def finish(self, x: torch.Tensor, value: torch.Tensor, spikes: Count, clamped: Count, nonfinite: Count) -> torch.Tensor:
        """Count a forward on ``x``: NaN/Inf inputs, inputs clamped beyond the largest shift, spikes,
        SOPs and operations; ``value`` in ``x``'s dtype."""
        self.counted_nonfinite(x, "input", nonfinite)
        self.note_clamped(clamped, f"inputs {BEYOND_SHIFT}")
        self.record(spikes=spikes, neurons=x.numel(), sops=spikes, ann_flops=self.ann_flops_per_element * x.numel())
        return value.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"T={self.T}, range={self.ranges}, code={self.code!r}, calibrating={self.calibrating}, "
                + super().extra_repr())


class PiecewiseLinear(nn.Module):
    """``c0 + c1 x + sum_i w_i relu(x - t_i)``, one :class:`SpikingReLU` per knot ``t_i``.

    The constant, the pass-through ``c1 x`` and the knot weights are synaptic biases and weights;
    only the rectifiers spike. ReLU is ``knots=[(0, 1)]``; leaky ReLU ``c1=s, knots=[(0, 1-s)]``;
    ReLU6 ``[(0, 1), (6, -1)]``; hardtanh ``c0=lo, [(lo, 1), (hi, -1)]``.
    """

    mbe_opaque = True

    def __init__(self, knots: Sequence[Tuple[float, float]], T: int = DEFAULT_T, mode: str = DEFAULT_MODE,
                 c0: float = 0.0, c1: float = 0.0, code: str = DEFAULT_CODE) -> None:
        super().__init__()
        for name, v in (("c0", c0), ("c1", c1), *((f"knot {i}", v) for i, k in enumerate(knots) for v in k)):
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"PiecewiseLinear: {name} must be a finite number, got {v!r}")
        if not knots:
            raise ValueError("PiecewiseLinear needs at least one knot (t, w)")
        self.knots = [(float(t), float(w)) for t, w in knots]
        self.c0, self.c1 = float(c0), float(c1)
        self.rectifiers = nn.ModuleList(SpikingReLU(T, mode, code=code) for _ in self.knots)

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "PiecewiseLinear":
        """The exact rectifier form of a piecewise-linear activation of
        :data:`~spikingjelly_mbe.activations.ACTIVATIONS` (its ``knots``): a module of a class it
        lists (``nn.LeakyReLU(0.1)``, ``nn.ReLU6``, ``nn.Hardtanh``, ...; its parameters) or its
        function (``F.relu6``, ...). ``options``: ``T``, ``mode``, ``code``."""
        entry, params = activation_entry(cls, float_op)
        if entry.knots is None:
            raise TypeError(f"PiecewiseLinear.from_float: {entry.name} is not piecewise linear; use "
                            "SpikingActivation.from_float for a fitted activation")
        knots, c0, c1 = entry.knots(**params)
        return cls(knots, c0=c0, c1=c1, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for (t, w), rect in zip(self.knots, self.rectifiers):
            term = rect(x - t if t else x)
            term = term if w == 1.0 else term * w
            out = term if out is None else out + term
        if self.c1:
            out = out + self.c1 * x
        return out + self.c0 if self.c0 else out

    def extra_repr(self) -> str:
        return f"c0={self.c0:g}, c1={self.c1:g}, knots={self.knots}"


class SpikingMaxPool2d(nn.Module):
    """``max_pool2d`` as a fold of ``max(m, v) = m + relu(v - m)`` over each window (one rectifier).

    Padding replicates the border, which leaves every window's maximum unchanged (a padded value
    repeats a value of the same window); ``dilation=1`` and ``ceil_mode=False`` only.
    """

    mbe_opaque = True

    def __init__(self, kernel_size, stride=None, padding=0, T: int = DEFAULT_T, mode: str = DEFAULT_MODE,
                 code: str = DEFAULT_CODE) -> None:
        super().__init__()
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        self.kernel_size, self.padding = pair(kernel_size), pair(padding)
        self.stride = self.kernel_size if stride is None or stride == [] else pair(stride)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"SpikingMaxPool2d: padding {self.padding} must be at most half the kernel "
                             f"{self.kernel_size} (as torch requires)")
        self.rectifier = SpikingReLU(T, mode, code=code)

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingMaxPool2d":
        """The spiking twin of an ``nn.MaxPool2d`` module (its kernel size, stride and padding; no
        dilation, ``ceil_mode`` or ``return_indices``) or of ``F.max_pool2d`` with the arguments it
        takes after its input (``kernel_size, stride, padding``). ``options``: ``T``, ``mode``, ``code``."""
        if float_function(cls, float_op, (F.max_pool2d,), (nn.MaxPool2d,), "an nn.MaxPool2d module or F.max_pool2d"):
            return cls(*args, **options)
        if float_op.dilation not in (1, (1, 1)) or float_op.ceil_mode or float_op.return_indices:
            raise ValueError("SpikingMaxPool2d.from_float: the max pooling must have dilation 1, ceil_mode=False and "
                             f"return_indices=False, got {float_op}")
        return cls(float_op.kernel_size, float_op.stride, float_op.padding, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"SpikingMaxPool2d expects [C, H, W] or [B, C, H, W], got {tuple(x.shape)}")
        batched = x if x.dim() == 4 else x[None]
        B, C, H, W = batched.shape
        ph, pw = self.padding
        padded = F.pad(batched, (pw, pw, ph, ph), mode="replicate") if ph or pw else batched
        windows = F.unfold(padded.reshape(B * C, 1, *padded.shape[-2:]), self.kernel_size, stride=self.stride)
        out = windows[:, 0]
        for i in range(1, windows.shape[1]):
            out = out + self.rectifier(windows[:, i] - out)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        out = out.reshape(B, C, Ho, Wo)
        return out if x.dim() == 4 else out[0]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
