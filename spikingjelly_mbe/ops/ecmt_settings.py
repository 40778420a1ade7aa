"""ECMT's conversion settings and the operator each detected site becomes (Huang et al., ACM MM 2024).

ECMT puts Multi-Threshold neurons in front of the weight layers and of both operands of every
product of two activations, and wraps every nonlinearity (activations, Softmax, LayerNorm,
RMSNorm) in Expectation Compensation with the float function inside. The converted network is run
``T`` times on the repeated input and its outputs averaged (:func:`~.stepping.run_steps`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import flops
from .base import MODES
from .expectation import ExpectationCompensation, ProductCompensation
from .multi_threshold import MTLinearInput, check_percentile


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x sigmoid(1.702 x)`` (CLIP's QuickGELU)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu, "gelu_tanh": gelu_tanh, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "relu": F.relu, "quick_gelu": quick_gelu,
}


@dataclass(frozen=True)
class ElementFlops:
    """FLOPs of a float function on ``x``: ``per_element`` per element plus ``per_row`` per row of
    ``row_width`` elements (conventions in :mod:`.flops`)."""

    per_element: int
    per_row: int = 0
    row_width: int = 1

    def __call__(self, x: torch.Tensor) -> int:
        return self.per_element * x.numel() + self.per_row * (x.numel() // self.row_width)


def norm_width(source: nn.Module) -> int:
    """Elements per normalised row of a LayerNorm/RMSNorm module (``normalized_shape`` or its weight)."""
    shape = getattr(source, "normalized_shape", None)
    if shape is None and isinstance(getattr(source, "weight", None), torch.Tensor):
        shape = tuple(source.weight.shape)
    if shape is None:
        raise ValueError(f"cannot tell the normalised width of {type(source).__name__}: it has neither "
                         "normalized_shape nor a weight")
    return math.prod((shape,) if isinstance(shape, int) else shape)


@dataclass(frozen=True)
class ECMTSettings:
    """``T`` time steps, ``n`` MT thresholds per sign (ECMT's default 8), thresholds at the
    ``percentile`` of the calibration data (ECMT's 99), operator ``mode``."""

    T: int = 8
    n: int = 8
    percentile: float = 99.0
    mode: str = "fast"

    fully_spiking: ClassVar[bool] = False
    float_ops: ClassVar[Tuple[str, ...]] = (
        "activations (GELU, SiLU, tanh, ...): F(S(t)/t) in float inside Expectation Compensation (Theorem 1)",
        "Softmax: in float inside Expectation Compensation",
        "LayerNorm / RMSNorm: in float inside Expectation Compensation",
        "Expectation Compensation arithmetic: input and output sums, division and multiplication by t",
        "products of two activations: division of S_A S_B by t and subtraction of the earlier outputs (Theorem 2)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T (time steps) must be a positive integer, got {self.T!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= 30:
            raise ValueError(f"n (MT thresholds per sign) must be an integer in [1, 30], got {self.n!r}")
        check_percentile(self.percentile)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def activation(self, target: str, source: Optional[nn.Module] = None) -> nn.Module:
        """Expectation Compensation around the float ``target`` (``source`` is not needed: the
        target names the function)."""
        if target not in ACTIVATIONS:
            raise ValueError(f"ECMT has no activation {target!r}; known: {sorted(ACTIVATIONS)}")
        return ExpectationCompensation(ACTIVATIONS[target], ElementFlops(flops.ACTIVATION), mode=self.mode)

    def product(self) -> nn.Module:
        """Element-wise product of two activations, MT-coded operands (Theorem 2)."""
        return ProductCompensation("product", self.n, self.percentile, mode=self.mode)

    def matmul(self) -> nn.Module:
        """Matrix product of two activations, MT-coded operands (Theorem 2)."""
        return ProductCompensation("matmul", self.n, self.percentile, mode=self.mode)

    def softmax(self, dim: int) -> nn.Module:
        """Softmax in float inside Expectation Compensation; ``-inf`` (masked) inputs allowed."""
        return ExpectationCompensation(nn.Softmax(dim=dim), ElementFlops(flops.SOFTMAX), allow_neg_inf=True,
                                       mode=self.mode)

    def layer_norm(self, source: nn.Module) -> nn.Module:
        """``source`` (a LayerNorm module, its affine parameters included) inside Expectation Compensation."""
        return ExpectationCompensation(source, ElementFlops(flops.LAYERNORM, flops.LAYERNORM_ROW, norm_width(source)),
                                       mode=self.mode)

    def rms_norm(self, source: nn.Module) -> nn.Module:
        """``source`` (an RMSNorm module) inside Expectation Compensation."""
        return ExpectationCompensation(source, ElementFlops(flops.RMSNORM, flops.RMSNORM_ROW, norm_width(source)),
                                       mode=self.mode)

    def linear_input(self, layer: nn.Module) -> nn.Module:
        """``layer`` driven by an MT neuron calibrated from data."""
        return MTLinearInput(layer, self.n, self.percentile, mode=self.mode)
