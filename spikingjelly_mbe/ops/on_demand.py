"""Any element-wise function on an MBE neuron fitted on demand to its calibrated input range (Eq. 8).

A call such as ``torch.erf(x)`` or ``F.elu(x, 0.5)`` that no catalog entry covers runs in float
while the calibration batches pass, recording the interval its inputs cover. Calibration then fixes
a domain around that interval and fits one MBE neuron to the function on it (deterministic, cached:
:func:`~spikingjelly_mbe.fitting.load_fitted_function`). A function with a linear tail on each side
(``elu``, ``softplus``, ``mish``, ``hardswish``, ``abs``...) is range-reduced like GELU and SiLU:
the piecewise-linear function of its two end tangents, exact on rectifier neurons, plus a fitted
residual that vanishes at the domain's edges.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..fitting.fitted import FittedNeuron
from ..fitting.library import load_fitted_function
from ..fitting.targets import Target
from .activation import SpikingActivation
from .base import DEFAULT_MODE, Calibrated
from .coding import DEFAULT_CODE
from .rectifier import PiecewiseLinear

GRID = 4097  # points on which a domain is checked and tangents are measured
RECTIFY_SLOPES = 0.25  # end slopes this far apart make a knot worth a rectifier
RECTIFY_SHARE = 0.5  # ... when the residual spans at most this share of the function's range
MAX_FIT_ERROR = 0.15  # a fit whose largest error exceeds this share of the function's range is refused (a step: 0.5)
# ... unless, fitted again at this T, it errs within that share: a smooth function's error shrinks with the digits, a
# step's does not (LeViT's hardswish residual at T=3-7: 17-25 % of its range, at T=16 within it); the coarse fit is kept
SMOOTHNESS_T = 16


@dataclass(frozen=True)
class BoundCall:
    """``func(*args, **kwargs)`` with the tensor operand at ``index`` (position, or keyword name)
    replaced by the argument: a picklable function of one tensor."""

    func: Callable
    args: tuple
    kwargs: tuple
    index: Any

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.index, int):
            args[self.index] = x
        else:
            kwargs[self.index] = x
        return self.func(*args, **kwargs)

    def name(self, op: str) -> str:
        """``op``, and a digest of the other arguments when there are any (``elu_3f9a1c2b``)."""
        rest = [a for i, a in enumerate(self.args) if i != self.index] + \
            [(k, v) for k, v in self.kwargs if k != self.index]
        return op if not rest else f"{op}_{hashlib.sha1(repr(rest).encode()).hexdigest()[:8]}"


def power_of_two_above(value: float) -> float:
    return 2.0 ** math.ceil(math.log2(value)) if value > 0 else 1.0


def finite_on(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(fn(torch.linspace(lo, hi, GRID, dtype=torch.float64))).all())


def fit_domain(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> Optional[Tuple[float, float]]:
    """The domain of a fit for inputs seen in ``[lo, hi]``: ``[-s, s]`` with ``s`` the power of two at
    or above 1.5 times the largest ``|x|`` (shared by sites of similar ranges); where the function is
    not finite there, the one-signed ``[0, s]`` (or ``[-s, 0]``), then the seen interval with half
    its distance to 0 as margin; ``None`` when it is not finite even on ``[lo, hi]``."""
    s = power_of_two_above(1.5 * max(abs(lo), abs(hi)))
    candidates = [(-s, s)]
    if lo >= 0:
        candidates += [(0.0, s), (lo / 2, s)]
    elif hi <= 0:
        candidates += [(-s, 0.0), (-s, hi / 2)]
    candidates.append((lo, hi) if lo < hi else (lo - 1e-3, hi + 1e-3))
    return next((c for c in candidates if finite_on(fn, *c)), None)


def end_tangents(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> Tuple[Tuple[float, float], ...]:
    """``((f(lo), f'(lo)), (f(hi), f'(hi)))``, the slopes one-sided over 1/1024 of the domain."""
    h = (hi - lo) / 1024
    x = torch.tensor([lo, lo + h, hi - h, hi], dtype=torch.float64)
    with torch.no_grad():
        y = fn(x).to(torch.float64).tolist()
    return (y[0], (y[1] - y[0]) / h), (y[3], (y[3] - y[2]) / h)


@dataclass(frozen=True)
class LinearTails:
    """``c0 + c1 x + w relu(x - t)``: the lines tangent to ``f`` at both ends of its domain, joined
    at their intersection ``t``."""

    c0: float
    c1: float
    w: float
    t: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.c0 + self.c1 * x + self.w * torch.relu(x - self.t)


def linear_tails(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> Optional[LinearTails]:
    """The :class:`LinearTails` of ``f`` on ``[lo, hi]`` when its end slopes differ by at least
    :data:`RECTIFY_SLOPES`, the tangents meet inside the domain and the residual spans at most
    :data:`RECTIFY_SHARE` of ``f``'s range; ``None`` otherwise."""
    (f_lo, s_lo), (f_hi, s_hi) = end_tangents(fn, lo, hi)
    if abs(s_hi - s_lo) < RECTIFY_SLOPES:
        return None
    c_lo, c_hi = f_lo - s_lo * lo, f_hi - s_hi * hi
    t = (c_lo - c_hi) / (s_hi - s_lo)
    if not lo < t < hi:
        return None
    tails = LinearTails(c_lo, s_lo, s_hi - s_lo, t)
    x = torch.linspace(lo, hi, GRID, dtype=torch.float64)
    with torch.no_grad():
        y = fn(x).to(torch.float64)
        residual = y - tails(x)
    spread = float(y.max() - y.min())
    return tails if float(residual.max() - residual.min()) <= RECTIFY_SHARE * spread else None


