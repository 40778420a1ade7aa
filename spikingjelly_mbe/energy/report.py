"""Energy report of a converted model (paper Eq. 14): per operator and per Transformer block, under
two conventions, at two precisions.

``E_SNN / E_ANN = (events E_AC + float_ops E_MAC) / (ops E_MAC)``. The ANN side charges one ``E_MAC`` per
multiply-accumulate of the weight layers and matrix products and per FLOP of the other replaced
operations (conventions in :mod:`spikingjelly_mbe.ops.flops`). What the SNN side charges one
``E_AC`` for depends on the convention (:data:`CONVENTIONS`):

* ``'strict'``: every synaptic event, i.e. the operators' ``OpStats.sops``: one per spike whose
  weight is accumulated, one per spike coincidence ``S_ij`` of a product of two spike trains
  (Eq. 12) and, for the weight layers driven by spikes, ``spikes x fan-out``
  (:class:`~.synapses.SynapseCounter`);
* ``'paper'``: as the paper applies Eq. 14, each replaced operator's own spikes against that
  operator's FLOPs (``OpStats.spikes``; a product is charged its operands' spikes, not their
  coincidences). Weight layers, when included, are charged ``spikes x fan-out`` as in the strict
  convention (their spikes alone would not be synaptic operations).

Operations a method keeps in float (ECMT's expectation compensation: ``OpStats.float_flops``) are
charged one ``E_MAC`` each on the SNN side, in both conventions; the MBE operators have none.

The per-operation energies are SpikingJelly's own (``op_counter.simple_energy.
SimpleEnergyCostConfig``, Horowitz, ISSCC 2014, 45 nm): ``'fp32'`` ``E_MAC = 4.6 pJ`` (3.7 pJ
multiply + 0.9 pJ add), ``E_AC = 0.9 pJ``; ``'int8'`` ``E_MAC = 0.23 pJ`` (0.2 pJ 8-bit multiply
+ 0.03 pJ 8-bit add), ``E_AC = 0.03 pJ``: the int8 ANN against an SNN accumulating at the same
precision. Embedding lookups, residual additions and the float post-processing of the outputs are
charged to neither side.
"""
from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import torch.nn as nn
from spikingjelly.activation_based.op_counter.simple_energy import SimpleEnergyCostConfig

from ..ops.base import SpikingOp
from ..ops.digits import Steps, steps_of, type_of
from ..ops.layers import is_weight_layer
from ..ops.stats import OpStats, collect_stats
from .synapses import SynapseCounter

COSTS: Dict[str, SimpleEnergyCostConfig] = {"fp32": SimpleEnergyCostConfig.fp32(),
                                            "int8": SimpleEnergyCostConfig.int8()}
E_MAC, E_AC = COSTS["fp32"].e_mac_pj, COSTS["fp32"].e_ac_pj  # pJ, Eq. 14
CONVENTIONS = ("strict", "paper")
# the ratio columns of every report row: (column, convention, precision)
RATIO_COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("energy_strict", "strict", "fp32"), ("energy_paper", "paper", "fp32"), ("energy_strict_int8", "strict", "int8"))
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)(?:\.|$)")
Row = Dict[str, Union[str, int, float]]


