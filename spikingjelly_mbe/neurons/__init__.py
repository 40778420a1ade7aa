"""Spiking neurons: the shared multi-basis simulation, the FS neuron, the MBE neuron, and the ternary
signed-digit identity neuron (ECMT's Multi-Threshold neuron lives in :mod:`spikingjelly_mbe.ecmt`)."""
from .fs import FSNode
from .lookup import NeuronTable, neuron_table
from .mbe import MBENode, decay_table
from .multibasis import DEFAULT_N, DEFAULT_T, MultiBasisNode, simulate_bases
from .signed_digit import SignedDigitNode

__all__ = ["DEFAULT_N", "DEFAULT_T", "FSNode", "MBENode", "MultiBasisNode", "NeuronTable", "SignedDigitNode", "decay_table",
           "neuron_table", "simulate_bases"]
