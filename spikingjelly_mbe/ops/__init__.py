"""Spiking operators built from MBE neurons: activations, products, Softmax, LayerNorm, RMSNorm.

Every operator is a SpikingJelly ``MemoryModule`` with ``mode='simulate'`` (step-by-step spikes,
the reference) or ``mode='fast'`` (the same numbers from the decoded sums), reports its counts
through :meth:`op_stats` (an :class:`OpStats`) and is reset by ``functional.reset_net``. ECMT's
operators live in :mod:`spikingjelly_mbe.ecmt`.
"""
from .stats import OpStats, collect_stats
from .base import CHECKS, flush_checks, set_checks
from .activation import RectifiedActivation, SpikingActivation
from .coding import IdentityCoder, identity_node
from .norm import SpikingGroupNorm, SpikingLayerNorm, SpikingRMSNorm
from .on_demand import FittedOnDemand
from .products import SpikingEinsum, SpikingMatmul, SpikingProduct
from .rectifier import PiecewiseLinear, SpikingMaxPool2d, SpikingReLU
from .roots import SpikingRoot
from .softmax import SpikingSoftmax
from .split import SplitFunction
from .weight_input import SpikingWeightInput

__all__ = ["CHECKS", "FittedOnDemand", "IdentityCoder", "OpStats", "PiecewiseLinear", "RectifiedActivation",
           "SpikingActivation", "SpikingEinsum", "SpikingGroupNorm", "SpikingLayerNorm", "SpikingMatmul",
           "SpikingMaxPool2d", "SpikingProduct", "SpikingReLU", "SpikingRMSNorm", "SpikingRoot", "SpikingSoftmax",
           "SpikingWeightInput", "SplitFunction", "collect_stats", "flush_checks", "identity_node", "set_checks"]
