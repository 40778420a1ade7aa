"""The channel ranges of every weight layer's input chosen for the model's output (``fisher_ranges``).

Calibration gives each input channel ``k`` of a weight layer its own range ``A_k`` (Eq. 9; its peak, and
the budget's step, :mod:`~spikingjelly_mbe.ops.precision`): every channel is coded to the same relative
precision. The model's output does not depend on every channel equally, and a channel's spikes cost
alike (each reaches the layer's fan-out). With ``g_k`` the gradient of ``<output, u>`` at channel ``k``'s
input (:func:`~.gradients.float_gradients`: the Fisher direction for logits) and ``e_k(m)``,
``s_k(m)`` the mean squared rounding error and spikes per position of channel ``k`` coded at ``m A_k``,
the output's squared error is about ``sum_k G_k e_k(m_k)`` (``G_k = sum g_k^2`` over the calibration
positions; the channels' rounding errors independent) at ``sum_k P_k F s_k(m_k)`` synaptic events
(``P_k`` positions, ``F`` the layer's fan-out per input element). Each channel takes the multiplier
``m_k`` of :data:`MULTIPLIERS` minimising ``G_k e_k + lambda P_k F s_k``; one ``lambda`` for the whole
model, found by bisection so that the model's weight inputs spend the synaptic events of the calibrated
ranges (:func:`equal_events`): the same energy, the least predicted output error, spikes moved across
channels and layers to where the output needs them.

With an ``energy_budget`` (:func:`aim_channel_ranges`), ``lambda`` is instead aimed so that the whole model's
strict ``E_SNN / E_ANN`` (Eq. 14, metered on the calibration batches) is at most the budget: the channel ranges
are then the energy knob, continuous and per channel, each channel's multiplier from :func:`aimed_multipliers`
(the widest leaves ``T / 2`` of the nominal digits over the calibrated range), one conversion instead of the
digit rungs' several (:mod:`.allocation`).

A weight layer whose input the output does not depend on through the float function (a model's first
layer, on its raw input) keeps its calibrated ranges, as does one with one range for all channels
(its channel count changed between batches).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..energy.report import E_AC, E_MAC, cost_ratio
from ..ops import flops
from ..ops.digits import Steps
from ..ops.weight_input import SpikingWeightInput, host_values
from .calibration import Batch, metered_pass
from .gradients import float_gradients

log = logging.getLogger("spikingjelly_mbe.conversion")

# each channel's range may move to its calibrated range times one of these (half-octave steps, 1/4 to 4: wider, the
# first-order estimate drops channels, DINOv2 at T=4 over three draws of u: 84.1-87.0 %, within 1/4..4 85.7-86.1 %)
MULTIPLIERS: Tuple[float, ...] = tuple(2.0 ** (j / 2) for j in range(-4, 5))
SAMPLED_ROWS = 1024  # input positions per layer and calibration batch whose codes measure e_k and s_k
DIRECTIONS = 4  # draws of the output direction u per batch (each one backward pass): G_k's noise
BISECTIONS = 100  # halvings of log(lambda) between 2^-64 and 2^64 times its natural scale
AIM_ROUNDS = 4  # metered choices of lambda aiming at an energy_budget (each one pass over the calibration batches)
AIM_CLOSE = 0.01  # a choice this close below the energy_budget (relative) is kept at once


def aimed_multipliers(T: int) -> Tuple[float, ...]:
    """The multipliers a channel may take when the ranges aim at an energy: :data:`MULTIPLIERS` widened in
    half octaves up to ``2^(T/2)`` (a code of ``T`` digits keeps at least ``T / 2`` of them over the
    calibrated range, as the digit allocation's lowest rung, :data:`~.allocation.LOWEST_RUNG`)."""
    return tuple(2.0 ** (j / 2) for j in range(-4, max(4, T) + 1))


@dataclass
class ChannelTable:
    """One coded input's channels, read by ``modules`` (one weight layer, or the layers that code one tensor
    alike, which share its neurons and so its ranges): ``fisher`` ``G_k`` (``[C]``, the input's), and at each
    of :data:`MULTIPLIERS` their Fisher-weighted squared error ``G_k e_k`` and their synaptic events
    ``P_k F s_k`` (``F`` the readers' fan-outs summed; ``[C, len(MULTIPLIERS)]``, float64 on the CPU)."""

    modules: List[SpikingWeightInput]
    fisher: torch.Tensor
    error: torch.Tensor
    events: torch.Tensor

    def choice(self, lam: float) -> torch.Tensor:
        """Each channel's multiplier index minimising ``G_k e_k + lambda P_k F s_k``."""
        return (self.error + lam * self.events).argmin(1)

    def at(self, choice: torch.Tensor) -> Tuple[float, float]:
        """``(weighted error, events)`` of ``choice`` (an index per channel)."""
        index = choice[:, None]
        return float(self.error.gather(1, index).sum()), float(self.events.gather(1, index).sum())


@dataclass(frozen=True)
class ChannelAllocation:
    """What :func:`allocate_channel_ranges` did: how many weight inputs and channels it chose ranges
    for, how many of those moved, and the predicted output error and synaptic events of the weight
    inputs against the calibrated ranges'."""

    layers: int
    channels: int
    moved: int
    error_ratio: float
    events_ratio: float
    energy_budget: Optional[float] = None  # what the ranges aimed at (aim_channel_ranges)
    energy: Optional[float] = None  # the whole model's strict E_SNN / E_ANN they reach on the calibration batches

    @property
    def reached(self) -> bool:
        """Whether the ranges meet their ``energy_budget`` (always, without one)."""
        return self.energy_budget is None or self.energy <= self.energy_budget

    def __str__(self) -> str:
        aimed = "" if self.energy_budget is None else (
            f"; aimed at energy_budget={self.energy_budget:g}: strict E_SNN/E_ANN {self.energy:.4f} on the "
            f"calibration batches")
        return (f"chosen for the output (fisher_ranges) on {self.layers} weight input(s): {self.moved} of "
                f"{self.channels} channel(s) moved, predicted output error x{self.error_ratio:.3f} at "
                f"x{self.events_ratio:.3f} the synaptic events of the calibrated ranges{aimed}")


def channel_rows(module: SpikingWeightInput, x: torch.Tensor) -> torch.Tensor:
    """``x`` as rows ``[positions, channels]`` along the layer's channel dimension."""
    return x.movedim(module.channel_dim % x.dim(), -1).reshape(-1, x.shape[module.channel_dim])


def channel_tables(snn: nn.Module, batches: Sequence[Batch], seed: int = 0,
                   multipliers: Sequence[float] = MULTIPLIERS) -> List[ChannelTable]:
    """:class:`ChannelTable` of every calibrated per-channel weight input that the output depends on, from
    :data:`DIRECTIONS` backward passes per batch (:func:`~.gradients.float_gradients`) and the codes of up to
    :data:`SAMPLED_ROWS` of its input positions per batch at each of ``multipliers``."""
    modules = {p: m for p, m in snn.named_modules() if isinstance(m, SpikingWeightInput)
               and not m.calibrating and m.channel_ranges is not None and m.channel_ranges.numel() > 1}
    if not modules:
        return []
    fan_out: Dict[str, float] = {}

    def count(path: str):
        def hook(module: SpikingWeightInput, args: tuple, output: torch.Tensor) -> None:
            if path not in fan_out and args[0].numel():
                fan_out[path] = flops.weight_layer(module.layer, output) / args[0].numel()
        return hook
    handles = [m.register_forward_hook(count(p)) for p, m in modules.items()]
    generator = torch.Generator().manual_seed(seed)
    sums: Dict[str, List] = {}  # leader path -> [G, sum of e at each multiplier, sum of s, sampled rows, positions]
    readers: Dict[str, List[str]] = {}  # leader path -> the layers coding its very input with its code
    try:
        for found in float_gradients(snn, modules, batches, True, seed, DIRECTIONS):
            leaders: Dict[Tuple, str] = {}
            for path, (x, squares) in found.items():
                module = modules[path]
                rows = channel_rows(module, x)
                if rows.shape[1] != module.channel_ranges.numel() or any(path in r[1:] for r in readers.values()):
                    continue
                leader = leaders.setdefault(same_code(module, x), path)
                if leader != path:  # another layer reads this input with this code: one population of neurons
                    if path not in readers.setdefault(leader, [leader]):
                        readers[leader].append(path)
                    continue
                picked = torch.randperm(rows.shape[0], generator=generator)[:SAMPLED_ROWS].to(rows.device)
                error, spikes = module.channel_rates(rows[picked], multipliers)
                fisher = channel_rows(module, squares).sum(0) / DIRECTIONS  # the input's: every reader's share
                entry = sums.setdefault(path, [0.0, 0.0, 0.0, 0, 0])
                for i, value in enumerate((fisher, error * len(picked), spikes * len(picked), len(picked),
                                           rows.shape[0])):
                    entry[i] = entry[i] + value
    finally:
        for handle in handles:
            handle.remove()
    tables = []
    for path, (fisher, error, spikes, sampled, positions) in sums.items():
        fisher, group = fisher.cpu(), readers.get(path, [path])
        fan = sum(fan_out.get(p, 0.0) for p in group)
        tables.append(ChannelTable([modules[p] for p in group], fisher, fisher[:, None] * error.cpu() / sampled,
                                   spikes.cpu() / sampled * positions * fan))
    return tables


def same_code(module: SpikingWeightInput, x: torch.Tensor) -> Tuple:
    """What two weight inputs share when they code one tensor alike (the query, key and value projections
    of an attention: one calibration, one code, :class:`~spikingjelly_mbe.ops.weight_input.SharedCode`): the
    tensor's storage and shape, the code and its ranges' and centres' bytes (:func:`host_values`)."""
    centres = module.channel_centers
    return (x.data_ptr(), tuple(x.shape), module.code, module.T, host_values(module.channel_ranges.cpu()),
            host_values(None if centres is None else centres.cpu()))


def totals(tables: Sequence[ChannelTable], choices: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """The weighted error and the events of ``choices`` (one per table), summed."""
    pairs = [t.at(c) for t, c in zip(tables, choices)]
    return sum(e for e, _ in pairs), sum(s for _, s in pairs)


def equal_events(tables: Sequence[ChannelTable], events: float) -> List[torch.Tensor]:
    """The choices of the ``lambda`` whose synaptic events come closest to ``events`` from below (the fewest
    events when none reaches it): bisection of ``log lambda`` around its natural scale, the tables' mean
    error per mean event."""
    error, spent = sum(float(t.error.mean(1).sum()) for t in tables), sum(float(t.events.mean(1).sum()) for t in tables)
    scale = error / spent if spent > 0 and error > 0 else 1.0
    low, high = -64.0, 64.0  # log2 of lambda / scale: low spends more than events, high fewer
    for _ in range(BISECTIONS):
        mid = (low + high) / 2
        if totals(tables, [t.choice(scale * 2.0 ** mid) for t in tables])[1] > events:
            low = mid
        else:
            high = mid
    return [t.choice(scale * 2.0 ** high) for t in tables]


def apply_choices(tables: Sequence[ChannelTable], calibrated: Sequence[List[torch.Tensor]],
                  choices: Sequence[torch.Tensor], multipliers: Sequence[float]) -> None:
    """Every table's layers at their ``calibrated`` ranges times the multipliers ``choices`` index."""
    factors = torch.tensor(multipliers, dtype=torch.float64)
    for table, ranges, choice in zip(tables, calibrated, choices):
        for module, calibrated_ranges in zip(table.modules, ranges):
            module.channel_ranges = calibrated_ranges
            module.scale_channel_ranges(factors[choice])


def unchanged(tables: Sequence[ChannelTable], unit: int) -> List[torch.Tensor]:
    """The choice that keeps every channel at its calibrated range (multiplier index ``unit``)."""
    return [torch.full((len(t.fisher),), unit) for t in tables]


def summary(tables: Sequence[ChannelTable], choices: Sequence[torch.Tensor], unit: int,
            **aimed: Optional[float]) -> ChannelAllocation:
    """:class:`ChannelAllocation` of ``choices`` against the calibrated ranges (index ``unit``)."""
    base_error, base_events = totals(tables, unchanged(tables, unit))
    error, events = totals(tables, choices)
    return ChannelAllocation(sum(len(t.modules) for t in tables), sum(len(t.fisher) for t in tables),
                             sum(int((c != unit).sum()) for c in choices),
                             error / base_error if base_error > 0 else 1.0,
                             events / base_events if base_events > 0 else 1.0, **aimed)


def allocate_channel_ranges(snn: nn.Module, batches: Sequence[Batch], seed: int = 0) -> Optional[ChannelAllocation]:
    """Move every weight input's channel ranges to the multipliers :func:`equal_events` chooses, when
    that predicts less output error than the calibrated ranges (else they stay, and the returned
    ratios say so); ``None`` when no weight input qualifies (module docstring)."""
    tables = channel_tables(snn, batches, seed)
    if not tables:
        return None
    unit = MULTIPLIERS.index(1.0)
    base = unchanged(tables, unit)
    base_error, base_events = totals(tables, base)
    choices = equal_events(tables, base_events)
    if not totals(tables, choices)[0] < base_error:
        choices = base
    apply_choices(tables, [[m.channel_ranges for m in t.modules] for t in tables], choices, MULTIPLIERS)
    done = summary(tables, choices, unit)
    log.info("weight-input channel ranges %s", done)
    return done


def metered(snn: nn.Module, batches: Sequence[Batch], T: Steps) -> Tuple[float, int, float]:
    """``snn`` on ``batches`` under the energy meter: the whole model's strict ``E_SNN / E_ANN`` (Eq. 14),
    its weight inputs' synaptic events and the ratio one more synaptic event adds."""
    meter = metered_pass(snn, batches, T)
    events, ops, floats = meter.charged(list(meter.counts))
    inputs = sum(int(s.sops) for p, s in meter.counts.items() if isinstance(snn.get_submodule(p), SpikingWeightInput))
    return cost_ratio(events, ops, "fp32", floats), inputs, E_AC / (E_MAC * ops) if ops else 0.0


def aim_channel_ranges(snn: nn.Module, batches: Sequence[Batch], energy_budget: float, T: Steps,
                       seed: int = 0) -> Optional[ChannelAllocation]:
    """The weight inputs' channel ranges chosen (:func:`equal_events`, over :func:`aimed_multipliers` of the
    weight inputs' most digits; ``T``: the model's, for the meter) for the least predicted output error at
    which ``snn``'s whole-model strict energy on ``batches`` is at most ``energy_budget``: the synaptic events
    to spend are aimed from the metered energy and re-aimed by the secant after each metered choice, at most
    :data:`AIM_ROUNDS` times (until a choice repeats); the choice metered closest below the budget is kept
    (none below it: the cheapest, and the result's ``reached`` is ``False``). ``None`` when no weight input
    qualifies."""
    multipliers = aimed_multipliers(max((m.T for m in snn.modules() if isinstance(m, SpikingWeightInput)), default=0))
    tables = channel_tables(snn, batches, seed, multipliers)
    if not tables:
        return None
    unit = multipliers.index(1.0)
    calibrated = [[m.channel_ranges.clone() for m in t.modules] for t in tables]
    energy, inputs, per_event = metered(snn, batches, T)
    _, table_events = totals(tables, unchanged(tables, unit))
    scale = table_events / inputs if inputs else 1.0  # the tables' predicted events per metered one
    target = energy_budget * (1.0 - AIM_CLOSE / 2)  # the middle of the band a choice is kept in at once
    slope = scale / per_event if per_event else 0.0  # the tables' events per unit of energy; then the secant's
    aim, tried = table_events, []
    for _ in range(AIM_ROUNDS):
        last = (aim, energy)
        aim = max(aim + (target - energy) * slope, 0.0)
        choices = equal_events(tables, aim)
        if tried and all(torch.equal(a, b) for a, b in zip(choices, tried[-1][1])):
            break  # the same choice again: every channel at its widest multiplier, or the aim moved too little
        apply_choices(tables, calibrated, choices, multipliers)
        energy, _, _ = metered(snn, batches, T)
        tried.append((energy, choices))
        log.info("energy_budget=%g: the channel ranges aimed at %.4g synaptic events reach %.4g", energy_budget, aim,
                 energy)
        if energy_budget * (1.0 - AIM_CLOSE) <= energy <= energy_budget:
            break
        if (aim - last[0]) * (energy - last[1]) > 0:
            slope = (aim - last[0]) / (energy - last[1])
    within = [t for t in tried if t[0] <= energy_budget]
    energy, choices = max(within, key=lambda t: t[0]) if within else min(tried, key=lambda t: t[0])
    apply_choices(tables, calibrated, choices, multipliers)
    done = summary(tables, choices, unit, energy_budget=energy_budget, energy=energy)
    log.info("weight-input channel ranges %s", done)
    return done
