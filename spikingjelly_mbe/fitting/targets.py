"""Target functions the neurons are fitted to, each with the domain the operators use, and the
range reductions of Softmax and the norms (:class:`SplitTarget`: where their remainder neurons are fitted)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from ..activations import fitted_activations
from ..neurons.multibasis import check_domain

TensorFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Target:
    """A scalar function ``fn`` approximated on ``domain = (lo, hi)``."""

    name: str
    fn: TensorFn
    domain: Tuple[float, float]
    description: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.domain
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"target {self.name!r}: domain must be finite with lo < hi, got {self.domain}")

    def samples(self, count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``count`` evenly spaced points of the domain (the paper's uniform protocol)."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"samples must be an integer >= 2, got {count!r}")
        if count < 2:
            raise ValueError(f"need at least 2 samples, got samples={count}")
        return torch.linspace(self.domain[0], self.domain[1], count, dtype=dtype)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` in float64, checked: a tensor of ``x``'s shape with finite values."""
        y = self.fn(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"target {self.name!r} must return a torch.Tensor, got {type(y).__name__}; "
                            "wrap it, e.g. lambda x: torch.as_tensor(f(x))")
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"target {self.name!r} must be element-wise: input of shape {tuple(x.shape)} gave output "
                             f"of shape {tuple(y.shape)} (the same shape is needed)")
        y = y.to(torch.float64)
        bad = ~torch.isfinite(y)
        if bool(bad.any()):
            raise ValueError(f"target {self.name!r} is not finite at {int(bad.sum())} of {y.numel()} points of "
                             f"{self.domain}, e.g. x={float(x[bad][0]):g}; pick a domain where it is finite")
        return y


OPERATOR_TARGETS = [
    Target("exp2", torch.exp2, (0.0, 1.0), "2^f for the fractional part f in [0, 1) (Eq. 13, Softmax)"),
    Target("reciprocal", torch.reciprocal, (1.0, 2.0), "1/M for an IEEE-754 mantissa M in [1, 2) (Softmax)"),
    Target("rsqrt", torch.rsqrt, (1.0, 4.0),
           "1/sqrt(M) for a parity-adjusted mantissa M in [1, 4) (LayerNorm, RMSNorm)"),
    Target("identity", lambda x: x, (0.0, 1.0),
           "identity on [0, 1]; MBE_Id of Eq. 9, rescaled to [0, A] by the operators"),
]
# the fitted activations of the one activation table, the operators' own functions, then the residuals
# g = f - relu of the activations with a linear tail (range reduction: f = relu + g, the rectifier exact)
TARGETS: Dict[str, Target] = {t.name: t for t in [
    *(Target(a.name, a.reference, a.domain, a.note) for a in fitted_activations()),
    *OPERATOR_TARGETS,
    *(Target(a.residual_target, a.residual, a.residual_domain, f"{a.name} - ReLU: its curvature without its linear tail")
      for a in fitted_activations() if a.residual_target is not None),
]}
RECTIFIED: Dict[str, str] = {a.name: a.residual_target for a in fitted_activations() if a.residual_target is not None}


def get_target(target: Union[str, Target, TensorFn], domain: Optional[Tuple[float, float]] = None) -> Target:
    """Resolve a registered name, a :class:`Target` or a tensor callable (which needs a domain)."""
    domain = check_domain(domain)
    if isinstance(target, Target):
        return target if domain is None else Target(target.name, target.fn, domain, target.description)
    if isinstance(target, str):
        if target not in TARGETS:
            raise KeyError(f"unknown target {target!r}; registered: {sorted(TARGETS)}")
        base = TARGETS[target]
        return base if domain is None else Target(base.name, base.fn, domain, base.description)
    if callable(target):
        if domain is None:
            raise ValueError("a callable target needs an explicit domain=(lo, hi)")
        name = getattr(target, "__name__", "custom")
        return Target(name, target, domain, "user-supplied callable")
    raise TypeError(f"target must be a name, a Target or a callable, got {type(target).__name__}")


SPLIT_BITS = 3  # the default digits of Softmax and the norms moved into a table (fewer when T is shorter)


def default_split_bits(T: int) -> int:
    """:data:`SPLIT_BITS`, or ``T - 1`` for shorter trains (at least one digit drives the neuron)."""
    return min(SPLIT_BITS, T - 1)


@dataclass(frozen=True)
class SplitTarget:
    """A function of ``v`` in ``[lo, lo + width]``: ``2^v`` (``power=None``) or ``v^power``."""

    name: str  # the registered fitting target of the remainder neuron
    lo: float
    width: float
    power: Optional[float]

    def reference(self, v: torch.Tensor) -> torch.Tensor:
        return torch.exp2(v) if self.power is None else v ** self.power

    def remainder_domain(self, split_bits: int) -> Tuple[float, float]:
        span = self.width / 2 ** split_bits
        return (0.0, span) if self.power is None else (1.0, 1.0 + span / self.lo)

    def remainder_input(self, r: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """The remainder neuron's input for remainder ``r`` on the segment starting at ``start``."""
        return r if self.power is None else 1.0 + r / start


SPLIT_TARGETS: Dict[str, SplitTarget] = {t.name: t for t in [
    SplitTarget("exp2", 0.0, 1.0, None),
    SplitTarget("reciprocal", 1.0, 1.0, -1.0),
    SplitTarget("rsqrt", 1.0, 3.0, -0.5),
]}
