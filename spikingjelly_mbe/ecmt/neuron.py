"""Multi-Threshold (MT) neuron of ECMT (Huang et al., ACM MM 2024, Fig. 3-4).

The neuron integrates its input into a membrane potential and, at each step, emits at most one
spike on one of ``2n`` channels: ``n`` positive thresholds ``lambda_p * 2^k`` and ``n`` negative ones
``-lambda_n * 2^k`` (``k = 0 .. n-1``), powers of two above a base threshold ``lambda``. The largest
threshold ``theta`` with ``|v| >= theta - lambda / 2`` fires (so the neuron rounds ``v`` to the
nearest multiple of ``lambda`` it can emit), and the potential is reset by subtraction of ``theta``.
With Parallel Parameter normalisation (Fig. 4) the next layer holds one copy of its weights per
channel, scaled by that channel's threshold; since at most one channel fires, that equals the
layer applied to the emitted value ``sum_i theta_i s_i``, which is what this neuron outputs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from spikingjelly.activation_based import base

from .. import kernels


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class MTNode(base.MemoryModule):
    """MT neuron with ``n`` thresholds per sign, base thresholds ``lambda_pos`` / ``lambda_neg``.

    Per step: ``v <- v + x``; the positive channel ``k`` fires for the largest ``k`` with
    ``v >= lambda_p (2^k - 1/2)``, else the negative channel ``k`` for the largest ``k`` with
    ``-v >= lambda_n (2^k - 1/2)``; the output is ``+lambda_p 2^k``, ``-lambda_n 2^k`` or 0 and is
    subtracted from ``v``. ``step_mode='s'`` takes one step ``x``; ``'m'`` takes ``[T, ...]`` and
    returns the ``[T, ...]`` outputs. Memories (zeroed by ``functional.reset_net``): ``v``,
    ``spike_count`` (spikes fired), ``num_inputs`` (neuron updates) and ``saturated`` (updates after
    which the largest threshold still could fire again: the input outran one spike per step).
    ``last_spike_count`` / ``last_saturated`` hold the counts of the latest step alone.
    Thresholds may be set later (:meth:`set_thresholds`); stepping before that raises.
    """

    def __init__(self, n: int, lambda_pos: Optional[float] = None, lambda_neg: Optional[float] = None,
                 step_mode: str = "s") -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 30:
            raise ValueError(f"n (thresholds per sign) must be an integer in [1, 30], got {n!r}")
        self.n = n
        self.step_mode = step_mode
        self.register_buffer("lambdas", torch.zeros(2, dtype=torch.float64))  # (lambda_p, lambda_n)
        self.register_memory("v", 0.0)
        self.register_memory("spike_count", 0)
        self.register_memory("num_inputs", 0)
        self.register_memory("saturated", 0)
        self.last_spike_count = self.last_saturated = 0
        if lambda_pos is not None or lambda_neg is not None:
            self.set_thresholds(lambda_pos, lambda_neg)

    @property
    def ready(self) -> bool:
        return bool(self.lambdas[0] > 0)

    @property
    def thresholds(self) -> Tuple[float, float]:
        """``(lambda_p, lambda_n)``, the smallest positive and negative threshold magnitudes."""
        return float(self.lambdas[0]), float(self.lambdas[1])

    def set_thresholds(self, lambda_pos: float, lambda_neg: float) -> None:
        self.lambdas.copy_(torch.tensor([_positive("lambda_pos", lambda_pos), _positive("lambda_neg", lambda_neg)],
                                        dtype=torch.float64))

    def levels(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``2^k``, ``k = 0 .. n-1``."""
        return torch.pow(2.0, torch.arange(self.n, dtype=dtype, device=device))

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            raise RuntimeError("MTNode has no thresholds: calibrate it (see MTLinearInput) or call "
                               "set_thresholds(lambda_pos, lambda_neg)")
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"MTNode expects a floating point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        previous = self.v if isinstance(self.v, torch.Tensor) else None
        if previous is not None and previous.shape != x.shape:
            raise ValueError(f"MTNode: input shape {tuple(x.shape)} differs from the membrane's "
                             f"{tuple(previous.shape)}; "
                             "call functional.reset_net(model) before a new input")
        if kernels.usable(x, *(() if previous is None else (previous,))):
            out, v, (spikes, saturated, nonfinite) = kernels.mt_step(x, previous, self.thresholds, self.n)
        else:
            nonfinite = int((~torch.isfinite(x)).sum())
            if not nonfinite:
                out, v, spikes, saturated = self.step(x + self.v)
        if nonfinite:
            raise ValueError(f"MTNode received {nonfinite} NaN/Inf input value(s); "
                             "spiking neurons need finite membrane potentials")
        self.last_spike_count, self.last_saturated = spikes, saturated
        self.spike_count += spikes
        self.saturated += saturated
        self.num_inputs += x.numel()
        self.v = v
        return out

    def step(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """Fire and reset from the potential ``v`` in PyTorch: ``(out, v - out, spikes, saturated)``;
        the compiled kernel (float32 on the CPU) does the same float32 operations in one pass."""
        out = torch.zeros_like(v)
        for sign, lam in ((1.0, self.lambdas[0]), (-1.0, self.lambdas[1])):
            lam = lam.to(v.dtype)
            for level in self.levels(v.dtype, v.device):  # ascending: the largest firing threshold wins
                out = torch.where(sign * v >= lam * (level - 0.5), sign * lam * level, out)
        v = v - out
        top = self.lambdas.to(v.dtype) * (2.0 ** (self.n - 1) - 0.5)
        return out, v, int((out != 0).sum()), int(((v >= top[0]) | (-v >= top[1])).sum())

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.single_step_forward(x) for x in x_seq])

    def extra_repr(self) -> str:
        return f"n={self.n}, thresholds={self.thresholds}, step_mode={self.step_mode!r}"
