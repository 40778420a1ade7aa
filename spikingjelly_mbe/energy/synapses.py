"""Synaptic operations of the weight layers a conversion keeps (:mod:`~spikingjelly_mbe.ops.layers`:
``nn.Linear``, GPT-2's ``Conv1D``, convolutions), counted with forward hooks.

The converted model evaluates those layers on the decoded spike sums (the same numbers, Eq. 12 with
one dense operand), so their spikes are not materialised. :class:`SynapseCounter` charges each
layer the spikes its input carries as MBE_Id trains (Eq. 9: sign-magnitude, ``T`` steps, range
``max |x|`` of that call, in the model's digit code: the count is the code's count of the quantised
magnitude, :data:`~spikingjelly_mbe.ops.coding.CODES`) and one synaptic
accumulate per spike and outgoing synapse: ``SOPs = spikes x fan-out`` with ``fan-out = MACs /
input elements`` (``out_features`` for a linear layer, ``out_channels`` for a patch convolution).
The ANN side is the layer's MACs; :func:`ann_macs` measures them with SpikingJelly's own
``op_counter.MACCounter`` so the two counts can be checked against each other.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter

from ..ops import flops
from ..ops.base import working_dtype
from ..ops.layers import is_weight_layer
from ..ops.digits import Steps, check_T, steps_at
from ..ops.coding import (DEFAULT_CODE, MAX_RANGE, MIN_RANGE, IdentityCoder, check_code, check_steps, code_levels,
                          equivalent_digits, total)
from ..ops.stats import OpStats

def input_spikes(x: torch.Tensor, T: int, code: str = DEFAULT_CODE) -> int:
    """Spikes of ``x`` coded by a sign-magnitude MBE_Id over ``[-max|x|, max|x|]`` (Eq. 9) in the
    digit ``code``; exact zeros fire none."""
    peak = float(x.detach().abs().max()) if x.numel() else 0.0
    if peak == 0.0:
        return 0
    coder = IdentityCoder(T, min(max(peak, MIN_RANGE), MAX_RANGE), code)
    return int(total(coder.count(coder.quantize(x.detach().to(working_dtype(x, equivalent_digits(code, T)))), T)))


def model_code(model: nn.Module) -> str:
    """The digit code of ``model``'s weight layers' input spikes: that of its spike-driven weight layers
    (their ``operand_code``), else of every :class:`IdentityCoder` in it, else
    :data:`~spikingjelly_mbe.ops.coding.DEFAULT_CODE`."""
    inputs = {m.coder.code for m in model.modules()
              if getattr(m, "drives_weight_layer", False) and isinstance(getattr(m, "coder", None), IdentityCoder)}
    codes = sorted(inputs or {m.code for m in model.modules() if isinstance(m, IdentityCoder)})
    if len(codes) > 1:
        raise ValueError(f"the model's operands use several digit codes {codes}; pass code= explicitly")
    return codes[0] if codes else DEFAULT_CODE


class SynapseCounter:
    """Context manager counting, per weight layer of ``model``, input spikes, SOPs and ANN MACs.

    ``T``: the digits of the inputs' trains, or a per-operator mapping (:mod:`~spikingjelly_mbe.ops.digits`:
    each layer at its ``weight_input`` digits); ``code``: the digit code of the inputs' trains; ``None``
    takes the code of the model's own spiking operands (:func:`model_code`).

    ``stats`` maps module paths to :class:`OpStats` (``spikes`` and ``neurons``: the input's
    spikes and elements; ``sops``: spikes x fan-out; ``ann_flops``: MACs), accumulated over every
    forward run inside the ``with`` block.
    """

    def __init__(self, model: nn.Module, T: Steps, code: Optional[str] = None) -> None:
        self.T = check_T(T) if isinstance(T, Mapping) else check_steps(T)
        self.code = model_code(model) if code is None else check_code(code)
        self.layers = {path: m for path, m in model.named_modules() if is_weight_layer(m)}
        self.steps = {path: steps_at(self.T, "weight_input", path) for path in self.layers}
        for steps in set(self.steps.values()):
            code_levels(self.code, steps)
        self.stats: Dict[str, OpStats] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, path: str) -> Callable:
        def count(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x = args[0]
            macs = flops.weight_layer(layer, out)
            with torch._C.DisableTorchFunction():  # measuring, not the model's computation: never intercepted
                spikes = input_spikes(x, self.steps[path], self.code)
            fan_out = macs // x.numel() if x.numel() else 0
            self.stats[path] = self.stats.get(path, OpStats()) + OpStats(
                spikes=spikes, neurons=x.numel(), sops=spikes * fan_out, ann_flops=macs)
        return count

    def __enter__(self) -> "SynapseCounter":
        self._handles = [m.register_forward_hook(self._hook(path)) for path, m in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def ann_macs(run: Callable[[], object]) -> int:
    """MACs of the matrix products and convolutions executed by ``run()`` (e.g. one ANN forward),
    measured by SpikingJelly's ``MACCounter``."""
    counter = MACCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        run()
    return int(counter.get_total())
