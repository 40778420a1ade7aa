"""Energy accounting (Eq. 14): spike, SOP and operation counts of the spiking operators and of the
weight layers they feed."""
from .report import E_AC, E_MAC, EnergyMeter, block_of, energy_ratio
from .stats import OpStats, collect_stats
from .synapses import SynapseCounter, ann_macs, input_spikes

__all__ = ["E_AC", "E_MAC", "EnergyMeter", "OpStats", "SynapseCounter", "ann_macs", "block_of", "collect_stats",
           "energy_ratio", "input_spikes"]
