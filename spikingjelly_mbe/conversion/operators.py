"""The spiking operators a conversion inserts, all built from one set of settings (T, N, mode)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from ..ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingRMSNorm,
                   SpikingSoftmax)

OPERATOR_TYPES = (SpikingActivation, SpikingProduct, SpikingMatmul, SpikingSoftmax, SpikingLayerNorm,
                  SpikingRMSNorm)
MODES = ("fast", "simulate")


@dataclass(frozen=True)
class OpSettings:
    """``T`` timesteps, ``N`` bases per MBE neuron (Eq. 8) and the evaluation ``mode`` of every operator.

    ``activation_N`` sets the bases of the element-wise activations (GELU, SiLU, tanh) alone: they
    cover [-16, 16] with all their curvature, and their N=4 fit error (GELU MSE 8e-5) is what keeps
    a converted model from matching its ANN (min cosine 0.996-0.999, argmax 97.7-98.4 % on the zoo);
    N=8 (MSE 6e-6) passes 0.999 / 99 % on every family. ``activation_N=None`` uses ``N`` (the
    paper's setting with ``N=4``). Softmax and norms keep ``N``: their range-reduced neurons are
    already near exact.
    """

    T: int = 16
    N: int = 4
    mode: str = "fast"
    activation_N: Optional[int] = 8

    @property
    def activation_bases(self) -> int:
        return self.N if self.activation_N is None else self.activation_N

    def validate(self) -> None:
        for name, value in (("T", self.T), ("N", self.N), ("activation_N", self.activation_bases)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def gelu(self, approximate: str = "none") -> SpikingActivation:
        """GELU (erf form, or the tanh form of GPT-2) as one MBE neuron per element (Eq. 8)."""
        return SpikingActivation.gelu(T=self.T, N=self.activation_bases, approximate=approximate, mode=self.mode)

    def silu(self) -> SpikingActivation:
        return SpikingActivation.silu(T=self.T, N=self.activation_bases, mode=self.mode)

    def tanh(self) -> SpikingActivation:
        return SpikingActivation.tanh(T=self.T, N=self.activation_bases, mode=self.mode)

    def product(self) -> SpikingProduct:
        """Element-wise product of two spike-coded operands (Eqs. 9-12)."""
        return SpikingProduct(T=self.T, mode=self.mode)

    def matmul(self) -> SpikingMatmul:
        """Matrix product of two spike-coded operands (Eqs. 9-12 summed over the inner index)."""
        return SpikingMatmul(T=self.T, mode=self.mode)

    def softmax(self, dim: int = -1) -> SpikingSoftmax:
        """Softmax from exp2 of the fractional part, a reciprocal and products (Eq. 13)."""
        return SpikingSoftmax(dim=dim, T=self.T, mode=self.mode, N=self.N)

    def layer_norm(self, source: nn.Module) -> SpikingLayerNorm:
        """LayerNorm from squares, an rsqrt of the mantissa and products, same gamma/beta."""
        return SpikingLayerNorm.from_module(source, T=self.T, mode=self.mode, N=self.N)

    def rms_norm(self, source: nn.Module) -> SpikingRMSNorm:
        return SpikingRMSNorm.from_module(source, T=self.T, mode=self.mode, N=self.N)


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every spiking operator of ``model`` to ``'fast'`` or ``'simulate'`` (same semantics)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, OPERATOR_TYPES):
            module.mode = mode
    return model
