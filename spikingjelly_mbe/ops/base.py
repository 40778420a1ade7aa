"""What every spiking operator shares: evaluation mode, input checks, clamp warnings, statistics."""
from __future__ import annotations

import logging
import math
from dataclasses import fields
from typing import List, Tuple

import torch
from spikingjelly.activation_based import base

from .coding import FLOAT32_MAX_T
from .stats import OpStats

log = logging.getLogger("spikingjelly_mbe.ops")

MODES = ("fast", "simulate")
STAT_FIELDS = tuple(f.name for f in fields(OpStats))


def working_dtype(x: torch.Tensor, T: int = 0) -> torch.dtype:
    """Spiking arithmetic runs in float64 for float64 input or for MBE_Id codes of ``T`` beyond
    :data:`~.coding.FLOAT32_MAX_T` steps, else in float32."""
    return torch.float64 if x.dtype == torch.float64 or T > FLOAT32_MAX_T else torch.float32


class StraightThrough(torch.autograd.Function):
    """The spiking output forward, the float reference's gradient backward (straight-through)."""

    @staticmethod
    def forward(ctx, spiking: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return spiking

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[None, torch.Tensor]:
        return None, grad


class SpikingOp(base.MemoryModule):
    """Base of the spiking operators.

    ``mode='simulate'`` runs the step-by-step spiking computation (binary spike tensors over ``T``
    steps, products as ``sum_ij D_ij S_ij``); ``mode='fast'`` computes the same numbers from the
    reconstructed sums. Counts live in SpikingJelly memories, so ``functional.reset_net`` zeroes
    them; :meth:`op_stats` reads them. The ``T`` steps are internal: the operator maps float
    tensors to float tensors whatever ``step_mode`` SpikingJelly sets. Subclasses implement
    ``compute(*inputs)``; :meth:`forward` wraps it with the once-per-forward clamp warning.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        for name in STAT_FIELDS:
            self.register_memory(f"stat_{name}", 0)
        self._clamped_now: List[str] = []

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {value!r}")
        self._mode = value

    @property
    def simulating(self) -> bool:
        return self._mode == "simulate"

    def op_stats(self) -> OpStats:
        """Spikes, neuron inputs, SOPs, replaced FLOPs and clamps since the last reset."""
        return OpStats(**{name: int(getattr(self, f"stat_{name}")) for name in STAT_FIELDS})

    def record(self, **counts: int) -> None:
        """Add to the statistics (keywords are :class:`OpStats` fields)."""
        for name, value in counts.items():
            key = f"stat_{name}"
            setattr(self, key, getattr(self, key) + int(value))

    def note_clamped(self, count: int, what: str) -> None:
        """Count inputs clamped to a neuron's domain; :meth:`forward` warns once with the total."""
        if count:
            self.record(clamped=count)
            self._clamped_now.append(f"{count} {what}")

    def check_floating(self, x: torch.Tensor, name: str) -> None:
        """``x`` must be a floating point tensor."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"{type(self).__name__}: {name} must be a floating point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")

    def check_input(self, x: torch.Tensor, name: str, allow_neg_inf: bool = False) -> Tuple[float, float]:
        """Floating point, and no NaN/Inf (``-inf`` allowed where it means 'masked'); returns
        ``(min, max)`` of ``x`` (``(0, 0)`` when empty). The fused kernels count NaN/Inf themselves
        and call this only to raise."""
        self.check_floating(x, name)
        if x.numel() == 0:
            return 0.0, 0.0
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # NaN propagates to both
        if not math.isnan(lo) and hi != float("inf") and (lo != float("-inf") or allow_neg_inf):
            return lo, hi
        bad = x.isnan() | (x == float("inf")) | ((x == float("-inf")) if not allow_neg_inf else False)
        allowed = " (-inf is allowed: it marks masked positions)" if allow_neg_inf else ""
        raise ValueError(f"{type(self).__name__}: {name} contains {int(bad.sum())} NaN/Inf value(s){allowed}; "
                         "spiking neurons need finite membrane potentials")

    def float_reference(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The float operation this operator replaces; its gradient is the backward pass."""
        raise NotImplementedError

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self._clamped_now = []
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *self.parameters())
                                           if isinstance(t, torch.Tensor)):
            with torch.no_grad():
                out = self.compute(*inputs)
            out = StraightThrough.apply(out, self.float_reference(*inputs))
        else:
            out = self.compute(*inputs)
        if self._clamped_now:
            log.warning("%s: clamped %s in this forward",
                        type(self).__name__, ", ".join(self._clamped_now))
        return out

    def extra_repr(self) -> str:
        return f"mode={self._mode!r}"


def broadcast_shape(a: torch.Tensor, b: torch.Tensor, op: str) -> Tuple[int, ...]:
    """The broadcast shape of ``a`` and ``b``, or an error naming both shapes."""
    try:
        return tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        raise ValueError(f"{op}: operands of shapes {tuple(a.shape)} and {tuple(b.shape)} are not broadcastable; "
                         f"b must be broadcastable to a's shape {tuple(a.shape)}") from None
