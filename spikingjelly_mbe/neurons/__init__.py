"""Spiking neurons: the shared multi-basis simulation, the FS neuron and the MBE neuron."""
from .fs import FSNode
from .mbe import MBENode, decay_table
from .multibasis import MultiBasisNode, simulate_bases

__all__ = ["FSNode", "MBENode", "MultiBasisNode", "decay_table", "simulate_bases"]
