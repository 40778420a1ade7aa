"""What a conversion method provides: :class:`SpikingMethod`, the factory of one spiking operator per
site kind the engine finds, and :data:`METHODS`, the one place that names the methods.

The engine (catalog, interception, sites, lifecycle, report) knows no method by name: it builds
every operator through this protocol. A method is a package of its own (neurons, operators,
settings, factory); registering it here is the only line the engine needs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable


import torch
import torch.nn as nn

from ..activations import Activation, Params
from ..ecmt import ECMTSettings
from ..mbe import OpSettings


@runtime_checkable
class SpikingMethod(Protocol):
    """The site kinds a method builds, and how its converted model runs.

    ``fully_spiking``: every operator runs its ``T`` steps inside one forward (``False``: the
    network is stepped from outside, :meth:`network`); ``float_ops``: what the method keeps in float
    (the report lists it); ``linear_input_note``: the report's note for a weight layer's input.
    """

    T: Any  # an int; MBE also takes a mapping per operator type and module path (ops.digits)
    mode: str
    fully_spiking: bool
    float_ops: Tuple[str, ...]
    linear_input_note: str

    def validate(self) -> None:
        """Raise a ``ValueError`` naming a bad setting."""

    def activation(self, entry: Activation, params: Params) -> nn.Module:
        """An element-wise activation of :data:`~spikingjelly_mbe.activations.ACTIVATIONS`."""

    def narrowed(self, entry: Activation, params: Params, span: float) -> Optional[nn.Module]:
        """The activation for inputs within ``[-span, span]`` (range reduction), or ``None`` when
        the method's operator does not depend on the input range."""

    def norm(self, norm: Any, shape: Sequence[int], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float) -> nn.Module:
        """A catalog :class:`~spikingjelly_mbe.conversion.catalog.Norm` with these affine tensors."""

    def softmax(self, dim: int) -> nn.Module:
        """Softmax over ``dim``."""

    def max_pool(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> nn.Module:
        """2-D max pooling."""

    def product(self) -> nn.Module:
        """Element-wise product of two activations."""

    def matmul(self) -> nn.Module:
        """Matrix product of two activations (a method may also offer ``probabilities_matmul()``, the
        attention's probabilities times values; without one the attention takes this)."""

    def linear_input(self, layer: nn.Module) -> nn.Module:
        """``layer`` (a weight layer, weights untouched) driven by spikes of its input."""

    def network(self, model: nn.Module) -> nn.Module:
        """The converted model as users call it."""


@runtime_checkable
class GeneralMethod(SpikingMethod, Protocol):
    """The further site kinds a method may build: arithmetic of activations, per-group norms, top-k
    routing and element-wise functions fitted on demand. A method lacking one of these builders leaves
    its calls unsupported (strict conversion raises naming them; ``allow_float_fallback`` keeps them
    in float); :class:`~spikingjelly_mbe.mbe.OpSettings` has them all."""

    def einsum(self, equation: str) -> nn.Module:
        """``torch.einsum`` of two activations."""

    def root(self, power: float) -> nn.Module:
        """``x ** power`` for ``power`` in ``{-1, -1/2, 1/2}``."""

    def quotient(self) -> nn.Module:
        """``a / b`` of two activations."""

    def power(self, exponent: float) -> nn.Module:
        """``x ** exponent``, ``exponent`` an integer or half-integer."""

    def vector_norm(self, dim: Optional[Tuple[int, ...]], keepdim: bool, order: float = 2.0) -> nn.Module:
        """The ``order``-norm (1, 2 or inf) over ``dim``."""

    def group_norm(self, channels: int, groups: Optional[int], weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float) -> nn.Module:
        """GroupNorm (``groups=channels``: InstanceNorm; ``None``: BatchNorm on the batch's statistics)."""

    def topk(self, k: int, dim: int = -1) -> nn.Module:
        """The ``k`` largest along ``dim`` (``torch.topk``'s values and indices)."""

    def greater(self) -> nn.Module:
        """``a > b`` of activations as a spike (a threshold neuron's decision)."""

    def extremum(self, minimum: bool = False) -> nn.Module:
        """``max(a, b)`` (``minimum``: ``min``) of two activations."""

    def clamp(self, low: bool, high: bool) -> nn.Module:
        """``clamp(x, lo, hi)`` whose present bounds are activations."""

    def on_demand(self, fn: Any, name: str) -> nn.Module:
        """An element-wise function no activation entry covers, fitted to its calibrated inputs."""


def settings_at(settings: SpikingMethod, path: str) -> SpikingMethod:
    """The settings of the operators a site builds at module ``path``: the method's ``at(path)`` where it
    has options per layer (MBE's per-operator ``T``), else ``settings`` itself."""
    at = getattr(settings, "at", None)
    return settings if at is None else at(path)


GENERAL_BUILDERS = tuple(name for name in vars(GeneralMethod) if not name.startswith("_")
                         and callable(vars(GeneralMethod)[name]))


# the registration: each method's settings dataclass, whose fields are its options (:mod:`.config`)
METHODS: Dict[str, Callable[..., SpikingMethod]] = {"mbe": OpSettings, "ecmt": ECMTSettings}

__all__ = ["ECMTSettings", "GENERAL_BUILDERS", "GeneralMethod", "METHODS", "OpSettings", "SpikingMethod",
           "settings_at"]
