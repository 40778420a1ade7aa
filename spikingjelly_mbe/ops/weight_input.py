"""A weight layer driven by spikes: its input coded by a sign-magnitude MBE_Id neuron (Eq. 9), each
spike accumulating its weight column (Eq. 12 with one dense operand)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import kernels
from . import flops
from .base import SpikingOp, working_dtype
from .coding import DEFAULT_CODE, FLOAT32_MAX_T, IdentityCoder, SpikeCode, check_code, check_steps, total
from .observer import RangeObserver
from .precision import DEFAULT_BUDGET, ChannelPeaks, along, budget_step, channel_ranges, check_budget


class SpikingWeightInput(SpikingOp):
    """``layer`` (``nn.Linear``, GPT-2's ``Conv1D``, a convolution) on the MBE_Id code of its input.

    Every input channel ``k`` is coded like a product's operand (sign-magnitude, ``T`` digits of
    its own range ``A_k`` in the digit ``code``; ``|x| > A_k`` clamped and counted), and every spike
    adds ``d_k[t] W[:, k]`` to the outputs it reaches: ``layer(x_hat) = sum_t W (d[t] s[t]) + b``
    (Eq. 12, one operand dense; ``d_k[t] = A_k 2^(T-1-t) / (2^T - 1)``, the MBE_Id weight of channel
    ``k``). ``simulate`` runs the layer on every spike plane and sums them so; fast mode runs it
    once on the decoded input ``x_hat`` (the same sum regrouped). SOPs: ``spikes x fan-out`` (one
    accumulate per spike and outgoing synapse); ``ann_flops``: the layer's MACs.

    With ``A=None`` the operator starts ``calibrating`` (the float layer, ``|x|`` observed), like the
    products: calibration sets the layer's range ``A`` to ``max |x|`` (or a percentile), each
    channel's to ``A`` times its share ``4 max_k |x| / max |x|`` (:class:`~.precision.ChannelPeaks`:
    two digits of room over the few calibration values a channel sees), so an outlier channel does
    not coarsen the others, and, under a ``budget`` (:mod:`.precision`),
    the rounding step to ``budget`` of the input's RMS, widening a channel's range to ``step (2^T - 1)``
    where that is larger. The layer is called through ``layer.forward`` (no module hooks: this
    operator charges it itself).
    """

    operands = 1  # ranges (A,)

    def __init__(self, layer: nn.Module, T: int = 16, mode: str = "fast", A: Optional[float] = None,
                 code: str = DEFAULT_CODE, budget: Optional[float] = DEFAULT_BUDGET) -> None:
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise TypeError(f"SpikingWeightInput wraps a weight layer (nn.Linear, Conv1D, a convolution), got "
                            f"{type(layer).__name__}")
        super().__init__(mode)
        self.layer = layer
        self.T, self.code, self.budget = check_steps(T), check_code(code), check_budget(budget)
        self.channel_dim = 1 if hasattr(layer, "in_channels") else -1
        self.step: Optional[float] = None  # the budget's rounding step, set by calibration
        self.shares: Optional[torch.Tensor] = None  # each channel's share of the range, set by calibration
        self.coder = IdentityCoder(self.T, 1.0, self.code)  # on x / A_k
        self.register_buffer("channel_ranges", None)
        self.observer, self.peaks = RangeObserver(), ChannelPeaks(self.channel_dim)
        self.calibrating = A is None
        if A is not None:
            self.set_ranges((A,))

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
        self.channel_ranges = channel_ranges(float(ranges[0]), self.shares, self.step, self.T)
        self.calibrating = False

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float]:
        """The layer's ``A`` from the observed ``max |x|`` (or its ``percentile``), the channels'
        shares and the budget's step from the observed RMS; returns the observed ``(A,)``."""
        if not self.observer.samples:
            raise RuntimeError("SpikingWeightInput: finish_calibration() before any calibration forward; run a "
                               "few batches while calibrating, or call set_ranges((A,))")
        if self.budget is not None:
            self.step = budget_step(self.observer.rms(), self.budget)
        self.shares = self.peaks.shares()
        observed = (self.observer.range(percentile),)
        self.set_ranges(observed)
        self.observer, self.peaks = RangeObserver(), ChannelPeaks(self.channel_dim)
        return observed

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if self.calibrating:
            self.check_input(x, "input")
            self.observer.observe(x)
            self.peaks.observe(x)
            return self.layer.forward(x)
        if self.channel_ranges is None:
            raise RuntimeError("SpikingWeightInput has no input range: calibrate it or call set_ranges((A,))")
        xs = x.to(working_dtype(x, self.T))
        scales = along(self.channel_ranges, xs, self.channel_dim)
        unit = xs / scales  # the input of the unit-range neuron of each channel (gain 1 / A_k)
        if not self.simulating and x.numel() and self.T <= FLOAT32_MAX_T and kernels.usable(unit):
            code, (spikes, clamped, nonfinite) = self.coder.fused(unit)
            if nonfinite:
                self.check_input(x, "input")  # raises, naming the count
        else:
            code, clamped = self.coder.encode(unit, self.simulating, self.check_input(x, "input"))
            spikes = total(code.counts)
        out = self.synapses(code, scales, x.dtype) if self.simulating else \
            self.layer.forward((code.value * scales).to(x.dtype))
        macs = flops.weight_layer(self.layer, out)
        self.note_clamped(clamped, "inputs beyond their channel's range")
        self.record(spikes=spikes, neurons=x.numel(), sops=spikes * (macs // x.numel() if x.numel() else 0),
                    ann_flops=macs)
        return out.to(x.dtype)

    def synapses(self, code: SpikeCode, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``sum_t (layer(A s[t]) - layer(0)) d[t] + layer(0)``: the layer, in the input's ``dtype``, on
        each spike plane (channel ``k`` weighted by ``A_k``), times the step's intensity (simulate mode)."""
        planes = (code.spikes * scales[..., None]).movedim(-1, 0).to(dtype)  # [T, ...]
        rest = self.layer.forward(torch.zeros_like(planes[0]))
        out = torch.zeros_like(rest)
        for d, s in zip(code.weights.to(dtype), planes):
            out += d * (self.layer.forward(s) - rest)
        return out + rest

    def extra_repr(self) -> str:
        return (f"T={self.T}, ranges={self.ranges}, code={self.code!r}, budget={self.budget}, "
                f"calibrating={self.calibrating}, " + super().extra_repr())