def check_choice(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def snn_events(stats: OpStats, convention: str = "strict", weight_layer: bool = False) -> int:
    """Events charged ``E_AC`` under ``convention`` (see the module docstring)."""
    check_choice("convention", convention, CONVENTIONS)
    return stats.sops if convention == "strict" or weight_layer else stats.spikes


def cost_ratio(events: int, ops: int, precision: str = "fp32", float_ops: int = 0) -> float:
    """``(events E_AC + float_ops E_MAC) / (ops E_MAC)`` (Eq. 14, with the float operations a
    method keeps charged as the ANN's) with SpikingJelly's costs at ``precision``; 0 when nothing
    ran."""
    cost = COSTS[check_choice("precision", precision, COSTS)]
    return (events * cost.e_ac_pj + float_ops * cost.e_mac_pj) / (ops * cost.e_mac_pj) if ops else 0.0


def energy_ratio(counts: OpStats, convention: str = "strict", precision: str = "fp32") -> float:
    """Eq. 14 for one operator's (or a sum of operators') counts, float operations included; 0 when
    nothing ran."""
    return cost_ratio(snn_events(counts, convention), counts.ann_flops, precision, counts.float_flops)


def block_of(path: str) -> str:
    """``'block 3'`` for a module inside the fourth Transformer block, else ``'outside blocks'``."""
    found = BLOCK_PATTERN.search(path)
    return f"block {int(found.group(1))}" if found else "outside blocks"


@dataclass
class EnergyMeter:
    """Context manager accumulating every operator's and weight layer's counts over the forwards of a
    converted ``model`` run inside it (the model resets its neurons before each forward, so the
    operator counts are read after each one).

    ``T``: the ``T`` the model was converted with. An ``int``: every operator must run at it. A
    per-operator mapping (:mod:`~spikingjelly_mbe.ops.digits`): every operator counts its spikes at
    its own ``T``; either way a weight layer no operator drives is charged its input's spikes at
    ``T``'s ``weight_input`` digits for its path (:class:`~.synapses.SynapseCounter`).

    ``counts`` maps module paths to :class:`OpStats`; ``kinds`` maps them to the module's class name.
    """

    model: nn.Module
    T: Steps
    counts: Dict[str, OpStats] = field(default_factory=dict)
    kinds: Dict[str, str] = field(default_factory=dict)
    weight_layers: Set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._synapses = SynapseCounter(self.model, self.T)
        self._handle = None
        operators = [(path, m) for path, m in self.model.named_modules() if callable(getattr(m, "op_stats", None))]
        if not operators:
            raise ValueError(f"EnergyMeter: model ({type(self.model).__name__}) has no spiking operators, so there is "
                             "no spiking energy to measure; convert it first: spikingjelly_mbe.convert(model, T=...)")
        if isinstance(self.T, Mapping):
            return
        # operators stepped from outside (ECMT's, run T times by TimeStepped) have no T of their own
        steps = {path: getattr(m, "T", self.T) for path, m in operators}
        other = sorted({t for t in steps.values() if t != self.T}, key=str)
        if other:
            raise ValueError(f"EnergyMeter: T={self.T}, but the model's spiking operators run at T={other} "
                             f"(e.g. {next(p for p, t in steps.items() if t != self.T)!r}); pass the T the model "
                             "was converted with")

    def _after_forward(self, *_: object) -> None:
        for path, stats in collect_stats(self.model).items():
            self._add(path, stats)

    def _add(self, path: str, stats: OpStats) -> None:
        self.counts[path] = self.counts.get(path, OpStats()) + stats
        module = self.model.get_submodule(path)
        self.kinds[path] = type(module).__name__
        # weight layers: those SynapseCounter meters, and the operators driving one, which meter themselves
        if is_weight_layer(module) or isinstance(module, SpikingOp) and module.drives_weight_layer:
            self.weight_layers.add(path)

    def __enter__(self) -> "EnergyMeter":
        self._synapses.__enter__()
        self._handle = self.model.register_forward_hook(self._after_forward)
        return self

    def __exit__(self, *exc: object) -> None:
        self._synapses.__exit__(*exc)
        self._handle.remove()
        for path, stats in self._synapses.stats.items():
            self._add(path, stats)
        self._synapses.stats = {}

    def is_weight_layer(self, path: str) -> bool:
        return path in self.weight_layers

    def _paths(self, weight_layers: bool) -> List[str]:
        return [p for p in self.counts if weight_layers or not self.is_weight_layer(p)]

    def total(self, weight_layers: bool = True) -> OpStats:
        """All counts; ``weight_layers=False`` keeps only the replaced operators (the paper's scope)."""
        return sum((self.counts[p] for p in self._paths(weight_layers)), OpStats())

    def charged(self, paths: Iterable[str], convention: str = "strict") -> Tuple[int, int, int]:
        """``(SNN events, ANN operations, SNN float operations)`` of ``paths`` under ``convention``
        (the argument order of :func:`cost_ratio`)."""
        events = ops = floats = 0
        for p in paths:
            events += snn_events(self.counts[p], convention, self.is_weight_layer(p))
            ops += self.counts[p].ann_flops
            floats += self.counts[p].float_flops
        return events, ops, floats

    def ratio(self, convention: str = "strict", weight_layers: bool = True, precision: str = "fp32") -> float:
        """``E_SNN / E_ANN`` (Eq. 14) of everything metered: ``convention`` ``'strict'`` (every
        synaptic event) or ``'paper'`` (each operator's spikes against its FLOPs);
        ``weight_layers=False`` keeps only the replaced operators; ``precision`` ``'fp32'`` or
        ``'int8'`` (SpikingJelly's Horowitz 2014 costs for both sides)."""
        events, ops, floats = self.charged(self._paths(weight_layers), convention)
        return cost_ratio(events, ops, precision, floats) if self.metered() else math.nan

    def metered(self) -> bool:
        """Some operation was counted; otherwise warns (no forward ran inside the meter, so there is no
        ratio: :meth:`ratio` and the ratio columns of :meth:`rows` are NaN, not 0)."""
        if any(s.ann_flops or s.sops or s.spikes for s in self.counts.values()):
            return True
        warnings.warn("EnergyMeter metered nothing: no forward of the model ran inside `with meter:`, so there is no "
                      "energy ratio (NaN); run the model inside the meter", stacklevel=3)
        return False

    def operator_type(self, path: str) -> str:
        """The operator type of a metered path (:data:`~spikingjelly_mbe.ops.digits.OPERATOR_TYPES`;
        an operator inside another has the outer one's; a weight layer the meter charges itself is
        ``'weight_input'``), else its class name (ECMT's operators)."""
        if path in self._synapses.layers:
            return "weight_input"
        ancestors = [".".join(path.split(".")[:i]) for i in range(1, path.count(".") + 2)] if path else [""]
        kinds = (type_of(self.model.get_submodule(p)) for p in ancestors)
        return next((k for k in kinds if k is not None), self.kinds[path])

    def steps(self, path: str) -> Optional[int]:
        """The ``T`` a metered path's spikes are counted at (``None``: stepped from outside, ECMT's)."""
        if path in self._synapses.layers:
            return self._synapses.steps[path]
        return steps_of(self.model.get_submodule(path))

    def mean_steps(self, paths: Iterable[str]) -> Optional[float]:
        """The mean ``T`` of ``paths`` weighted by their neuron inputs: the digits per coded value."""
        pairs = [(self.steps(p), self.counts[p].neurons) for p in paths]
        pairs = [(t, n) for t, n in pairs if t is not None]
        weight = sum(n for _, n in pairs)
        return sum(t * n for t, n in pairs) / weight if weight else None

    def rows(self, by: str) -> List[Row]:
        """One row per group: ``by='operator'`` (class name), ``'type'`` (operator type: activation,
        softmax, norm, ..., :meth:`operator_type`), ``'block'`` or ``'path'``, with the mean ``T``
        (:meth:`mean_steps`), firing rate, spikes, SOPs (strict events), ANN ops and the energy ratio
        of every :data:`RATIO_COLUMNS` entry; the last row is the total."""
        key = {"operator": lambda p: self.kinds[p], "type": self.operator_type, "block": block_of, "path": lambda p: p}
        check_choice("by", by, sorted(key))
        groups: Dict[str, List[str]] = defaultdict(list)
        for path in self.counts:
            groups[key[by](path)].append(path)
        groups["total"] = list(self.counts)
        metered = self.metered()
        return [self._row(by, name, paths, metered) for name, paths in groups.items()]

    def _row(self, by: str, name: str, paths: List[str], metered: bool) -> Row:
        stats = sum((self.counts[p] for p in paths), OpStats())
        mean = self.mean_steps(paths)
        row: Row = {by: name, "T": None if mean is None else round(mean, 3),
                    "firing_rate": round(stats.firing_rate, 4), "spikes": stats.spikes, "sops": stats.sops,
                    "ann_ops": stats.ann_flops, "float_ops": stats.float_flops}
        for column, convention, precision in RATIO_COLUMNS:
            events, ops, floats = self.charged(paths, convention)
            row[column] = round(cost_ratio(events, ops, precision, floats), 4) if metered else math.nan
        row["clamped"] = stats.clamped
        return row
