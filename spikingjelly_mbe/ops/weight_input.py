"""A weight layer driven by spikes: its input coded by a sign-magnitude MBE_Id neuron (Eq. 9), each
spike accumulating its weight column (Eq. 12 with one dense operand)."""
from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import kernels
from ..kernels import ChannelCode
from . import flops
from .base import DEFAULT_MODE, DEFAULT_T, CalibratedOp, Count, working_dtype
from .coding import (BEYOND_SHIFT, DEFAULT_CODE, MAX_RANGE, MIN_RANGE, IdentityCoder, SpikeCode, check_code, check_steps,
                     code_levels, equivalent_digits, finite, kernel_coded, total)
from .layers import check_weight_layer
from .observer import ChannelMean, Extreme, RangeObserver
from .precision import (DEFAULT_BUDGET, Budget, ChannelCenters, along, budget_step, channel_layout, channel_ranges,
                        channel_shares, resolve_budget)


def host_values(t: Optional[torch.Tensor]) -> Optional[Tuple[torch.dtype, Tuple[int, ...], bytes]]:
    """A CPU tensor's dtype, shape and bytes, read on the host (no device operation, so no synchronisation
    where ``torch.equal`` would be one); ``None`` for ``None``."""
    return None if t is None else (t.dtype, tuple(t.shape), t.numpy().tobytes())


class SharedCode(threading.local):
    """The last input code of a weight layer on the ``c`` backend (per thread), handed to the next weight
    layer that codes the very same tensor (unchanged since: its ``_version``) with equal channel layout,
    ranges, centres and coder: the query, key and value projections of an attention read one input, and
    their calibrations, seeing the same values, give them the same code (Eq. 9), which is coded once.
    Each layer still counts the code's spikes as its own. Released when its input tensor is freed. Ranges
    and centres are compared by their bytes (:func:`host_values`): equal bytes, equal values.

    A producer may code its output for the layer that reads it in its own pass (:meth:`keep`; a
    :class:`~.activation.RectifiedActivation` does): it marks that output as its own (:meth:`produced`),
    and a layer that then codes that output without a kept code becomes the producer's consumer
    (:meth:`consumer_of`), whose code the producer keeps from the next forward on. A kept code serves only
    a layer asking for those very settings on that very tensor."""

    entry: Optional[Tuple[Any, ...]] = None
    producer: Optional[Tuple[weakref.ref, weakref.ref]] = None  # (an output, the module that made it)

    def __init__(self) -> None:
        self.consumers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # producer -> its consumer (weak)

    def code(self, x: torch.Tensor, args: ChannelCode, consumer: nn.Module) -> Tuple[torch.Tensor, List[int]]:
        """:func:`~spikingjelly_mbe.kernels.channel_code` of ``x`` (no rectifier; ``args``: its channels,
        inner size, ranges, centres and coder), or the code kept for it; ``consumer`` (the layer asking)
        becomes the consumer of ``x``'s producer when no code was kept."""
        entry, settings = self.entry, self.settings(args)
        if entry is not None:
            source, version, kept, value, value_version, stats = entry
            if source() is x and version == x._version and kept == settings and value._version == value_version:
                return value, stats
        producer = None if self.producer is None or self.producer[0]() is not x else self.producer[1]()
        if producer is not None:
            self.consumers[producer] = weakref.ref(consumer)
        channels, inner, ranges, centres, coder = args
        value, stats = kernels.channel_code(x, channels, inner, ranges, centres, False, coder)
        self.keep(x, args, value, stats)
        return value, stats

    @staticmethod
    def settings(args: ChannelCode) -> Tuple[Any, ...]:
        """What two codes of one tensor must share to be equal: layout and coder, ranges' and centres' bytes."""
        channels, inner, ranges, centres, coder = args
        return (channels, inner, tuple(coder)), host_values(ranges), host_values(centres)

    def keep(self, x: torch.Tensor, args: ChannelCode, value: torch.Tensor, stats: List[int]) -> None:
        """Keep ``value``, the code of ``x`` with ``args`` and its ``stats``, for the next layer asking for it."""
        self.entry = (weakref.ref(x, self.release), x._version, self.settings(args), value, value._version, stats)

    def produced(self, x: torch.Tensor, producer: nn.Module) -> None:
        """``x`` is ``producer``'s output."""
        self.producer = (weakref.ref(x), weakref.ref(producer))

    def consumer_of(self, producer: nn.Module) -> Optional[nn.Module]:
        """The layer that coded ``producer``'s last output (in this thread), if it is still alive."""
        consumer = self.consumers.get(producer)
        return None if consumer is None else consumer()

    def release(self, source: weakref.ref) -> None:
        """The input of the kept code was freed: drop the code."""
        if self.entry is not None and self.entry[0] is source:
            self.entry = None


