"""MBE, this project's method: :class:`OpSettings`, the factory conversion asks for each site's
spiking operator (the operators themselves are :mod:`spikingjelly_mbe.ops`, their neurons
:mod:`spikingjelly_mbe.neurons`)."""
from .blocks import ChannelsLast, Power, Quotient, Rescaled, VectorNorm
from .method import DEFAULT_N, OpSettings

__all__ = ["ChannelsLast", "DEFAULT_N", "OpSettings", "Power", "Quotient", "Rescaled", "VectorNorm"]
