"""Spiking neurons: the shared multi-basis simulation, the FS neuron and the MBE neuron."""
from .fs import FSNode
from .lookup import NeuronTable, neuron_table
from .mbe import MBENode, decay_table
from .multibasis import MultiBasisNode, simulate_bases

__all__ = ["FSNode", "MBENode", "MultiBasisNode", "NeuronTable", "decay_table", "neuron_table", "simulate_bases"]
