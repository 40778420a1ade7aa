"""The building blocks conversion recognises beside the one activation table
(:data:`~spikingjelly_mbe.activations.ACTIVATIONS`, whose module classes
:func:`~spikingjelly_mbe.activations.activation_of` looks up): one table of norms.

Each norm lists its float function (the reference used to recognise unknown modules by what they
compute) and the module classes that compute it. Run-time interception and fingerprinting are
derived from these tables; each method builds its own operator for an entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import norm as timm_norm


@dataclass(frozen=True)
class Norm:
    """A normalisation over the trailing (or, ``channels_first``, the channel) dimension:
    ``reference(x, weight, bias, eps)`` in float; the spiking build takes the same tensors."""

    name: str
    centered: bool
    weight_offset: float = 0.0  # Gemma-style (1 + w)
    channels_first: bool = False

    def reference(self, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  eps: float) -> torch.Tensor:
        h = x.movedim(1, -1) if self.channels_first else x
        if self.centered:
            h = h - h.mean(-1, keepdim=True)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            h = h * (weight + self.weight_offset)
        if bias is not None:
            h = h + bias
        return h.movedim(-1, 1) if self.channels_first else h


LAYER_NORM, RMS_NORM = Norm("LayerNorm", True), Norm("RMSNorm", False)
NORMS: Tuple[Norm, ...] = (LAYER_NORM, RMS_NORM, Norm("RMSNorm(1+w)", False, 1.0),
                          Norm("LayerNorm2d", True, channels_first=True))
NORM_CLASSES: Dict[type, Norm] = {nn.LayerNorm: LAYER_NORM, timm_norm.LayerNorm: LAYER_NORM,
                                  timm_norm.LayerNorm2d: NORMS[3], nn.RMSNorm: RMS_NORM}

