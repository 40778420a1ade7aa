"""Spiking neurons: the shared multi-basis simulation, the FS neuron, the MBE neuron, the ternary
signed-digit identity neuron and ECMT's Multi-Threshold neuron."""
from .fs import FSNode
from .lookup import NeuronTable, neuron_table
from .mbe import MBENode, decay_table
from .multi_threshold import MTNode
from .multibasis import MultiBasisNode, simulate_bases
from .signed_digit import SignedDigitNode

__all__ = ["FSNode", "MBENode", "MTNode", "MultiBasisNode", "NeuronTable", "SignedDigitNode", "decay_table",
           "neuron_table", "simulate_bases"]
