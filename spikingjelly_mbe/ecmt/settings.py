"""ECMT's settings and the operator it builds for each site kind conversion finds (Huang et al., ACM MM 2024).

ECMT puts Multi-Threshold neurons in front of the weight layers and of both operands of every
product of two activations (Theorem 2), and wraps every nonlinearity (activations, Softmax,
LayerNorm, RMSNorm, max pooling) in Expectation Compensation with the float function inside
(Theorem 1). The converted network runs ``T`` times on the repeated input and returns the mean of
its outputs (:class:`~.stepping.TimeStepped`); it is not fully spike-driven (:attr:`float_ops`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import Activation, Params, get_activation
from ..ops import flops
from ..ops.base import DEFAULT_MODE, DEFAULT_T, MODES
from ..ops.norm import norm_shape
from .expectation import ExpectationCompensation, ProductCompensation
from .multi_threshold import PERCENTILE, THRESHOLDS, MTLinearInput, check_percentile
from .stepping import TimeStepped


@dataclass(frozen=True)
class ElementFlops:
    """FLOPs of a float function on ``x``: ``per_element`` per element plus ``per_row`` per row of
    ``row_width`` elements (conventions in :mod:`spikingjelly_mbe.ops.flops`)."""

    per_element: int
    per_row: int = 0
    row_width: int = 1

    def __call__(self, x: torch.Tensor) -> int:
        return self.per_element * x.numel() + self.per_row * (x.numel() // self.row_width)


def norm_width(source: nn.Module) -> int:
    """Elements per normalised row of a LayerNorm/RMSNorm module (``normalized_shape`` or its weight)."""
    return math.prod(norm_shape(source))


def _norm_flops(centered: bool, width: int) -> ElementFlops:
    return ElementFlops(flops.LAYERNORM, flops.LAYERNORM_ROW, width) if centered else \
        ElementFlops(flops.RMSNORM, flops.RMSNORM_ROW, width)


def _norm_name(centered: bool) -> str:
    return "LayerNorm" if centered else "RMSNorm"


@dataclass(frozen=True)
class ECMTSettings:
    """``T`` time steps, ``n`` MT thresholds per sign, thresholds at the ``percentile`` of the
    calibration data, operator ``mode``; builds ECMT's operator for every site kind conversion asks for."""

    T: int = DEFAULT_T
    n: int = THRESHOLDS
    percentile: float = PERCENTILE
    mode: str = DEFAULT_MODE

    fully_spiking: ClassVar[bool] = False
    float_ops: ClassVar[Tuple[str, ...]] = (
        "activations (GELU, SiLU, tanh, ...): F(S(t)/t) in float inside Expectation Compensation (Theorem 1)",
        "Softmax: in float inside Expectation Compensation",
        "LayerNorm / RMSNorm: in float inside Expectation Compensation",
        "Expectation Compensation arithmetic: input and output sums, division and multiplication by t",
        "products of two activations: division of S_A S_B by t and subtraction of the earlier outputs (Theorem 2)",
    )
    linear_input_note: ClassVar[str] = "weight layer driven by an MT neuron"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.T, Mapping):
            raise ValueError(f"T: method='ecmt' runs the whole network T times, so T is one integer, got the "
                             f"per-operator mapping {dict(self.T)!r}; digits per operator type or layer are "
                             "MBE's (method='mbe'); give ECMT an int, e.g. T=8")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T (time steps) must be a positive integer, got {self.T!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= 30:
            raise ValueError(f"n (MT thresholds per sign) must be an integer in [1, 30], got {self.n!r}")
        check_percentile(self.percentile)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def _compensated(self, fn: Any, cost: ElementFlops, what: str, allow_neg_inf: bool = False) -> nn.Module:
        return ExpectationCompensation(fn, cost, allow_neg_inf=allow_neg_inf, mode=self.mode, what=what)

    def activation(self, entry: Union[Activation, str], params: Optional[Params] = None) -> nn.Module:
        """Expectation Compensation around the activation's float reference (Theorem 1); ``entry``
        is an :data:`~spikingjelly_mbe.activations.ACTIVATIONS` entry or its name."""
        entry = get_activation(entry) if isinstance(entry, str) else entry
        fn = functools.partial(entry.reference, **params) if params else entry.reference
        return self._compensated(fn, ElementFlops(flops.ACTIVATION), entry.name)

    def norm(self, norm: Any, shape: Sequence[int], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float) -> nn.Module:
        """``norm.reference`` with these affine tensors inside Expectation Compensation."""
        width = math.prod((shape,) if isinstance(shape, int) else shape)
        return self._compensated(functools.partial(norm.reference, weight=weight, bias=bias, eps=eps),
                                 _norm_flops(norm.centered, width), _norm_name(norm.centered))

    def layer_norm(self, source: nn.Module) -> nn.Module:
        """``source`` (a LayerNorm module, its affine parameters included) inside Expectation Compensation."""
        return self._compensated(source, _norm_flops(True, norm_width(source)), _norm_name(True))

    def rms_norm(self, source: nn.Module) -> nn.Module:
        """``source`` (an RMSNorm module) inside Expectation Compensation."""
        return self._compensated(source, _norm_flops(False, norm_width(source)), _norm_name(False))

    def max_pool(self, kernel_size, stride=None, padding=0) -> nn.Module:
        fn = functools.partial(F.max_pool2d, kernel_size=kernel_size, stride=stride, padding=padding)
        k = kernel_size if isinstance(kernel_size, int) else math.prod(kernel_size)
        return self._compensated(fn, ElementFlops(k * k if isinstance(kernel_size, int) else k), "max pooling")

    def softmax(self, dim: int = -1) -> nn.Module:
        """Softmax in float inside Expectation Compensation; ``-inf`` (masked) inputs allowed."""
        return self._compensated(nn.Softmax(dim=dim), ElementFlops(flops.SOFTMAX), "softmax", allow_neg_inf=True)

    def product(self) -> nn.Module:
        """Element-wise product of two activations, MT-coded operands (Theorem 2)."""
        return ProductCompensation.from_float(torch.mul, n=self.n, percentile=self.percentile, mode=self.mode)

    def matmul(self) -> nn.Module:
        """Matrix product of two activations, MT-coded operands (Theorem 2)."""
        return ProductCompensation.from_float(torch.matmul, n=self.n, percentile=self.percentile, mode=self.mode)

    def linear_input(self, layer: nn.Module) -> nn.Module:
        """``layer`` driven by an MT neuron calibrated from data."""
        return MTLinearInput.from_float(layer, n=self.n, percentile=self.percentile, mode=self.mode)

    def narrowed(self, entry: Activation, params: Params, span: float) -> Optional[nn.Module]:
        """ECMT's activations keep the float function: nothing depends on the input range."""
        return None

    def network(self, model: nn.Module) -> nn.Module:
        """The converted model run ``T`` times per input, its state kept across the steps."""
        return TimeStepped(model, self.T)
