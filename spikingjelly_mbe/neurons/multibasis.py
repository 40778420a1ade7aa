"""Shared simulation of multi-basis few-spike neurons (paper Eqs. 1-3 and 5-8).

The FS neuron and the MBE neuron are instances of one dynamical system. Basis ``n`` starts from
``u_n[0] = a_n * x + c_n`` and for ``t = 0 .. T-1``::

    s_n[t]   = H(u_n[t] - Vth_n[t])          (Eq. 2 / Eq. 6)
    u_n[t+1] = u_n[t] - r_n[t] * s_n[t]      (Eq. 1 / Eq. 5)
    o_n[t+1] = o_n[t] + d_n[t] * s_n[t]      (Eq. 3 / Eq. 7)

and the neuron emits ``f_hat(x) = sum_n w_n * o_n[T] + b`` (Eq. 8).

The input gain ``a_n``, offset ``c_n`` and output bias ``b`` extend the paper's equations: a
negative gain makes a basis fire for inputs *below* ``-c_n / a_n``, which is how functions with a
negative lobe (GELU's dip, SiLU, tanh) are covered while thresholds stay positive; the offset
places a basis' working range; the bias is a constant current emitted at ``t = 0``. Gain and
offset are a per-basis synaptic weight and bias, so they fold into the preceding linear layer.
"""
from __future__ import annotations

import copy
import logging
import math
import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from spikingjelly.activation_based import base

from ..kernels import backend as backends

log = logging.getLogger(__name__)

Domain = Optional[Tuple[float, float]]


