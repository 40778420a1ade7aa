"""ECMT's Multi-Threshold neurons in front of weight layers and matrix products, with thresholds
calibrated from data (Huang et al., ACM MM 2024; MT neuron Fig. 3, Parallel Parameter
normalisation Fig. 4).

Calibration follows the project's protocol (:mod:`spikingjelly_mbe.ops.products`): a module built without thresholds
starts ``calibrating`` (forwards compute in float and record the operands); ``finish_calibration``
fixes the base thresholds from the recorded data and returns them as a flat tuple
``(lambda_p, lambda_n, ...)`` (one pair per MT neuron), which ``set_ranges`` accepts back. ECMT's
rule: ``lambda_p`` is the ``percentile`` of the signed input and ``lambda_n`` minus its
``100 - percentile``, each averaged over the calibration batches.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..ops import flops
from ..ops.base import DEFAULT_MODE, CalibratedOp
from ..ops.layers import check_weight_layer
from ..ops.observer import SAMPLES_PER_BATCH
from .neuron import MTNode

log = logging.getLogger("spikingjelly_mbe.ops")
THRESHOLDS = 8  # MT thresholds per sign (ECMT's n)
PERCENTILE = 90.0  # of the calibration inputs, where the base thresholds sit (the paper uses 99)


def check_percentile(percentile: float) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < percentile < 100.0:
        raise ValueError(f"percentile must lie in (50, 100) (the ECMT paper uses 99), got {percentile!r}")
    return float(percentile)


class ThresholdObserver:
    """Keeps a strided (deterministic) subsample of the signed input of every calibration batch."""

    def __init__(self) -> None:
        self.batches: List[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        values = x.detach().flatten()
        if values.numel():
            stride = max(1, values.numel() // SAMPLES_PER_BATCH)
            self.batches.append(values[::stride].to(device="cpu", dtype=torch.float64))

    def thresholds(self, percentile: float, name: str) -> Tuple[float, float]:
        """``(lambda_p, lambda_n)``: the batch-averaged ``percentile`` and minus the batch-averaged
        ``100 - percentile`` of the signed input. A side whose quantile is not beyond zero (the input
        rarely takes that sign) borrows the other side's threshold; an input that was always zero
        gets 1 (it never fires). Both fallbacks are logged."""
        if not self.batches:
            raise RuntimeError(f"{name}: no calibration data was observed")
        q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=torch.float64)
        pos, neg = torch.stack([torch.quantile(b, q) for b in self.batches]).mean(0).tolist()
        neg = -neg
        if pos > 0 and neg > 0:
            return pos, neg
        peak = max(float(b.abs().max()) for b in self.batches)
        fallback = max(pos, neg) if max(pos, neg) > 0 else (peak if peak > 0 else 1.0)
        log.warning("%s: the %g%% and %g%% quantiles of the input (%g, %g) do not straddle zero; threshold %g "
                    "used for the side without one", name, percentile, 100 - percentile, pos, -neg, fallback)
        return (pos if pos > 0 else fallback), (neg if neg > 0 else fallback)


def _check_thresholds(values: Sequence[float], count: int) -> Tuple[float, ...]:
    values = tuple(values)
    if len(values) != 2 * count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"ranges must be {2 * count} positive finite numbers (lambda_p, lambda_n per MT neuron), "
                         f"got {values!r}")
    return tuple(float(v) for v in values)


class MTCodedOp(CalibratedOp):
    """Base of the operators whose ``operands`` inputs pass through MT neurons (``n`` thresholds per
    sign). ``thresholds`` (flat ``(lambda_p, lambda_n)`` per neuron) skips calibration.
    Subclasses keep a step counter ``steps`` (a memory) for charging ``ann_flops`` once per run."""

    settings_names = ()  # the thresholds are buffers of the MT neurons

    def __init__(self, operands: int, n: int, percentile: float, thresholds: Optional[Sequence[float]],
                 mode: str) -> None:
        super().__init__(mode)
        self.percentile = check_percentile(percentile)
        self.neurons = nn.ModuleList(MTNode(n) for _ in range(operands))
        self.observers = [ThresholdObserver() for _ in range(operands)]
        self.register_memory("steps", 0)
        self.calibrating = thresholds is None
        if thresholds is not None:
            self.set_ranges(thresholds)

    @property
    def ranges(self) -> Optional[Tuple[float, ...]]:
        """The flat base thresholds ``(lambda_p, lambda_n, ...)``, or ``None`` before calibration."""
        if not all(node.ready for node in self.neurons):
            return None
        return tuple(v for node in self.neurons for v in node.thresholds)

    def set_ranges(self, ranges: Sequence[float]) -> None:
        """Fix the base thresholds (flat ``(lambda_p, lambda_n)`` per MT neuron) and stop calibrating."""
        values = _check_thresholds(ranges, len(self.neurons))
        for i, node in enumerate(self.neurons):
            node.set_thresholds(values[2 * i], values[2 * i + 1])
        self.calibrating = False

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float, ...]:
        """Thresholds from the observed inputs at ``percentile`` (``None``: this operator's own); returns them flat, as :meth:`set_ranges` takes them."""
        if not self.observers[0].batches:
            raise RuntimeError(f"{type(self).__name__}: finish_calibration() before any calibration forward; run "
                               "a few batches while calibrating, or call set_ranges((lambda_p, lambda_n, ...))")
        p = self.percentile if percentile is None else check_percentile(percentile)
        name = type(self).__name__
        self.set_ranges(tuple(v for o in self.observers for v in o.thresholds(p, name)))
        self.observers = [ThresholdObserver() for _ in self.neurons]
        return self.ranges

    def observe(self, *inputs: torch.Tensor) -> None:
        for i, (observer, x) in enumerate(zip(self.observers, inputs)):
            self.check_input(x, f"operand {i}")
            observer.observe(x)

    def require_thresholds(self) -> None:
        if self.ranges is None:
            raise RuntimeError(f"{type(self).__name__} has no MT thresholds: run calibration forwards while "
                               "op.calibrating is True and then op.finish_calibration(), or call "
                               "op.set_ranges((lambda_p, lambda_n, ...))")

    def code(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """One step of MT neuron ``i`` on ``x``: its signed output ``sum_k theta_k s_k``; counts its spikes."""
        node = self.neurons[i]
        out = node(x)
        self.record(spikes=node.last_spike_count, neurons=x.numel())
        self.note_clamped(node.last_saturated, f"saturated MT neurons of operand {i} (input beyond "
                                               f"{2 ** (node.n - 1)} x the base threshold)")
        return out

    def extra_repr(self) -> str:
        return (f"n={self.neurons[0].n}, percentile={self.percentile}, ranges={self.ranges}, "
                f"calibrating={self.calibrating}, " + super().extra_repr())


class MTLinearInput(MTCodedOp):
    """A weight layer (``nn.Linear``, ``nn.Conv2d``, GPT-2's ``Conv1D``) driven by an MT neuron:
    at each step the layer sees the neuron's output (Parallel Parameter normalisation, Fig. 4).

    The layer is called through ``layer.forward`` (no module hooks), since this operator charges
    it itself: ``spikes`` are the MT spikes, ``sops`` ``spikes x fan-out`` (one accumulate per spike
    and outgoing synapse; the threshold scaling lives in the 2n weight copies), ``ann_flops`` the
    layer's MACs once per run (at step 1). The computation has one form, so ``mode`` changes nothing.
    """

    drives_weight_layer = True

    def __init__(self, layer: nn.Module, n: int = THRESHOLDS, percentile: float = PERCENTILE,
                 thresholds: Optional[Sequence[float]] = None, mode: str = DEFAULT_MODE) -> None:
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise TypeError("MTLinearInput wraps a weight layer (nn.Linear, nn.Conv2d, Conv1D), got "
                            f"{type(layer).__name__}")
        super().__init__(1, n, percentile, thresholds, mode)
        self.layer = layer

    @classmethod
    def from_float(cls, float_op: nn.Module, **options: object) -> "MTLinearInput":
        """``float_op`` (a weight layer, as :meth:`~spikingjelly_mbe.ops.SpikingWeightInput.from_float`
        takes; weights untouched) driven by an MT neuron. ``options``: ``n``, ``percentile``,
        ``thresholds`` (else calibrated), ``mode``."""
        return cls(check_weight_layer(cls, float_op), **options)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight (model code that reads ``layer.weight`` keeps working)."""
        return self.layer.weight

    @property
    def idle(self) -> bool:
        """Calibrating and never called: its parent reads the weights itself, so conversion puts the layer back."""
        return self.calibrating and not self.observers[0].batches

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.layer.bias

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if self.calibrating:
            self.observe(x)
            return self.layer.forward(x)
        self.require_thresholds()
        s = self.code(0, x)
        out = self.layer.forward(s)
        macs = flops.weight_layer(self.layer, out)
        self.steps += 1
        spikes = self.neurons[0].last_spike_count
        self.record(sops=spikes * (macs // x.numel() if x.numel() else 0), ann_flops=macs if self.steps == 1 else 0)
        return out
