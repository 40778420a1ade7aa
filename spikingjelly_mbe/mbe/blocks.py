"""Wrappers MBE's factory builds around its operators: an input gain on an activation, a trailing-dimension
operator over the channel dimension, a quotient, a power and a vector norm of activations. All are opaque to conversion's run-time interception."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn

from ..activations import get_activation
from ..ops.roots import MAX_POWER, NORM_ORDERS, is_power


class Rescaled(nn.Module):
    """``op(g x) / g``: an activation with an input gain and its inverse as the output weight
    (QuickGELU ``x sigmoid(1.702 x)`` is ``silu(1.702 x) / 1.702``)."""

    mbe_opaque = True

    def __init__(self, op: nn.Module, gain: float) -> None:
        super().__init__()
        self.op, self.gain = op, float(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x * self.gain) / self.gain

    def extra_repr(self) -> str:
        return f"gain={self.gain:g}"


class ChannelsLast(nn.Module):
    """A trailing-dimension operator applied over dimension 1 (channels-first ``LayerNorm2d``)."""

    mbe_opaque = True

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x.movedim(1, -1)).movedim(-1, 1)


class Quotient(nn.Module):
    """``a / b`` of two activations: the spiking product of ``a`` and ``1/b`` (the IEEE-754 split's
    reciprocal neuron, :class:`~spikingjelly_mbe.ops.SpikingRoot`)."""

    mbe_opaque = True

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self.reciprocal, self.product = settings.root(-1.0), settings.product()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.product(a, self.reciprocal(b))


class Power(nn.Module):
    """``x^p`` for an integer or half-integer ``p`` (``|p| <= MAX_POWER``): ``y = 1/x`` for ``p < 0``
    (else ``x``), then ``y^n`` for the integer part by spiking products and, for a half, one more
    product with ``sqrt(y)`` (the IEEE-754 split, :class:`~spikingjelly_mbe.ops.SpikingRoot`)."""

    mbe_opaque = True

    def __init__(self, settings: Any, power: float) -> None:
        super().__init__()
        if not is_power(power):
            raise ValueError(f"Power: p must be an integer or half-integer in [-{MAX_POWER}, {MAX_POWER}] "
                             f"other than 0, 1, got {power!r}")
        self.power = float(power)
        magnitude = abs(self.power)
        self.whole, self.half = int(magnitude), magnitude % 1 == 0.5
        self.reciprocal = settings.root(-1.0) if self.power < 0 else None
        self.root = settings.root(0.5) if self.half else None
        factors = self.whole + self.half
        self.products = nn.ModuleList(settings.product() for _ in range(factors - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reciprocal(x) if self.reciprocal is not None else x
        factors = [y] * self.whole + ([self.root(y)] if self.root is not None else [])
        out = factors[0]
        for product, factor in zip(self.products, factors[1:]):
            out = product(out, factor)
        return out

    def extra_repr(self) -> str:
        return f"power={self.power:g}"


class VectorNorm(nn.Module):
    """The ``order``-norm over ``dim`` (``None``: every element). 2: ``sqrt(sum x^2)``, the square by
    the spiking product, the sum a synaptic accumulation, the square root from the IEEE-754 split
    (:class:`~spikingjelly_mbe.ops.SpikingRoot`); 1: ``sum |x|``, ``|x| = 2 relu(x) - x`` on one
    rectifier neuron; ``inf``: ``max |x|``, the spiking top-1 of ``|x|``."""

    mbe_opaque = True

    def __init__(self, settings: Any, dim: Optional[Tuple[int, ...]], keepdim: bool, order: float = 2.0) -> None:
        super().__init__()
        if order not in NORM_ORDERS:
            raise ValueError(f"VectorNorm: order must be one of {NORM_ORDERS}, got {order!r}")
        self.dim, self.keepdim, self.order = dim, bool(keepdim), float(order)
        if self.order == 2.0:
            self.square, self.root = settings.product(), settings.root(0.5)
        else:
            self.abs = settings.activation(get_activation("abs"), {})
            self.top = settings.topk(1, -1) if self.order == math.inf else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(x.dim())) if self.dim is None else \
            tuple(d % x.dim() for d in ((self.dim,) if isinstance(self.dim, int) else self.dim))
        if self.order == 2.0:
            return self.root(self.square(x, x).sum(dims, keepdim=self.keepdim))
        magnitude = self.abs(x)
        if self.order == 1.0:
            return magnitude.sum(dims, keepdim=self.keepdim)
        kept = [d for d in range(x.dim()) if d not in dims]
        rows = magnitude.permute(*kept, *dims).reshape(*(x.shape[d] for d in kept), -1)
        peak = self.top(rows)[0]  # [..., 1]
        if self.keepdim:
            return peak.reshape([1 if d in dims else x.shape[d] for d in range(x.dim())])
        return peak.squeeze(-1)

    def extra_repr(self) -> str:
        return f"order={self.order:g}, dim={self.dim}, keepdim={self.keepdim}"


class Greater(nn.Module):
    """``a > b`` as a spike: one rectifier neuron driven by ``a - b`` (identity-coded, exact) fires at
    least once exactly when ``a - b`` exceeds its code step, the comparison a threshold neuron makes.
    The other comparisons follow by swapping the operands and negating (``a >= b`` is ``not b > a``)."""

    mbe_opaque = True

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self.rectifier = settings.piecewise([(0.0, 1.0)])

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return self.rectifier(a - b) > 0


class Extremum(nn.Module):
    """``max(a, b) = b + relu(a - b)`` (``minimum``: ``a - relu(a - b)``) of two activations on one
    rectifier neuron; ``clamp(x, lo, hi)`` with activation bounds is ``min(max(x, lo), hi)``."""

    mbe_opaque = True

    def __init__(self, settings: Any, minimum: bool = False) -> None:
        super().__init__()
        self.rectifier, self.minimum = settings.piecewise([(0.0, 1.0)]), bool(minimum)

    def forward(self, a: torch.Tensor, b: Any) -> torch.Tensor:
        excess = self.rectifier(a - b)
        return a - excess if self.minimum else b + excess

    def extra_repr(self) -> str:
        return "minimum" if self.minimum else "maximum"


class Clamp(nn.Module):
    """``clamp(x, min=lo, max=hi)`` whose bounds are activations (either may be absent): the maximum
    with ``lo``, then the minimum with ``hi`` (:class:`Extremum`)."""

    mbe_opaque = True

    def __init__(self, settings: Any, low: bool, high: bool) -> None:
        super().__init__()
        self.low = Extremum(settings) if low else None
        self.high = Extremum(settings, minimum=True) if high else None

    def forward(self, x: torch.Tensor, lo: Any = None, hi: Any = None) -> torch.Tensor:
        x = self.low(x, lo) if self.low is not None else x
        return self.high(x, hi) if self.high is not None else x
