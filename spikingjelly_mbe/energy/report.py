"""Energy report of a converted model (paper Eq. 14): per operator and per Transformer block.

``E_SNN / E_ANN = SOPs E_AC / (ops E_MAC)`` with ``E_MAC = 4.6 pJ`` and ``E_AC = 0.9 pJ``. The ANN
side charges one ``E_MAC`` per multiply-accumulate of the weight layers and matrix products and per
FLOP of the other replaced operations (conventions in :mod:`spikingjelly_mbe.ops.flops`); the SNN
side charges one ``E_AC`` per synaptic operation: the spiking operators' own counts
(:func:`~.stats.collect_stats`) and the weight layers' ``spikes x fan-out``
(:class:`~.synapses.SynapseCounter`). Embedding lookups, residual additions and the float
post-processing of the outputs are charged to neither side.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Union

import torch.nn as nn

from .stats import OpStats, collect_stats
from .synapses import WEIGHT_LAYERS, SynapseCounter

E_MAC, E_AC = 4.6, 0.9  # pJ per multiply-accumulate (ANN) and per accumulate (SNN), Eq. 14
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)(?:\.|$)")
Row = Dict[str, Union[str, int, float]]


def energy_ratio(counts: OpStats) -> float:
    """``SOPs E_AC / (ops E_MAC)`` (Eq. 14); 0 when nothing ran."""
    return counts.sops * E_AC / (counts.ann_flops * E_MAC) if counts.ann_flops else 0.0


def block_of(path: str) -> str:
    """``'block 3'`` for a module inside the fourth Transformer block, else ``'outside blocks'``."""
    found = BLOCK_PATTERN.search(path)
    return f"block {int(found.group(1))}" if found else "outside blocks"


@dataclass
class EnergyMeter:
    """Context manager accumulating every operator's and weight layer's counts over the forwards of a
    converted ``model`` run inside it (the model resets its neurons before each forward, so the
    operator counts are read after each one).

    ``counts`` maps module paths to :class:`OpStats`; ``kinds`` maps them to the module's class name.
    """

    model: nn.Module
    T: int
    counts: Dict[str, OpStats] = field(default_factory=dict)
    kinds: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._synapses = SynapseCounter(self.model, self.T)
        self._handle = None
        steps = {path: getattr(m, "T", None) for path, m in self.model.named_modules()
                 if callable(getattr(m, "op_stats", None))}
        if not steps:
            raise ValueError(f"EnergyMeter: model ({type(self.model).__name__}) has no spiking operators, so there is "
                             "no spiking energy to measure; convert it first: spikingjelly_mbe.convert(model, T=...)")
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
        self.kinds[path] = type(self.model.get_submodule(path)).__name__

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

    def total(self, weight_layers: bool = True) -> OpStats:
        """All counts; ``weight_layers=False`` keeps only the replaced operators (the paper's scope)."""
        names = {cls.__name__ for cls in WEIGHT_LAYERS}
        return sum((c for p, c in self.counts.items() if weight_layers or self.kinds[p] not in names), OpStats())

    def rows(self, by: str) -> List[Row]:
        """One row per group: ``by='operator'`` (class name), ``'block'`` or ``'path'``, with
        firing rate, spikes, SOPs, ANN ops and energy ratio; the last row is the total."""
        key = {"operator": lambda p: self.kinds[p], "block": block_of, "path": lambda p: p}
        if by not in key:
            raise ValueError(f"by must be one of {sorted(key)}, got {by!r}")
        groups: Dict[str, OpStats] = defaultdict(OpStats)
        for path, stats in self.counts.items():
            groups[key[by](path)] += stats
        return [summary_row(by, name, stats) for name, stats in groups.items()] + [summary_row(by, "total", self.total())]


def summary_row(by: str, name: str, stats: OpStats) -> Row:
    return {by: name, "firing_rate": round(stats.firing_rate, 4), "spikes": stats.spikes, "sops": stats.sops,
            "ann_ops": stats.ann_flops, "energy_ratio": round(energy_ratio(stats), 4), "clamped": stats.clamped}
