"""Element-wise ``1/x``, ``1/sqrt(x)`` and ``sqrt(x)`` of activations from the IEEE-754 split that
Softmax and the norms use inside (range-reduced neurons on the mantissa, an exponent shift)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from ..fitting.targets import default_split_bits
from . import flops
from .base import DEFAULT_MODE, DEFAULT_N, DEFAULT_T, SpikingOp, float_function, working_dtype
from .coding import DEFAULT_CODE, IdentityCoder, check_code, check_steps, equivalent_digits, total
from .products import product_sops, spike_product
from .split import SplitFunction

POWERS = {-1.0: "reciprocal", -0.5: "rsqrt", 0.5: "rsqrt"}  # the split function each power's mantissa drives
ROOT_FUNCTIONS = {torch.reciprocal: -1.0, torch.rsqrt: -0.5, torch.sqrt: 0.5}  # the float functions, by power


def root_function(power: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float function of :data:`ROOT_FUNCTIONS` computing ``x^power``; a ``ValueError`` naming the powers otherwise."""
    found = next((fn for fn, p in ROOT_FUNCTIONS.items() if p == power), None)
    if found is None:
        raise ValueError(f"SpikingRoot: power must be one of {sorted(POWERS)}, got {power!r}")
    return found


class SpikingRoot(SpikingOp):
    """``x^p`` for ``p`` in ``{-1, -1/2, 1/2}`` (``reciprocal``, ``rsqrt``, ``sqrt``), element-wise.

    1. ``|x| = M 2^E`` (``torch.frexp``, an exponent read-out, no neuron): for ``p = -1``, ``M`` in
       ``[1, 2)`` and ``1/|x| = 2^-E / M`` with ``1/M`` from the ``reciprocal``
       :class:`~.split.SplitFunction`; for ``p = +-1/2`` the parity fix of the norms makes ``E``
       even and ``M`` in ``[1, 4)``, ``1/sqrt(M)`` from the ``rsqrt`` split function, times ``2^(-E/2)``.
    2. ``sqrt(x) = 2^(E/2) M / sqrt(M)``: ``M``'s MBE_Id code (range 4) times the code of ``1/sqrt(M)``
       through the spiking product (Eqs. 10-12).
    3. ``1/x`` keeps the sign of ``x`` (sign-magnitude, as the products' codes); ``x = 0`` gives
       ``+-inf`` for the negative powers and 0 for ``sqrt``, as torch does, and fires no spike. A negative
       input of a square root lies outside its domain: clamped to 0 and counted.

    SOPs: one per spike of every neuron, plus the product's coincidences (``sqrt``); ``ann_flops``:
    :data:`flops.ACTIVATION` per element (a fitted scalar function's convention).
    """

    def __init__(self, power: float, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, *, N: int = DEFAULT_N,
                 split_bits: Optional[int] = None, code: str = DEFAULT_CODE) -> None:
        super().__init__(mode)
        if power not in POWERS:
            raise ValueError(f"SpikingRoot: power must be one of {sorted(POWERS)}, got {power!r}")
        self.power, self.T, self.code = float(power), check_steps(T), check_code(code)
        self.precision_digits = equivalent_digits(self.code, self.T)  # sets the working dtype
        split_bits = default_split_bits(T) if split_bits is None else split_bits
        self.split = SplitFunction(POWERS[self.power], T, N, split_bits, code)
        self.m_coder = IdentityCoder(T, 4.0, code)
        self.rho_coder = IdentityCoder(T, self.split.max_output, code)

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "SpikingRoot":
        """The spiking twin of ``torch.reciprocal``, ``torch.rsqrt`` or ``torch.sqrt`` (:data:`ROOT_FUNCTIONS`).
        ``options``: ``T``, ``mode``, ``N``, ``split_bits``, ``code``."""
        float_function(cls, float_op, tuple(ROOT_FUNCTIONS), takes="torch.reciprocal, torch.rsqrt or torch.sqrt")
        return cls(ROOT_FUNCTIONS[float_op], **options)

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.reciprocal(x) if self.power == -1 else torch.rsqrt(x) if self.power == -0.5 else torch.sqrt(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, "input")
        xs = x.to(working_dtype(x, self.precision_digits))
        if self.power != -1.0:
            negative = xs < 0
            self.note_clamped(negative.sum(), "negative inputs of a square root to 0")
            xs = xs.clamp(min=0.0)
        out, spikes, sops = self.stages(xs)
        self.record(spikes=spikes, neurons=(SplitFunction.NEURONS_PER_ELEMENT + (self.power == 0.5)) * x.numel(),
                    sops=sops, ann_flops=flops.ACTIVATION * x.numel())
        return out.to(x.dtype)

    def stages(self, xs: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """Stages 1-3 in PyTorch (both modes): ``(output, spikes, SOPs)``."""
        simulate = self.simulating
        live = xs != 0
        mantissa, exponent = torch.frexp(torch.where(live, xs.abs(), torch.ones_like(xs)))
        exponent = exponent - 1  # |x| = (2 mantissa) 2^exponent, 2 mantissa in [1, 2)
        M = 2 * mantissa
        if self.power != -1.0:
            odd = exponent % 2
            M, exponent = M * torch.exp2(odd.to(xs.dtype)), exponent - odd
        value, split_spikes = self.split.evaluate(M, simulate)
        split_spikes = split_spikes * live
        sops = 0
        if self.power == -1.0:
            out = value * torch.exp2(-exponent.to(xs.dtype))
            out = torch.where(live, out.copysign(xs), torch.full_like(xs, float("inf")).copysign(xs))
        elif self.power == -0.5:
            out = torch.where(live, value * torch.exp2(-(exponent // 2).to(xs.dtype)), torch.full_like(xs, float("inf")))
        else:
            m_code, _ = self.m_coder.encode(M * live, simulate, (0.0, 4.0))
            rho_code, _ = self.rho_coder.encode(value * live, simulate, (0.0, self.rho_coder.A))
            out = spike_product(m_code, rho_code, simulate, torch.exp2((exponent // 2).to(xs.dtype)))
            split_spikes = split_spikes + m_code.counts + rho_code.counts
            sops = product_sops(m_code, rho_code)
        spikes = total(split_spikes)
        return out, spikes, spikes + sops

    def extra_repr(self) -> str:
        return f"power={self.power:g}, T={self.T}, split_bits={self.split.split_bits}, " + super().extra_repr()


MAX_POWER = 8  # the largest |p| of x ** p built from spiking products
NORM_ORDERS = (1.0, 2.0, math.inf)  # the vector norms built from spiking pieces (|x| on rectifiers, squares, top-1)


def is_power(p: object) -> bool:
    """``p`` is an integer or half-integer exponent the spiking power builds (not 0 or 1: constant, linear)."""
    return isinstance(p, (int, float)) and not isinstance(p, bool) and float(2 * p).is_integer() \
        and abs(p) <= MAX_POWER and p not in (0, 1)
