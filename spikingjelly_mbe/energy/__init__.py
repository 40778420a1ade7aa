"""Energy accounting (Eq. 14): spike, SOP and operation counts of the spiking operators and of the
weight layers they feed, under the strict and the paper's convention."""
from .report import (CONVENTIONS, COSTS, E_AC, E_MAC, RATIO_COLUMNS, EnergyMeter, block_of, cost_ratio, energy_ratio,
                     snn_events)
from ..ops.stats import OpStats, collect_stats
from .synapses import SynapseCounter, ann_macs, input_spikes

__all__ = ["CONVENTIONS", "COSTS", "E_AC", "E_MAC", "EnergyMeter", "OpStats", "RATIO_COLUMNS", "SynapseCounter",
           "ann_macs", "block_of", "collect_stats", "cost_ratio", "energy_ratio", "input_spikes", "snn_events"]