LAST_CODE = SharedCode()


class SpikingWeightInput(CalibratedOp):
    """``layer`` (``nn.Linear``, GPT-2's ``Conv1D``, a convolution) on the MBE_Id code of its input.

    Every input channel ``k`` is coded like a product's operand (sign-magnitude, ``T`` digits of
    its own range ``A_k`` in the digit ``code``), and every spike adds ``d_k[t] W[:, k]`` to the
    outputs it reaches: ``layer(x_hat) = sum_t W (d[t] s[t]) + layer(c)`` (Eq. 12, one operand
    dense; ``d_k[t] = A_k 2^(T-1-t) / L``, ``L = 2^T - 1``, the MBE_Id weight of channel ``k``; in the
    ``'ternary'`` code ``A_k 3^(T-1-t) / L``, ``L = (3^T - 1) / 2``), where
    ``x_hat = c + code(x - c)``. ``simulate`` runs the layer on every spike plane and sums them so;
    fast mode runs it once on the decoded input ``x_hat`` (the same sum regrouped). SOPs:
    ``spikes x fan-out`` (one accumulate per spike and outgoing synapse); ``ann_flops``: the layer's MACs.

    With ``A=None`` the operator starts ``calibrating`` (the float layer, ``x`` observed), like the
    products. Calibration sets (:mod:`.precision`):

    * ``centered``: each channel's center ``c_k``, the median of its values
      (:class:`~.precision.ChannelCenters`), a constant carried by the bias ``layer(c) - layer(0)``
      instead of by spikes: a channel whose values sit around an offset (a LayerNorm's ``beta``)
      codes only its spread. Only where the layer is affine per position (``nn.Linear``, ``Conv1D``,
      a convolution without padding), and not with a ``percentile`` range;
    * the range ``A = max |x - c|`` (or the percentile of ``|x|``), and each channel's as ``A``
      times its share ``2 max_k |x - c| / A`` (one digit of room over the few calibration values a
      channel sees; beyond it the overflow shift below), so an outlier channel does not coarsen the others;
    * under a ``budget`` (``'auto'``: ``2^-(3.5 + 5T/16)``, :data:`~.precision.AUTO_BUDGETS`, ``T`` the
      code's :func:`~.coding.equivalent_digits`), the rounding step to ``budget`` of the typical
      channel's RMS of ``x - c`` (the median over channels), widening a channel's range to
      ``step L`` where that is larger: quiet
      channels are not coded finer than the budget asks.

    With ``bias_correction``, calibration then measures the layer's expected rounding shift on the
    calibration batches, ``beta = E[layer(x_hat) - layer(x)]`` per output channel (``W E[x_hat - x]``
    for ``nn.Linear``/``Conv1D``: the layer is linear in its input, so this is the mean shift its
    rounding adds to every output), on a second pass with the ranges fixed and every operator in
    float (:meth:`start_shift_pass`); the buffer ``rounding_bias`` holds it, and every forward
    subtracts it from the layer's bias: its output's mean error on the calibration distribution is
    then zero. A constant per output channel, no spikes; both modes subtract the same buffer.

    An input beyond its channel's range is coded at ``2^e A_k``, ``e >= 0`` the smallest exponent that
    holds ``|x - c|`` (:func:`~.coding.overflow_shift`: a comparison, and an exponent shift of that
    neuron's spike weights), for any layer (each spike still adds its weight column, scaled by its
    neuron's ``2^e``); only an input beyond even the largest shift (a range calibrated on zeros) is
    clamped and counted. The layer is called through ``layer.forward`` (no module
    hooks: this operator charges it itself).
    """

    drives_weight_layer = True

    operands = 1  # ranges (A,)
    calibrated_buffers = ("channel_ranges", "channel_centers", "rounding_bias")

    def __init__(self, layer: nn.Module, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, A: Optional[float] = None,
                 code: str = DEFAULT_CODE, budget: Budget = DEFAULT_BUDGET, centered: bool = True,
                 bias_correction: bool = False) -> None:
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise TypeError(f"SpikingWeightInput wraps a weight layer (nn.Linear, Conv1D, a convolution), got "
                            f"{type(layer).__name__}")
        super().__init__(mode)
        self.layer = layer
        self.T, self.code = check_steps(T), check_code(code)
        self.levels, self.precision_digits = code_levels(self.code, self.T), equivalent_digits(self.code, self.T)
        self.kernel_coded = kernel_coded(self.code, self.T)
        self.budget = resolve_budget(budget, self.precision_digits, "weight_input")
        self.channel_dim = 1 if hasattr(layer, "in_channels") else -1
        padding = getattr(layer, "padding", 0)
        unpadded = padding == 0 or (isinstance(padding, tuple) and all(p == 0 for p in padding))
        self.centered = bool(centered) and unpadded  # a padded convolution's border sees zeros, not c
        if not isinstance(bias_correction, bool):
            raise ValueError(f"SpikingWeightInput: bias_correction must be True or False, got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.shift: Optional[ChannelMean] = None  # the rounding shift being measured (start_shift_pass)
        self.step: Optional[float] = None  # the budget's rounding step, set by calibration
        self.shares: Optional[torch.Tensor] = None  # each channel's share of the range, set by calibration
        self.coder = IdentityCoder(self.T, 1.0, self.code, shift_overflow=True)  # on x / A_k
        self.register_buffer("channel_ranges", None)
        self.register_buffer("channel_centers", None)
        self.register_buffer("rounding_bias", None)  # E[layer(x_hat) - layer(x)] per output channel
        self.observer, self.stats = RangeObserver(), ChannelCenters(self.channel_dim)
        self.calibrating = A is None
        if A is not None:
            self.set_ranges((A,))

    @classmethod
    def from_float(cls, float_op: nn.Module, **options: object) -> "SpikingWeightInput":
        """``float_op`` (a weight layer: ``nn.Linear``, GPT-2's ``Conv1D``, ``nn.Conv1d``, ``nn.Conv2d``,
        or a module declaring itself one with ``weight_layer = True``, such as one expert's slice of a
        stacked weight; its weights untouched) driven by the code of its input. ``options``: ``T``,
        ``mode``, ``A`` (else calibrated), ``code``, ``budget``, ``centered``, ``bias_correction``."""
        return cls(check_weight_layer(cls, float_op), **options)

    def __getattr__(self, name: str) -> Any:
        """The wrapped layer's attributes (``weight``, ``bias``, a convolution's ``stride``...), so model
        code that reads them keeps working."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self._modules.get("layer")
            if layer is None:
                raise
            return getattr(layer, name)

    @property
    def idle(self) -> bool:
        """Calibrating and never called: its parent reads the weights itself (e.g. the ``out_proj`` of
        ``nn.MultiheadAttention``), so conversion puts the layer back."""
        return self.calibrating and not self.observer.samples

    @property
    def ranges(self) -> Optional[Tuple[float]]:
        """The largest channel range ``(A,)``."""
        return None if self.channel_ranges is None else (float(self.channel_ranges.max()),)

    def set_ranges(self, ranges: Sequence[float]) -> None:
        """Fix the layer's input range ``(A,)``: each channel gets ``A`` times its calibrated share,
        widened to the calibrated step's covering range (:func:`~.precision.covering_range`); then stop
        calibrating."""
        ranges = tuple(ranges)
        if len(ranges) != 1 or isinstance(ranges[0], bool) or not isinstance(ranges[0], (int, float)) \
                or not 0 < ranges[0] < float("inf"):
            raise ValueError(f"SpikingWeightInput: ranges must be one positive finite number (A,), got {ranges!r}")
        self.channel_ranges = channel_ranges(float(ranges[0]), self.shares, self.step, self.levels)
        self.calibrating = False

    def scale_channel_ranges(self, factors: torch.Tensor) -> None:
        """Multiply each channel's range by its factor (within the code's representable ranges)."""
        scaled = self.channel_ranges.double() * factors.to(self.channel_ranges.device, torch.float64)
        self.channel_ranges = scaled.clamp(min=MIN_RANGE, max=MAX_RANGE).float()

    def channel_rates(self, rows: torch.Tensor, factors: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per channel, coded at its range times each of ``factors``: the mean squared error of the code of
        ``rows`` (``[positions, channels]``, the layer's input along its channel dimension; Eq. 9, centres
        and overflow shifts included) and its mean spikes per position, float64 ``[channels, factors]``."""
        x = rows.to(working_dtype(rows, self.precision_digits))
        if self.channel_centers is not None:
            x = x - self.channel_centers.to(x)
        errors, spikes = [], []
        for factor in factors:
            scales = (self.channel_ranges.double() * factor).clamp(min=MIN_RANGE, max=MAX_RANGE).to(x)
            code, _ = self.coder.encode(finite(x / scales), False)
            errors.append((code.value * scales - x).double().square().mean(0))
            spikes.append(code.counts.double().mean(0))
        return torch.stack(errors, 1), torch.stack(spikes, 1)

    def settings_state(self) -> Dict[str, Any]:
        return {**super().settings_state(), "budget": self.budget, "centered": self.centered,
                "bias_correction": self.bias_correction}

    def calibrated_state(self) -> Dict[str, Any]:
        return {"step": self.step, "shares": self.shares, "calibrating": self.calibrating}

    def restore_calibrated(self, state: Dict[str, Any]) -> None:
        self.step, self.shares, self.calibrating = state["step"], state["shares"], state["calibrating"]

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float]:
        """The channels' centers, the layer's ``A`` from the observed ``max |x - c|`` (or the
        ``percentile`` of ``|x|``), the channels' shares and the budget's step from the typical
        channel's RMS of ``x - c`` (the whole input's RMS when its channel count varied); returns the
        observed ``(A,)``."""
        if not self.observer.samples:
            raise RuntimeError("SpikingWeightInput: finish_calibration() before any calibration forward; run a "
                               "few batches while calibrating, or call set_ranges((A,))")
        centers = self.stats.centers() if self.centered and percentile is None else None
        if centers is None:
            peaks, observed = self.stats.peaks, (self.observer.range(percentile),)
        else:
            peaks = self.stats.centered_peaks(centers)
            observed = (max(float(peaks.max()), MIN_RANGE),)
        if self.budget is not None:
            rms = self.stats.typical_rms(centers)
            self.step = budget_step(self.observer.rms() if rms is None else rms, self.budget)
        self.shares = channel_shares(peaks)
        self.channel_centers = None if centers is None else centers.float()
        self.set_ranges(observed)
        self.observer, self.stats = RangeObserver(), ChannelCenters(self.channel_dim)
        return observed

    def isolated_extremes(self) -> Dict[str, List[Extreme]]:
        """Calibration samples standing far beyond the rest (:meth:`.RangeObserver.isolated`); when
        any, the statistics restart for a second pass that leaves them out."""
        found = self.observer.isolated()
        if found:
            self.stats = ChannelCenters(self.channel_dim)
        return {"input": found} if found else {}

    def start_shift_pass(self) -> bool:
        """With ``bias_correction`` and calibrated ranges: measure the rounding shift from now on."""
        if not self.bias_correction or self.calibrating or self.channel_ranges is None:
            return False
        self.shift = ChannelMean(self.channel_dim)
        return True

    def finish_shift_pass(self) -> None:
        """``rounding_bias``: the measured mean shift per output channel (none when never called)."""
        mean = self.shift.mean()
        self.rounding_bias = None if mean is None else mean.float()
        self.shift = None

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer.forward(x)
        if self.shift is not None:  # the shift pass: how far the code of x moves the output
            with torch.no_grad():
                xs = x.detach().to(working_dtype(x, self.precision_digits))
                centers = self.centers_for(xs)
                code, scales, _ = self.unit_code(xs, centers, False)
                self.shift.observe(self.layer.forward(self.decoded(code, scales, centers).to(x.dtype)) - out.detach())
        return out

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if self.calibrating:
            self.reject_nonfinite(x, "input")
            kept = self.observer.admit(x)
            if kept is not None:
                self.observer.observe(kept)
                self.stats.observe(kept)
            return self.layer.forward(x)
        if self.channel_ranges is None:
            raise RuntimeError("SpikingWeightInput has no input range: calibrate it or call set_ranges((A,))")
        if not self.simulating and x.numel() and self.kernel_coded and kernels.triton_usable(x):
            return self.by_triton(x)
        xs = x.to(working_dtype(x, self.precision_digits))
        args = self.kernel_code_args(xs)
        if args is not None:
            value, (spikes, clamped, nonfinite) = LAST_CODE.code(xs, args, self)
            self.counted_nonfinite(x, "input", nonfinite)
            out = self.layer.forward(value.to(x.dtype))
        else:
            centers = self.centers_for(xs)
            self.check_input(x, "input")
            code, scales, clamped = self.unit_code(xs, centers, self.simulating)
            spikes = total(code.counts)
            if self.simulating:
                out = self.synapses(code, scales, centers, x.dtype)
            else:
                out = self.layer.forward(self.decoded(code, scales, centers).to(x.dtype))
        return self.finish(x, out, spikes, clamped)

    def kernel_code_args(self, xs: torch.Tensor) -> Optional[ChannelCode]:
        """The arguments of the ``c`` kernel that codes ``xs`` in fast mode (:func:`~spikingjelly_mbe.kernels.
        channel_code`'s channels, inner size, ranges, centres and coder), or ``None`` where fast mode's ``c``
        path does not take ``xs`` (simulating, calibrating, beyond the kernels' codes, another backend)."""
        if self.simulating or self.calibrating or self.channel_ranges is None or not xs.numel() \
                or not self.kernel_coded or not kernels.usable(xs):
            return None
        channels, inner, ranges = channel_layout(self.channel_ranges, xs, self.channel_dim)
        centres = None if self.centers_for(xs) is None else self.channel_centers
        return channels, inner, ranges, centres, self.coder.kernel_params(xs.dtype, True)

    def unit_code(self, xs: torch.Tensor, centers: Optional[torch.Tensor], simulating: bool,
                  ) -> Tuple[SpikeCode, torch.Tensor, Count]:
        """The code of ``(x - c) / A_k`` (the input of each channel's unit-range neuron, gain ``1 / A_k``),
        the ranges ``A_k`` shaped like ``x`` and the clamp count."""
        if centers is not None:
            xs = xs - centers
        scales = along(self.channel_ranges, xs, self.channel_dim)
        code, clamped = self.coder.encode(finite(xs / scales), simulating)
        return code, scales, clamped

    @staticmethod
    def decoded(code: SpikeCode, scales: torch.Tensor, centers: Optional[torch.Tensor]) -> torch.Tensor:
        """``x_hat = c + A_k code((x - c) / A_k)``."""
        value = code.value * scales
        return value if centers is None else value + centers

    def finish(self, x: torch.Tensor, out: torch.Tensor, spikes: Count, clamped: Count,
               sops: Optional[Count] = None) -> torch.Tensor:
        """Subtract the rounding bias (with ``bias_correction``); count the forward's spikes, SOPs
        (``spikes x fan-out`` unless given), MACs and clamps; ``out`` in ``x``'s dtype."""
        if self.rounding_bias is not None:
            out = out - along(self.rounding_bias, out, self.channel_dim)
        macs = flops.weight_layer(self.layer, out)
        self.note_clamped(clamped, f"inputs {BEYOND_SHIFT}")
        if sops is None:
            sops = spikes * (macs // x.numel() if x.numel() else 0)
        self.record(spikes=spikes, neurons=x.numel(), sops=sops, ann_flops=macs)
        return out.to(x.dtype)

    def by_triton(self, x: torch.Tensor) -> torch.Tensor:
        """Fast mode with the decoded input ``x_hat = c + code(x - c)`` from one Triton kernel
        (:func:`~spikingjelly_mbe.kernels.triton_ops.code`: each channel's center, range and overflow
        shift; spikes, clamps and, for a layer on the last dimension, SOPs counted on the device);
        the same bits as the eager path."""
        _, inner, scale = channel_layout(self.channel_ranges, x, self.channel_dim)
        center = None if self.centers_for(x) is None else self.channel_centers.float()
        linear = self.channel_dim == -1  # nn.Linear, Conv1D: each input element drives weight.numel() / K MACs
        decoded, _, stats, _ = kernels.load_triton().code(
            x, scale, center, inner, list(self.coder.kernel_params(torch.float32, True)), self.coder.A, True, False,
            fanout=self.layer.weight.numel() // x.shape[-1] if linear else 0)
        self.counted_nonfinite(x, "input", stats[2])
        return self.finish(x, self.layer.forward(decoded.to(x.dtype)), stats[0], stats[1], stats[3] if linear else None)

    def centers_for(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The channel centers shaped to broadcast against ``x``, or ``None`` (no centers, or ``x``
        with another channel count than calibration saw: coded uncentered, its range the largest)."""
        if self.channel_centers is None or x.dim() == 0 or x.shape[self.channel_dim] != self.channel_centers.numel():
            return None
        return along(self.channel_centers, x, self.channel_dim)

    def synapses(self, code: SpikeCode, scales: torch.Tensor, centers: Optional[torch.Tensor],
                 dtype: torch.dtype) -> torch.Tensor:
        """``sum_t (layer(A s[t]) - layer(0)) d[t] + layer(c)``: the layer, in the input's ``dtype``, on
        each spike plane (channel ``k`` weighted by ``A_k``), times the step's intensity, and the
        centers' constant (simulate mode)."""
        planes = (code.spikes * scales[..., None]).movedim(-1, 0).to(dtype)  # [T, ...]
        rest = self.layer.forward(torch.zeros_like(planes[0]))
        out = torch.zeros_like(rest)
        for d, s in zip(code.weights.to(dtype), planes):
            out += d * (self.layer.forward(s) - rest)
        base = rest if centers is None else self.layer.forward(centers.expand_as(planes[0]).to(dtype))
        return out + base

    def extra_repr(self) -> str:
        return (f"T={self.T}, ranges={self.ranges}, code={self.code!r}, budget={self.budget}, "
                f"centered={self.channel_centers is not None if not self.calibrating else self.centered}, "
                f"bias_correction={self.bias_correction}, "
                f"calibrating={self.calibrating}, " + super().extra_repr())
