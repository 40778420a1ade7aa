"""Element-wise spiking activations from fitted MBE/FS neurons (Eq. 8)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .. import kernels
from ..activations import ACTIVATIONS, activation_entry
from ..fitting.fitted import FittedNeuron
from ..fitting.library import load_fitted, load_fitted_on
from ..fitting.targets import TARGETS, TensorFn
from ..neurons.lookup import fingerprint, neuron_table
from ..neurons.multibasis import ACTIVATION_N
from . import flops
from .base import DEFAULT_MODE, DEFAULT_T, Count, SpikingOp, in_float_reference_mode, working_dtype
from .coding import DEFAULT_CODE, decode, total
from .precision import channel_layout
from .rectifier import SpikingReLU
from .weight_input import LAST_CODE

# F.gelu's approximate= forms and the activations computing them (from the one activation table)
GELU_TARGETS = {form: a.name for form in ("none", "tanh") for a in ACTIVATIONS.values()
                if "gelu" in a.calls and a.calls["gelu"]((), {"approximate": form}) is not None}


class SpikingActivation(SpikingOp):
    """``f_hat(x) = sum_{n,t} w_n d_n[t] s_n[t] + b`` of a fitted neuron, element-wise (Eq. 8).

    Inputs outside the fit's domain are clamped to it and counted. ``simulate`` runs the neuron
    step by step, keeps the binary spikes ``[T, ..., N]`` and decodes them; fast mode looks the
    same output and spike count up in the neuron's :class:`~spikingjelly_mbe.neurons.NeuronTable`
    (exact: the simulation is piecewise constant in ``x``; built once per process and dtype), in a
    fused kernel on CPU float32. SOPs: one per spike (its weight is accumulated into the output);
    ``ann_flops``: :data:`flops.ACTIVATION` per element.

    ``reference`` is the float function for the straight-through gradient; it defaults to the
    registered target of the fit (a fit of an unregistered callable needs it under autograd).
    ``saturating`` (set by :class:`RectifiedActivation`): the target is flat beyond the domain, so
    an input there takes the domain edge's value exactly, is not counted as a clamp, and the float
    function is the target at the edge.
    """

    settings_names = ("T",)
    saturating = False

    def __init__(self, fitted: FittedNeuron, mode: str = DEFAULT_MODE, reference: Optional[TensorFn] = None) -> None:
        super().__init__(mode)
        if not isinstance(fitted, FittedNeuron):
            raise TypeError(f"SpikingActivation needs a FittedNeuron, got {type(fitted).__name__}")
        if reference is not None and not callable(reference):
            raise TypeError(f"reference must be a tensor function such as torch.sin, got {reference!r}")
        self.fitted = fitted
        self.reference = reference
        self.node = fitted.node(clamp=False)
        self._stamp: Tuple = ()
        self._key = ""

    @classmethod
    def from_float(cls, float_op: object, T: int = DEFAULT_T, N: int = ACTIVATION_N, mode: str = DEFAULT_MODE,
                   kind: str = "mbe", span: Optional[float] = None) -> "SpikingActivation":
        """One fitted ``kind`` neuron (``N`` bases, ``T`` steps; shipped, cached or fitted on first
        use) of an activation of :data:`~spikingjelly_mbe.activations.ACTIVATIONS` with a fit of its
        own: a module of a class it lists (``nn.GELU()``, ``nn.SiLU()``, Hugging Face's
        ``GELUActivation()``, ...), its function (``F.gelu``, ``torch.tanh``, ...) or its entry.
        ``span``: fitted on ``[-span, span]`` instead of the entry's own domain."""
        entry, params = activation_entry(cls, float_op)
        if entry.fitted_target is None or params:
            raise TypeError(f"SpikingActivation.from_float: {entry.name} has no fitted neuron of its own; use "
                            "PiecewiseLinear.from_float for a piecewise-linear activation")
        fitted = load_fitted(entry.fitted_target, kind, N, T) if span is None else \
            load_fitted_on(entry.fitted_target, N, T, span, kind)
        return cls(fitted, mode)

    @property
    def T(self) -> int:
        return self.node.T

    @property
    def node_key(self) -> str:
        """The neuron's :func:`fingerprint`, recomputed whenever one of its buffers was replaced or
        edited in place (so fast mode never serves a stale table); a compiled forward keeps the key of
        the eager forward before it (buffers edited in between need a recompile anyway)."""
        if self._key and torch.compiler.is_compiling():
            return self._key
        stamp = tuple((t.data_ptr(), t._version) for t in self.node.buffers())
        if stamp != self._stamp:
            self._stamp, self._key = stamp, fingerprint(self.node)
        return self._key

    def calibrated_state(self) -> Dict[str, Any]:
        """The fitted neuron (conversion fits some activations on the input range calibration saw)."""
        return {"fitted": self.fitted.to_dict()}

    def restore_calibrated(self, state: Dict[str, Any]) -> None:
        if state["fitted"] != self.fitted.to_dict():
            self.fitted = FittedNeuron.from_dict(state["fitted"], "the state_dict's fitted neuron")
            self.node = self.fitted.node(clamp=False).to(self.state_device())

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        reference = self.reference or (TARGETS[self.fitted.target].fn if self.fitted.target in TARGETS else None)
        if reference is None:
            raise ValueError(f"SpikingActivation({self.fitted.key}): the input requires grad, and target "
                             f"{self.fitted.target!r} is not registered, so there is no float function for the "
                             "straight-through gradient; pass reference=<the tensor function>, or run under "
                             "torch.no_grad()")
        return reference(x.clamp(*self.fitted.domain) if self.saturating else x)

    @classmethod
    def gelu(cls, T: int = DEFAULT_T, N: int = ACTIVATION_N, approximate: str = "none",
             mode: str = DEFAULT_MODE) -> "SpikingActivation":
        """GELU from the shipped fit: erf form (``'none'``) or GPT-2's tanh form (``'tanh'``);
        ``N`` bases (:data:`ACTIVATION_N`, conversion's default, unless given)."""
        if approximate not in GELU_TARGETS:
            raise ValueError(f"approximate must be one of {sorted(GELU_TARGETS)}, got {approximate!r}")
        return cls(load_fitted(GELU_TARGETS[approximate], "mbe", N, T), mode)

    @classmethod
    def silu(cls, T: int = DEFAULT_T, N: int = ACTIVATION_N, mode: str = DEFAULT_MODE) -> "SpikingActivation":
        """SiLU from the shipped fit (``N`` as in :meth:`gelu`)."""
        return cls(load_fitted("silu", "mbe", N, T), mode)

    @classmethod
    def tanh(cls, T: int = DEFAULT_T, N: int = ACTIVATION_N, mode: str = DEFAULT_MODE) -> "SpikingActivation":
        """tanh from the shipped fit (``N`` as in :meth:`gelu`)."""
        return cls(load_fitted("tanh", "mbe", N, T), mode)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if not self.simulating and x.numel() and (kernels.usable(x) or kernels.triton_usable(x)):
            value, (fired, outside, nonfinite) = self.looked_up(x)
            return self.finish(x, value, fired, outside, nonfinite)
        self.check_input(x, "input")
        lo, hi = self.fitted.domain
        xs = x.to(working_dtype(x))
        outside = 0 if self.saturating else ((xs < lo) | (xs > hi)).sum()
        value, fired = self.evaluate(xs.clamp(lo, hi))
        return self.finish(x, value, fired, outside, 0)

    def finish(self, x: torch.Tensor, value: torch.Tensor, fired: Count, outside: Count, nonfinite: Count) -> torch.Tensor:
        """Count a forward on ``x``: NaN/Inf inputs, inputs clamped to the domain (none when
        ``saturating``), spikes, SOPs and the activation's operations; ``value`` in ``x``'s dtype."""
        lo, hi = self.fitted.domain
        self.counted_nonfinite(x, "input", nonfinite)
        self.note_clamped(0 if self.saturating else outside, f"inputs outside [{lo:g}, {hi:g}] to the fitted neuron's domain")
        self.record(spikes=fired, neurons=x.numel(), sops=fired, ann_flops=flops.ACTIVATION * x.numel())
        return value.to(x.dtype)

    def looked_up(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[Count]]:
        """Fast mode's table lookup in one fused kernel (the ``c`` or ``triton`` backend):
        ``(f_hat, [spikes, inputs outside the domain, NaN/Inf])``."""
        table = neuron_table(self.node, self.fitted.domain, torch.float32, x.device, self.node_key)
        if kernels.triton_usable(x):
            triton_ops = kernels.load_triton()
            value, stats = triton_ops.lookup(x, *triton_ops.table_tensors(table))
            return value, [stats[0], stats[1], stats[2]]
        return kernels.rowwise("sjmbe_lookup_f32", x, 1, 3, *table.kernel_args())

    def evaluate(self, xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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


# the computes RectifiedActivation's one-pass kernel reproduces; a part computing otherwise (a subclass,
# a replaced method) runs its own forward
FUSED_COMPUTES = (SpikingReLU.compute, SpikingActivation.compute)


class RectifiedActivation(nn.Module):
    """``f(x) = relu(x) + g(x)`` for an activation with a linear tail (GELU, SiLU; a range reduction):
    the rectifier is exact up to its identity code (:class:`~.rectifier.SpikingReLU`, one calibrated
    range per channel, an input beyond it shifted by ``2^e`` rather than clamped), and the fitted MBE neuron only
    carries the residual ``g = f - relu`` (:data:`~spikingjelly_mbe.fitting.targets.RECTIFIED`), a
    bump that vanishes outside a short domain and spans a few hundredths of ``f``'s range, so its
    fit at T=8 reaches what ``f``'s own reaches at T=16. Both neurons see ``x``; their outputs add
    (Eq. 8, the rectifier's weight 1). Beyond the residual's domain its neuron saturates at the
    domain's edge, where ``g`` is already flat (``|g| < 2e-6``), so those inputs are exact, not
    clamps, and are not counted as such. The residual charges the activation's ANN operations; the
    rectifier charges only its spikes. Under autograd each part's straight-through gradient is
    its float function's, so the sum's is ``f'``."""

    mbe_opaque = True

    def __init__(self, rectifier: SpikingReLU, residual: SpikingActivation) -> None:
        super().__init__()
        if not isinstance(rectifier, SpikingReLU) or not isinstance(residual, SpikingActivation):
            raise TypeError(f"RectifiedActivation needs a SpikingReLU and a SpikingActivation, got "
                            f"{type(rectifier).__name__} and {type(residual).__name__}")
        self.rectifier, self.residual = rectifier, residual
        self.rectifier.ann_flops_per_element = 0  # the residual charges the activation's operations
        self.residual.saturating = True

    @classmethod
    def from_float(cls, float_op: object, T: int = DEFAULT_T, N: int = ACTIVATION_N, mode: str = DEFAULT_MODE,
                   kind: str = "mbe", code: str = DEFAULT_CODE) -> "RectifiedActivation":
        """The rectified form of an activation of :data:`~spikingjelly_mbe.activations.ACTIVATIONS`
        with a linear tail (a ``residual_domain``: GELU, its tanh form, SiLU), from its module, its
        function or its entry: a per-channel :class:`~.rectifier.SpikingReLU` (``code``; calibrated)
        plus one fitted ``kind`` neuron of the residual (``N`` bases, ``T`` steps)."""
        entry, params = activation_entry(cls, float_op)
        if entry.residual_target is None or params:
            raise TypeError(f"RectifiedActivation.from_float: {entry.name} has no rectified form (no linear tail); "
                            "use SpikingActivation.from_float or PiecewiseLinear.from_float")
        return cls(SpikingReLU(T, mode, code=code, per_channel=True),
                   SpikingActivation(load_fitted(entry.residual_target, kind, N, T), mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusable(x):
            return self.fused(x)
        return self.rectifier(x) + self.residual(x)

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether both parts' fast paths run as one compiled pass (the ``c`` backend): both in fast mode
        with the computes the pass reproduces (:data:`FUSED_COMPUTES`), the rectifier calibrated, no hook
        on either part (the pass does not call their forwards), and neither the float reference nor a
        trace asked for."""
        rectifier, residual = self.rectifier, self.residual
        return (x.numel() > 0 and not in_float_reference_mode() and not torch.jit.is_tracing()
                and (type(rectifier).compute, type(residual).compute) == FUSED_COMPUTES
                and not rectifier.simulating and not residual.simulating and not rectifier.calibrating
                and rectifier.channel_ranges is not None and rectifier.coder.kernel_coded
                and not any(p._forward_hooks or p._forward_pre_hooks for p in (rectifier, residual))
                and kernels.usable(x))

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """``rectifier(x) + residual(x)`` in one pass (:func:`~spikingjelly_mbe.kernels.rectified`), each
        part counting its own spikes, clamps and NaN/Inf inputs as its forward does; the output also coded
        in that pass for the weight layer that coded the last one (its consumer), and kept for it
        (:class:`~.weight_input.SharedCode`)."""
        rectifier, residual = self.rectifier, self.residual
        channels, inner, ranges = channel_layout(rectifier.channel_ranges, x, -1)
        table = neuron_table(residual.node, residual.fitted.domain, torch.float32, x.device, residual.node_key)
        consumer = LAST_CODE.consumer_of(self)
        following = None if consumer is None else consumer.kernel_code_args(x)
        out, coded, stats = kernels.rectified(x, channels, inner, ranges, rectifier.coder.kernel_params(x.dtype, True),
                                              table.kernel_args(), following)
        if coded is not None:
            LAST_CODE.keep(out, following, coded, stats[6:])
        LAST_CODE.produced(out, self)
        rectifier.finish(x, out, *stats[:3])
        residual.finish(x, out, *stats[3:6])
        for part in (rectifier, residual):
            if not part.deferring:
                part.flush("in this forward")
        return out
