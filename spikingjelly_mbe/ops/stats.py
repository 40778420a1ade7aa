"""Spike and operation counts reported by every spiking operator (read by the energy report, one layer up)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict

import torch.nn as nn


@dataclass
class OpStats:
    """What one spiking operator did since the last ``functional.reset_net``.

    ``spikes``: spikes fired by its neurons; ``neurons``: neuron inputs simulated (one per element
    and neuron stage); ``sops``: synaptic accumulate operations of the spiking computation (one per
    spike accumulated into a sum, one per spike coincidence ``S_ij`` of a product, Eq. 12);
    ``ann_flops``: FLOPs of the float operation it replaces (conventions in
    :mod:`spikingjelly_mbe.ops.flops`); ``clamped``: inputs clamped to a neuron's fitted domain;
    ``float_flops``: FLOPs the spiking model itself still performs in float (ECMT's expectation
    compensation), charged at ``E_MAC`` on the SNN side.
    """

    spikes: int = 0
    neurons: int = 0
    sops: int = 0
    ann_flops: int = 0
    clamped: int = 0
    float_flops: int = 0

    def __add__(self, other: "OpStats") -> "OpStats":
        if not isinstance(other, OpStats):
            return NotImplemented
        return OpStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __radd__(self, other: object) -> "OpStats":
        """Lets ``sum(stats)`` start from ``0``."""
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @property
    def firing_rate(self) -> float:
        """Spikes per simulated neuron input (0 when nothing ran)."""
        return self.spikes / self.neurons if self.neurons else 0.0


def collect_stats(model: nn.Module) -> Dict[str, OpStats]:
    """``{module path: OpStats}`` for every spiking operator in ``model`` (modules with ``op_stats()``).

    The model itself is reported under ``''`` when it is an operator.
    """
    return {path: module.op_stats() for path, module in model.named_modules()
            if callable(getattr(module, "op_stats", None))}