LINEAR_SHARE = 1e-6  # a function within this share of its range of its chord is linear on the domain
FLAT_SHARE = 1e-5  # an end of the domain where a function stays this close to its edge value is cut off


def trim_flat_ends(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> Tuple[float, float]:
    """``[a, b]`` within ``[lo, hi]`` outside which ``f`` stays within :data:`FLAT_SHARE` of its range of
    ``f(lo)`` (left) and ``f(hi)`` (right): a neuron clamping its input to ``[a, b]`` reproduces those
    flat ends (erf's, a residual's), and its fit spends its bases where the function changes."""
    x = torch.linspace(lo, hi, GRID, dtype=torch.float64)
    with torch.no_grad():
        y = fn(x).to(torch.float64)
    tolerance = FLAT_SHARE * float(y.max() - y.min())
    moved_left = ((y - y[0]).abs() > tolerance).nonzero()
    moved_right = ((y - y[-1]).abs() > tolerance).nonzero()
    if not len(moved_left) or not len(moved_right):
        return lo, hi
    a, b = max(int(moved_left[0]) - 1, 0), min(int(moved_right[-1]) + 1, GRID - 1)
    return (float(x[a]), float(x[b])) if a < b else (lo, hi)


def chord(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> Optional[Tuple[float, float]]:
    """``(c0, c1)`` of the line through ``f``'s values at ``lo`` and ``hi`` when ``f`` stays within
    :data:`LINEAR_SHARE` of its range of it on ``[lo, hi]`` (e.g. a smooth function on a span its
    curvature does not reach); ``None`` otherwise."""
    x = torch.linspace(lo, hi, GRID, dtype=torch.float64)
    with torch.no_grad():
        y = fn(x).to(torch.float64)
    c1 = float(y[-1] - y[0]) / (hi - lo)
    c0 = float(y[0]) - c1 * lo
    spread = float(y.max() - y.min())
    return (c0, c1) if float((y - (c0 + c1 * x)).abs().max()) <= LINEAR_SHARE * spread else None


class Affine(nn.Module):
    """``c0 + c1 x``: synaptic weight and bias (a function that is linear where its inputs lie)."""

    mbe_opaque = True

    def __init__(self, c0: float, c1: float) -> None:
        super().__init__()
        self.c0, self.c1 = c0, c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c1 + self.c0

    def extra_repr(self) -> str:
        return f"c0={self.c0:g}, c1={self.c1:g}"


@dataclass(frozen=True)
class Residual:
    """``f - tails``, the part of a rectified function a neuron carries."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    tails: LinearTails

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) - self.tails(x)


class TailedActivation(nn.Module):
    """``tails(x) + g(x)``: the piecewise-linear tails on rectifier neurons (exact up to their code),
    the residual ``g`` on a fitted neuron (inputs beyond its domain take the edge's value, where ``g``
    is 0 by construction: the tails extend the function linearly)."""

    mbe_opaque = True

    def __init__(self, tails: PiecewiseLinear, residual: Optional[SpikingActivation]) -> None:
        super().__init__()
        self.tails, self.residual = tails, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual is None:
            return self.tails(x)
        lo, hi = self.residual.fitted.domain
        return self.tails(x) + self.residual(x.clamp(lo, hi))


class NotSmooth(ValueError):
    """A function no MBE neuron fits within :data:`MAX_FIT_ERROR` of its range even at :data:`SMOOTHNESS_T`."""


class FittedOnDemand(nn.Module, Calibrated):
    """An element-wise function ``fn`` (``name`` keys its fits) on a neuron fitted after calibration.

    While ``calibrating`` it computes ``fn`` in float and records the interval of its inputs and
    whether ``fn`` left its domain (a non-finite output for a finite input: :attr:`outside_domain`,
    which conversion reports as an unsupported call). :meth:`finish_calibration` returns that
    interval and :meth:`set_ranges` fits on a domain around it (:func:`fit_domain`), rectified
    (:func:`linear_tails`) when ``rectify``. The spiking module is :attr:`spiking`. A function no neuron
    fits (:meth:`fit`) raises :class:`NotSmooth` and keeps the reason in :attr:`refused`; conversion then
    reports the call as unsupported, like one outside its domain, and the op computes ``fn`` in float.
    """

    mbe_opaque = True
    operands = 2  # ranges: the input interval (lo, hi)

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str, T: int, N: int, mode: str = DEFAULT_MODE,
                 code: str = DEFAULT_CODE, rectify: bool = True) -> None:
        super().__init__()
        self.fn, self.name, self.T, self.N, self.mode, self.code, self.rectify = fn, name, T, N, mode, code, rectify
        self.calibrating = True
        self.seen: Optional[Tuple[float, float]] = None
        self.outside_domain = 0
        self.spiking: Optional[nn.Module] = None
        self.coarse = ""  # set by a fit kept although it errs beyond MAX_FIT_ERROR at this T (the report says so)
        self.refused = ""  # why no neuron fits (a step): the op computes fn in float, conversion reports the call

    @classmethod
    def from_float(cls, float_op: Callable[[torch.Tensor], torch.Tensor], name: Optional[str] = None,
                   **options: object) -> "FittedOnDemand":
        """An element-wise tensor function (``torch.erf``, ``functools.partial(F.elu, alpha=0.5)``, a
        call conversion bound, ...) on a neuron fitted on demand; ``name`` keys its fits (default: the
        function's ``__name__``). ``options``: ``T``, ``N``, ``mode``, ``code``, ``rectify``."""
        name = getattr(float_op, "__name__", None) if name is None else name
        if not callable(float_op) or isinstance(float_op, type) or not isinstance(name, str) or not name:
            raise TypeError("FittedOnDemand.from_float takes an element-wise tensor function and the name that keys "
                            f"its fits, got {float_op!r} named {name!r}")
        return cls(float_op, name, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating or self.spiking is None:
            return self.observe(x) if self.calibrating else self.fn(x)
        return self.spiking(x)

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        finite = torch.isfinite(x)
        self.outside_domain += int((finite & ~torch.isfinite(y)).sum())
        if bool(finite.any()):
            lo, hi = (float(v) for v in torch.aminmax(x.detach()[finite]))
            self.seen = (lo, hi) if self.seen is None else (min(lo, self.seen[0]), max(hi, self.seen[1]))
        return y

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float, float]:
        if self.seen is None:
            raise RuntimeError(f"{self.name}: no finite input was observed while calibrating")
        return self.seen

    def set_ranges(self, ranges: Sequence[float]) -> None:
        """Fit the neuron on a domain around the input interval ``ranges = (lo, hi)`` and stop calibrating
        (nothing is fitted for a function that left its domain: conversion refuses it)."""
        self.calibrating, self.spiking, self.coarse, self.refused = False, None, "", ""
        if self.outside_domain:
            return
        lo, hi = (float(v) for v in ranges)
        domain = fit_domain(self.fn, lo, hi)
        if domain is None:
            self.outside_domain = 1
            return
        line = chord(self.fn, *domain)
        if line is not None:  # linear on the inputs it sees: a synaptic weight and bias, no neuron
            self.spiking = Affine(*line)
            return
        tails = linear_tails(self.fn, *domain) if self.rectify else None  # before trimming: the tails' slopes
        if tails is None:
            self.spiking = SpikingActivation(self.fit(self.name, self.fn, trim_flat_ends(self.fn, *domain)), self.mode,
                                             reference=self.fn)
            return
        knots = PiecewiseLinear([(tails.t, tails.w)], self.T, self.mode, tails.c0, tails.c1, self.code)
        # the rectifier's range: its largest calibrated input, the domain's when none reached it (a domain twice as
        # wide costs a digit: at T=4 a step of 8/15 for hardswish on [-3, 3]); a tiny one, from inputs barely past
        # the knot, is safe: wider inputs take the overflow shift, which keeps T digits of each
        reach = hi - tails.t if hi > tails.t else domain[1] - tails.t
        knots.rectifiers[0].set_ranges((max(reach, 1e-6),))
        residual_fn = Residual(self.fn, tails)
        x = torch.linspace(*domain, GRID, dtype=torch.float64)
        with torch.no_grad():
            spread = float(residual_fn(x).abs().max())
        residual = None if spread < 1e-9 * max(1.0, float(self.fn(x).abs().max())) else \
            SpikingActivation(self.fit(f"{self.name}_residual", residual_fn, trim_flat_ends(residual_fn, *domain)),
                              self.mode, reference=residual_fn)
        self.spiking = TailedActivation(knots, residual)

    def fit(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], domain: Tuple[float, float]) -> FittedNeuron:
        """The neuron fitted to ``fn`` on ``domain`` at this ``T``. One that errs beyond :data:`MAX_FIT_ERROR` of
        ``fn``'s range there is fitted again at :data:`SMOOTHNESS_T`: refused when that one errs so too (a step or
        rounding function; at ``T >= SMOOTHNESS_T`` at once), else kept and described in :attr:`coarse`."""
        target = Target(name, fn, domain, "fitted on demand")
        fitted = load_fitted_function(target, self.N, self.T)
        x = torch.linspace(*domain, GRID, dtype=torch.float64)
        with torch.no_grad():
            y = fn(x)
        spread = max(float(y.max() - y.min()), 1e-12)
        error = fitted.errors["max_abs"]
        if error <= MAX_FIT_ERROR * spread:
            return fitted
        finer = load_fitted_function(target, self.N, SMOOTHNESS_T).errors["max_abs"] if self.T < SMOOTHNESS_T else error
        at = f"fitted on {domain} at T={self.T} errs by up to {error:.3g}" + (
            f" and at T={SMOOTHNESS_T} by {finer:.3g}" if self.T < SMOOTHNESS_T else "")
        if finer > MAX_FIT_ERROR * spread:
            self.refused = (f"not smooth enough to fit: an MBE neuron (N={self.N}) {at}, over {MAX_FIT_ERROR:.0%} of "
                            f"the function's range {spread:.3g}; a step or rounding function?")
            raise NotSmooth(f"{self.name}: {self.refused}")
        self.coarse = (f"{name} {at}, {error / spread:.0%} of its range {spread:.3g}: the error of T={self.T}, not "
                       "of the function")
        return fitted

    def extra_repr(self) -> str:
        return f"{self.name}, seen={self.seen}, calibrating={self.calibrating}"
