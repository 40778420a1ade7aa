"""Element-wise spiking activations from fitted MBE/FS neurons (Eq. 8)."""
from __future__ import annotations

from typing import Tuple

import torch

from .. import kernels
from ..fitting import FittedNeuron, load_fitted
from ..neurons.lookup import fingerprint, neuron_table
from . import flops
from .base import SpikingOp, working_dtype
from .coding import decode, total

GELU_TARGETS = {"none": "gelu", "tanh": "gelu_tanh"}


class SpikingActivation(SpikingOp):
    """``f_hat(x) = sum_{n,t} w_n d_n[t] s_n[t] + b`` of a fitted neuron, element-wise (Eq. 8).

    Inputs outside the fit's domain are clamped to it and counted. ``simulate`` runs the neuron
    step by step, keeps the binary spikes ``[T, ..., N]`` and decodes them; fast mode looks the
    same output and spike count up in the neuron's :class:`~spikingjelly_mbe.neurons.NeuronTable`
    (exact: the simulation is piecewise constant in ``x``; built once per process and dtype), in a
    fused kernel on CPU float32. SOPs: one per spike (its weight is accumulated into the output);
    ``ann_flops``: :data:`flops.ACTIVATION` per element.
    """

    def __init__(self, fitted: FittedNeuron, mode: str = "fast") -> None:
        super().__init__(mode)
        if not isinstance(fitted, FittedNeuron):
            raise TypeError(f"SpikingActivation needs a FittedNeuron, got {type(fitted).__name__}")
        self.fitted = fitted
        self.node = fitted.node(clamp=False)
        self.node_key = fingerprint(self.node)

    @classmethod
    def gelu(cls, T: int = 16, N: int = 4, approximate: str = "none", mode: str = "fast") -> "SpikingActivation":
        """GELU from the shipped fit: erf form (``'none'``) or GPT-2's tanh form (``'tanh'``)."""
        if approximate not in GELU_TARGETS:
            raise ValueError(f"approximate must be one of {sorted(GELU_TARGETS)}, got {approximate!r}")
        return cls(load_fitted(GELU_TARGETS[approximate], "mbe", N, T), mode)

    @classmethod
    def silu(cls, T: int = 16, N: int = 4, mode: str = "fast") -> "SpikingActivation":
        return cls(load_fitted("silu", "mbe", N, T), mode)

    @classmethod
    def tanh(cls, T: int = 16, N: int = 4, mode: str = "fast") -> "SpikingActivation":
        return cls(load_fitted("tanh", "mbe", N, T), mode)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        lo, hi = self.fitted.domain
        outside_note = f"inputs outside [{lo:g}, {hi:g}]"
        if not self.simulating and x.numel() and kernels.usable(x):
            table = neuron_table(self.node, self.fitted.domain, x.dtype, x.device, self.node_key)
            value, (fired, outside, nonfinite) = kernels.rowwise("sjmbe_lookup_f32", x, 1, 3, *table.kernel_args())
            if nonfinite:
                self.check_input(x, "input")  # raises, naming the count
            self.note_clamped(outside, outside_note)
        else:
            low, high = self.check_input(x, "input")
            xs = x.to(working_dtype(x))
            if low < lo or high > hi:
                self.note_clamped(int(((xs < lo) | (xs > hi)).sum()), outside_note)
                xs = xs.clamp(lo, hi)
            value, fired = self.evaluate(xs)
        self.record(spikes=fired, neurons=x.numel(), sops=fired, ann_flops=flops.ACTIVATION * x.numel())
        return value.to(x.dtype)

    def evaluate(self, xs: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """``(f_hat, spikes fired)`` for inputs within the domain, in PyTorch: the step-by-step
        simulation, or the :class:`~spikingjelly_mbe.neurons.NeuronTable` in fast mode."""
        if self.simulating:
            spikes, _, counts = self.node.run(xs, keep_spikes=True)
            return decode(self.node, spikes), total(counts)
        value, counts = neuron_table(self.node, self.fitted.domain, xs.dtype, xs.device, self.node_key)(xs)
        return value, total(counts)

    def extra_repr(self) -> str:
        lo, hi = self.fitted.domain
        return f"{self.fitted.key}, domain=[{lo:g}, {hi:g}], " + super().extra_repr()