def simulate_bases(
    u0: torch.Tensor, vth: torch.Tensor, reset: torch.Tensor, intensity: torch.Tensor,
    keep_spikes: bool = True,
) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Run Eqs. 5-7 for all bases at once, step by step.

    ``u0``: initial potentials ``[..., N]``; ``vth``, ``reset``, ``intensity``: ``[..., N, T]``,
    broadcastable against ``u0[..., None]``. Returns the binary spikes ``[T, ..., N]`` (``None``
    when ``keep_spikes`` is false), the accumulated outputs ``o_n[T]`` ``[..., N]`` and the
    number of spikes each element fired ``[..., N]``.
    """
    vth, reset, intensity = (v.movedim(-1, 0).contiguous() for v in (vth, reset, intensity))
    u = u0.clone()
    out = torch.zeros_like(u0)
    count = torch.zeros_like(u0)
    spikes = []
    for t in range(vth.shape[0]):
        s = (u >= vth[t]).to(u.dtype)
        u -= reset[t] * s
        out += intensity[t] * s
        count += s
        if keep_spikes:
            spikes.append(s)
    return (torch.stack(spikes, 0) if keep_spikes else None), out, count


DEFAULT_T = 16  # time steps of every neuron, fit, operator and conversion unless told otherwise
DEFAULT_N = 4  # bases of an MBE neuron unless told otherwise (the paper's N)
ACTIVATION_N = 8  # bases of a fitted activation neuron: the operators' and conversion's default (OpSettings.activation_N)
HALF_DTYPES = (torch.float16, torch.bfloat16)  # simulated in float32: their 11/8-bit mantissas miscount spikes


def finite_number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an integer >= 1, or a ValueError/TypeError naming ``name`` (``2.5``, ``'4'``, ``True`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); pass e.g. {name}=4")
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number (an int), got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_domain(domain: Any) -> Domain:
    """``None`` or two finite numbers ``(lo, hi)`` with ``lo < hi``."""
    if domain is None:
        return None
    if isinstance(domain, (str, bytes)) or not hasattr(domain, "__len__") or len(domain) != 2:
        raise ValueError(f"domain must be a pair (lo, hi), got {domain!r}")
    lo, hi = (finite_number("domain bound", v) for v in domain)
    if not lo < hi:
        raise ValueError(f"domain must satisfy lo < hi, got {domain}")
    return lo, hi


def _vector(name: str, value) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    return v.detach().clone()


def _table(name: str, value, n: int) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if v.dim() != 2 or v.shape[0] != n or v.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N={n}, T], got {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v.detach().clone()


class MultiBasisNode(base.MemoryModule):
    """A SpikingJelly neuron with ``N`` parallel few-spike bases over ``T`` timesteps (Eqs. 5-8).

    ``vth``, ``reset``, ``intensity`` are ``[N, T]`` tables; ``gain``, ``offset``, ``weight`` are
    ``[N]``. Single-step input ``x`` is the initial membrane potential and the output is the decoded
    value ``f_hat(x)``. Multi-step input ``[T, ...]`` is summed over time into the initial potential
    (SpikingJelly's ``FewSpikeNode`` convention) and the output is the weighted spike sequence
    ``[T, ...]`` whose sum over time is ``f_hat(x)``; the bias is emitted at ``t = 0``.

    Every forward sets ``last_spike_count`` / ``last_num_inputs`` (spikes fired and neurons
    simulated by that forward) and adds to the memories ``spike_count`` / ``num_inputs``, which
    ``functional.reset_net`` zeroes. Inputs outside ``domain`` are clamped to it; the count is
    logged once per forward and accumulated in the memory ``clamp_count``. NaN/Inf raise.

    ``backend`` (``'torch'`` | ``'triton'``, as SpikingJelly's neurons): ``'triton'`` runs a multi-step
    call's whole ``T``-step loop in one kernel with the membranes in registers
    (:func:`~spikingjelly_mbe.kernels.triton_ops.bases`; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``). ``surrogate_function`` is the differentiable function whose gradient the
    backward pass uses in place of ``f_hat``'s (straight-through; a multi-step output spreads it
    evenly over the ``T`` steps, whose sum is ``f_hat``); without one, an input that requires grad
    is an error. :meth:`~spikingjelly_mbe.fitting.FittedNeuron.node` sets it to the fitted target.
    """

    supported_backends = ("torch", "triton")

    def __init__(
        self, vth, reset, intensity, gain, offset, weight, bias: float = 0.0,
        domain: Domain = None, step_mode: str = "s", backend: str = "torch",
        surrogate_function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        super().__init__()
        if surrogate_function is not None and not callable(surrogate_function):
            raise TypeError(f"surrogate_function must be a tensor function such as torch.tanh, got {surrogate_function!r}")
        self.backend = backend
        self.surrogate_function = surrogate_function
        gain = _vector("gain", gain)
        n = gain.numel()
        for name, value in (("offset", offset), ("weight", weight)):
            if _vector(name, value).numel() != n:
                raise ValueError(f"{name} needs N={n} entries (one per basis)")
        self.register_buffer("vth", _table("vth", vth, n))
        self.register_buffer("reset_value", _table("reset", reset, n))
        self.register_buffer("intensity", _table("intensity", intensity, n))
        if not (self.vth.shape == self.reset_value.shape == self.intensity.shape):
            raise ValueError("vth, reset and intensity must share the shape [N, T]")
        self.register_buffer("gain", gain)
        self.register_buffer("offset", _vector("offset", offset))
        self.register_buffer("weight", _vector("weight", weight))
        self.register_buffer("bias", torch.as_tensor(finite_number("bias", bias)))
        self.domain = check_domain(domain)
        self.step_mode = step_mode
        self.register_memory("spike_count", 0)
        self.register_memory("num_inputs", 0)
        self.register_memory("clamp_count", 0)
        self.last_spike_count = 0
        self.last_num_inputs = 0

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in self.supported_backends:
            raise ValueError(f"{type(self).__name__}: backend must be one of {self.supported_backends}, got {value!r}")
        self._backend = value

    @property
    def N(self) -> int:
        return self.vth.shape[0]

    @property
    def T(self) -> int:
        return self.vth.shape[1]

    def decode_weights(self) -> torch.Tensor:
        """``W[n, t] = w_n * d_n[t]``, so ``f_hat = sum_{n,t} W[n,t] s_n[t] + b`` (Eqs. 7-8)."""
        return self.weight[:, None] * self.intensity

    def get_extra_state(self) -> Dict[str, Any]:
        """What ``state_dict`` carries besides the buffers: the clamp ``domain``."""
        return {"domain": self.domain}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.domain = check_domain(state["domain"])

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Reject non-float, NaN/Inf and autograd-recording input; clamp to ``domain`` and count
        what was clamped."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"{type(self).__name__} expects a floating point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.requires_grad and torch.is_grad_enabled() and self.surrogate_function is None:
            raise ValueError(f"{type(self).__name__}: the input requires grad, but binary spikes have no gradient. "
                             "Pass surrogate_function=<the function whose gradient to use> (FittedNeuron.node() sets "
                             "the fitted target), or pass x.detach() / run under torch.no_grad()")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{type(self).__name__} received {bad} NaN/Inf input value(s); "
                             "spiking neurons need finite membrane potentials")
        if self.domain is not None:
            lo, hi = self.domain
            n_out = int(((x < lo) | (x > hi)).sum())
            if n_out:
                log.warning("%s: clamped %d of %d inputs to its fitted domain [%g, %g]",
                            type(self).__name__, n_out, x.numel(), lo, hi)
                self.clamp_count = self.clamp_count + n_out
                x = x.clamp(lo, hi)
        return x

    def run(self, x: torch.Tensor, keep_spikes: bool) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Simulate the bases on ``x``: ``(spikes [T, *x.shape, N] or None, f_hat(x), spikes per element)``.

        float16 and bfloat16 inputs are simulated in float32 (their mantissas would miscount
        spikes) and the results returned in the input's dtype; counts are summed in int64."""
        x = self.check_input(x).detach()
        half = x.dtype in HALF_DTYPES
        s, value, per_element = self.simulate(x.float() if half else x, keep_spikes)
        if half:
            s, value = (None if s is None else s.to(x.dtype)), value.to(x.dtype)
        self.count(int(per_element.sum(dtype=torch.int64)), x.numel())
        return s, value, per_element

    def count(self, fired: int, inputs: int) -> None:
        """Add a forward's spikes and neuron inputs to the counters."""
        self.last_spike_count, self.last_num_inputs = fired, inputs
        self.spike_count = self.spike_count + fired
        self.num_inputs = self.num_inputs + inputs

    def straight_through(self, out: torch.Tensor, x: torch.Tensor, share: float = 1.0) -> torch.Tensor:
        """``out`` forward; backward ``share`` times the gradient of :attr:`surrogate_function` at ``x``."""
        if not (torch.is_grad_enabled() and x.requires_grad):
            return out
        surrogate = self.surrogate_function(x)
        return out + (surrogate - surrogate.detach()).to(out.dtype) * share

    def simulate(self, x: torch.Tensor, keep_spikes: bool) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`run` without input checks or counters (Eqs. 5-8 in ``x``'s dtype)."""
        s, o, count = self.simulate_bases(x, keep_spikes)
        return s, o @ self.weight.to(x.dtype) + self.bias.to(x.dtype), count.sum(-1)

    def simulate_bases(self, x: torch.Tensor, keep_spikes: bool, basis: Optional[torch.Tensor] = None,
                       ) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Eqs. 5-7 from ``u_n[0] = a_n x + c_n``: :func:`simulate_bases` of every basis, or with
        ``basis`` (one index per element of a 1-D ``x``) of that basis alone (``N`` = 1)."""
        dt = x.dtype
        gain, offset, vth, reset, intensity = (t.to(dt) for t in (
            self.gain, self.offset, self.vth, self.reset_value, self.intensity))
        if basis is not None:
            gain, offset, vth, reset, intensity = (t[basis].unsqueeze(1) for t in (gain, offset, vth, reset, intensity))
        return simulate_bases(x[..., None] * gain + offset, vth, reset, intensity, keep_spikes)

    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary spike trains ``[T, *x.shape, N]`` (Eqs. 5-6)."""
        return self.run(x, keep_spikes=True)[0]

    def decode(self, s: torch.Tensor) -> torch.Tensor:
        """Weighted spike sequence ``[T, ...]`` from spikes ``[T, ..., N]`` (Eqs. 7-8)."""
        y = torch.einsum("t...n,nt->t...", s, self.decode_weights().to(s.dtype))
        return torch.cat([y[:1] + self.bias.to(s.dtype), y[1:]], 0)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.straight_through(self.run(x, keep_spikes=False)[1], x)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 1 or x_seq.shape[0] != self.T:
            raise ValueError(f"multi-step input must have shape [T={self.T}, ...], got {tuple(x_seq.shape)}")
        x = x_seq.sum(0)
        if not torch.isfinite(x).all() and torch.isfinite(x_seq).all():
            raise ValueError(f"{type(self).__name__}: the multi-step input is finite but its sum over T overflows "
                             f"{x_seq.dtype} in {int((~torch.isfinite(x)).sum())} element(s); scale the input down")
        y = self.fused_sequence(x) if self.backend == "triton" else self.decode(self.spikes(x))
        return self.straight_through(y, x, 1.0 / self.T)

    def fused_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted spike sequence ``[T, ...]`` of :meth:`decode` from one Triton kernel running
        the whole time loop (:func:`~spikingjelly_mbe.kernels.triton_ops.bases`), in ``x``'s dtype."""
        x = self.check_input(x).detach()
        if not (x.device.type == "cuda" or backends.interpreting()) or x.dtype == torch.float64:
            raise ValueError(f"{type(self).__name__}(backend='triton') takes float32/float16/bfloat16 CUDA tensors "
                             f"(or CPU tensors under TRITON_INTERPRET=1), got {x.dtype} on {x.device}; use "
                             "backend='torch'")
        from ..kernels import triton_ops

        y, stats = triton_ops.bases(x, self.gain, self.offset, self.vth, self.reset_value, self.decode_weights(),
                                    float(self.bias))
        self.count(int(stats[0]), x.numel())
        return y.to(x.dtype)

    def scaled(self, in_scale: float = 1.0, out_scale: float = 1.0) -> "MultiBasisNode":
        """A copy computing ``out_scale * f_hat(x / in_scale)`` (``in_scale > 0``): how an identity
        neuron fitted on ``[0, 1]`` serves any range ``[0, A]`` (Eq. 9)."""
        if not finite_number("in_scale", in_scale) > 0:
            raise ValueError(f"in_scale must be positive, got {in_scale}")
        finite_number("out_scale", out_scale)
        node = copy.deepcopy(self)
        node.gain = node.gain / in_scale
        node.weight = node.weight * out_scale
        node.bias = node.bias * out_scale
        if node.domain is not None:
            node.domain = (node.domain[0] * in_scale, node.domain[1] * in_scale)
        return node

    def extra_repr(self) -> str:
        return f"N={self.N}, T={self.T}, domain={self.domain}, step_mode={self.step_mode}, backend={self.backend}"
