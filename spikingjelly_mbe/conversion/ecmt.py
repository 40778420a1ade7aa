"""``convert(..., method="ecmt")``: ECMT (Huang et al., ACM MM 2024) at the sites conversion by
structure finds. The same catalog, fingerprints and run-time sites build ECMT's operators instead of
MBE's: Multi-Threshold neurons in front of every weight layer and both operands of every product of
two activations (Theorem 2), and Expectation Compensation around every nonlinearity, whose float
function stays float (Theorem 1). The converted network runs ``T`` times on the repeated input and
returns the mean of its outputs; it is not fully spike-driven (``float_ops`` says what stays float).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import flops
from ..ops.ecmt_settings import ECMTSettings, ElementFlops
from ..ops.expectation import ExpectationCompensation
from ..ops.stepping import run_steps
from .catalog import ACTIVATIONS


@dataclass(frozen=True)
class ECMTMethod:
    """The builders conversion asks for (the same names as :class:`OpSettings`), from ECMT's operators."""

    ecmt: ECMTSettings

    fully_spiking: ClassVar[bool] = False

    @property
    def T(self) -> int:
        return self.ecmt.T

    @property
    def mode(self) -> str:
        return self.ecmt.mode

    @property
    def float_ops(self) -> Tuple[str, ...]:
        return self.ecmt.float_ops

    def validate(self) -> None:
        """ECMTSettings validates itself when built."""

    def _compensated(self, fn: Any, cost: ElementFlops, allow_neg_inf: bool = False) -> nn.Module:
        return ExpectationCompensation(fn, cost, allow_neg_inf=allow_neg_inf, mode=self.ecmt.mode)

    def activation(self, entry: Any, params: Dict[str, Any]) -> nn.Module:
        """Expectation Compensation around the entry's float reference (Theorem 1)."""
        fn = functools.partial(entry.reference, **params) if params else entry.reference
        return self._compensated(fn, ElementFlops(flops.ACTIVATION))

    def norm(self, norm: Any, shape: Sequence[int], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float) -> nn.Module:
        width = math.prod((shape,) if isinstance(shape, int) else shape)
        cost = ElementFlops(flops.LAYERNORM, flops.LAYERNORM_ROW, width) if norm.centered else \
            ElementFlops(flops.RMSNORM, flops.RMSNORM_ROW, width)
        return self._compensated(functools.partial(norm.reference, weight=weight, bias=bias, eps=eps), cost)

    def tanh(self) -> nn.Module:
        return self.activation(next(e for e in ACTIVATIONS if e.name == "tanh"), {})

    def max_pool(self, kernel_size, stride=None, padding=0) -> nn.Module:
        fn = functools.partial(F.max_pool2d, kernel_size=kernel_size, stride=stride, padding=padding)
        k = kernel_size if isinstance(kernel_size, int) else math.prod(kernel_size)
        return self._compensated(fn, ElementFlops(k * k if isinstance(kernel_size, int) else k))

    def softmax(self, dim: int = -1) -> nn.Module:
        return self.ecmt.softmax(dim)

    def product(self) -> nn.Module:
        return self.ecmt.product()

    def matmul(self) -> nn.Module:
        return self.ecmt.matmul()

    linear_input_note = "weight layer driven by an MT neuron"

    def linear_input(self, layer: nn.Module) -> nn.Module:
        return self.ecmt.linear_input(layer)


class TimeStepped(nn.Module):
    """The converted network run ``T`` times on the repeated input; the output is the mean over the
    steps (:func:`~spikingjelly_mbe.ops.stepping.run_steps`). No KV cache."""

    def __init__(self, network: nn.Module, T: int) -> None:
        super().__init__()
        self.network, self.T = network, T

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return run_steps(self.network, *args, T=self.T, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)  # config, mbe_report, ... of the network
