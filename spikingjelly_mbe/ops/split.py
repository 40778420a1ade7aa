"""Range-reduced scalar functions of Softmax and the norms: ``2^f``, ``1/M`` and ``1/sqrt(M)``.

The input ``v`` in ``[lo, lo + width]`` arrives as the ``T`` digits ``q`` of an MBE_Id neuron (Eq. 9)
in base ``B`` (2 for the binary and signed codes, 3 for the ternary one), read on a grid of ``S =
levels + 1`` steps per ``width`` (``S = 2^T`` in base 2, ``(3^T + 1) / 2`` in base 3): ``v = lo + q width
/ S``. With ``split_bits = b`` the top ``b`` digits select one of the pathways ``j = floor(q / B^(T-b))``
(``2^b`` of them in base 2, ``(3^b + 1) / 2`` in base 3), each a copy of one MBE neuron with constant
input and output synapses; the remaining digits ``r`` drive that neuron, which only has to cover a
remainder interval of ``B^(T-b)`` steps, where the function is nearly linear:

* ``2^v = 2^(v_j) * 2^r``, neuron ``2^x`` on ``[0, span]``;
* ``v^p = v_j^p * (1 + r / v_j)^p`` (``p = -1`` reciprocal, ``p = -1/2`` rsqrt), neuron ``x^p``
  on ``[1, 1 + span / lo]``;

with ``v_j = lo + j B^(T-b) width / S``; the neuron is the shipped fit on the binary remainder interval
``span = width / 2^b'`` that holds ``B^(T-b)`` steps: ``b' = b`` in base 2, and in base 3 for ``b >= 2``
(``2^b <= S / 3^(T-b)`` there), ``b' = 0`` for ``b < 2``. ``b = 0`` is the paper's form (one
neuron on the whole domain: ``2^f`` on ``[0, 1)``, Eq. 13; ``1/M`` on ``[1, 2)``; ``1/sqrt(M)`` on
``[1, 4)``).

With signed digits (the signed and ternary :data:`~.coding.CODES`) the top ``b`` digits sum to ``j`` or
``j + 1``: the lower digits' sum has the sign of its first nonzero digit, and when that is negative the
pathway is the top digits' value less one and the remainder neuron's input gains the constant
``B^(T-b)`` steps (a bias synapse). Every code thus drives the pathway of ``floor(q / B^(T-b))`` with
the same ``r``.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .. import kernels
from ..fitting.library import load_fitted
from ..fitting.targets import SPLIT_TARGETS
from ..neurons.lookup import fingerprint, neuron_table
from .coding import CODES, DEFAULT_CODE, IdentityCoder, check_code, check_steps, code_levels, equivalent_digits, lookup

HEADROOM = 1.0 + 2.0 ** -20  # output bounds from the float64 table, widened for float32 rounding
TABLE_MAX_T = 16  # up to this many equivalent binary digits fast mode tabulates every digit pattern; beyond, a NeuronTable



# pattern tables by (target, T, split_bits, code, neuron fingerprint, dtype, device)
_TABLES: Dict[tuple, torch.Tensor] = {}


class SplitFunction(nn.Module):
    """``g(v)`` of a :class:`~spikingjelly_mbe.fitting.targets.SplitTarget` from MBE_Id digits (in
    ``code``), a pathway table and one MBE neuron.

    :meth:`evaluate` returns ``c_j * h_hat(x)`` (see the module docstring) and the spikes per
    element (MBE_Id digits plus the remainder neuron's spikes). ``simulate`` runs both neurons step
    by step and reads ``j`` and ``r`` off the spike train; fast mode looks both numbers up in a
    table over every digit pattern, built once per dtype by simulating the neuron on every
    representable remainder, so it returns the same numbers. Beyond :data:`TABLE_MAX_T` digits fast
    mode computes the neuron's input from the digits as the simulation does and looks the neuron up
    in its exact :class:`~spikingjelly_mbe.neurons.NeuronTable` instead.
    """

    NEURONS_PER_ELEMENT = 2  # MBE_Id and the remainder neuron

    def __init__(self, target: str, T: int, N: int, split_bits: int, code: str = DEFAULT_CODE) -> None:
        super().__init__()
        if target not in SPLIT_TARGETS:
            raise KeyError(f"unknown split target {target!r}; known: {sorted(SPLIT_TARGETS)}")
        check_steps(T)
        if isinstance(split_bits, bool) or not isinstance(split_bits, int) or not 0 <= split_bits < T:
            raise ValueError(f"split_bits must be an integer in [0, T={T}), got {split_bits!r}")
        self.target, self.T, self.split_bits = SPLIT_TARGETS[target], T, split_bits
        base, levels = CODES[check_code(code)].base, code_levels(code, T)
        self.low = base ** (T - split_bits)  # the steps of one pathway's remainder interval
        self.unit = self.target.width / (levels + 1)  # one step of v
        # the shipped binary fit whose interval holds low steps: b' = b (base 2; base 3 with b >= 2), 0 for b < 2
        fit_bits = min(split_bits, max(0, math.floor(math.log2((levels + 1) / self.low))))
        self.fitted = load_fitted(target, "mbe", N, T, split_bits=fit_bits)  # shipped, cached or fitted now
        # the coder rounds v to the grid q width / S the pathways read: its range is the top pattern's value
        self.coder = IdentityCoder(T, self.unit * levels, code)
        self.node = self.fitted.node(clamp=False)
        starts = self.target.lo + torch.arange(levels // self.low + 1, dtype=torch.float64) * (self.low * self.unit)
        self.register_buffer("starts", starts, persistent=False)
        self.register_buffer("weights", self.target.reference(starts), persistent=False)  # 2^(v_j) or v_j^p
        self._key = (self.target.name, T, split_bits, code, fingerprint(self.node))
        self.tabulated = equivalent_digits(code, T) <= TABLE_MAX_T
        if self.tabulated:
            values = self.table(torch.float64, torch.device("cpu")).real
            top, bottom, at_lo = float(values.max()), float(values.min()), float(values[0])
        else:  # bounds: the extreme pathway weights times the extreme neuron outputs on its domain
            entries = self.neuron_table(torch.float64, torch.device("cpu")).entries.real
            top = float(self.weights.max()) * float(entries.max())
            bottom = float(self.weights.min()) * float(entries.min())
            at_lo = float(self.evaluate(torch.tensor([self.target.lo], dtype=torch.float64), simulate=True)[0])
        self.max_output = top * HEADROOM  # the largest value it can emit (any dtype)
        self.min_output = bottom / HEADROOM  # the smallest (a centred code's floor, IdentityCoder)
        self.output_at_lo = at_lo * HEADROOM  # what it emits for v = lo

    def _pathway(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(neuron input x, pathway weight c_j)`` for digit patterns ``q``."""
        j = torch.div(q, self.low, rounding_mode="floor")
        r = (q - j * self.low) * self.unit
        index = j.long()
        x = self.target.remainder_input(r, self.starts.to(q.dtype)[index])
        return x, self.weights.to(q.dtype)[index]

    def table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``value + 1j * spikes`` for every digit pattern ``q = 0 .. levels`` (one complex entry per
        pattern, so fast mode fetches both numbers with a single 1-D gather). Built once per process
        for every operator whose remainder neuron has the same parameters (its fingerprint)."""
        key = (*self._key, dtype, str(device))
        if key not in _TABLES:
            q = torch.arange(self.coder.levels + 1, dtype=dtype, device=device)
            x, weight = self._pathway(q)
            node = self.node.to(device)
            with torch.no_grad():
                _, value, count = node.run(x, keep_spikes=False)
            _TABLES[key] = torch.complex(weight * value, self.coder.count(q, self.T) + count)
        return _TABLES[key]

    def neuron_table(self, dtype: torch.dtype, device: torch.device):
        """The remainder neuron's exact :class:`~spikingjelly_mbe.neurons.NeuronTable` on its fitted domain."""
        return neuron_table(self.node, self.fitted.domain, dtype, device)

    def kernel_args(self, dtype: torch.dtype) -> Tuple[ctypes.Array, torch.Tensor]:
        """What the fused kernels take: the MBE_Id parameters followed by ``lo``, and the table as
        interleaved ``(value, spikes)`` pairs (kept alive by the caller during the call)."""
        params = self.coder.kernel_params(dtype, False) + (self.target.lo,)
        return kernels.doubles(params), torch.view_as_real(self.table(dtype, torch.device("cpu")))

    @functools.cached_property
    def packed_table(self) -> Optional[Tuple[torch.Tensor, int]]:
        """The float32 table packed for a single-gather lookup (:func:`kernels.pack`), or ``None``
        when there is no table or its values or spike counts do not fit the packed format."""
        if not self.tabulated:
            return None
        table = self.table(torch.float32, torch.device("cpu"))
        return kernels.pack(table.real, table.imag)

    def evaluate(self, v: torch.Tensor, simulate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(g_hat(v), spikes per element)`` for ``lo <= v <= lo + width``."""
        magnitude = v - self.target.lo if self.target.lo else v
        if not simulate and self.tabulated:
            both = torch.view_as_real(lookup(self.table(v.dtype, v.device), self.coder.quantize(magnitude)))
            return both[..., 0], both[..., 1]
        if not simulate:
            q = self.coder.quantize(magnitude)
            x, weight = self._pathway(q)
            value, count = self.neuron_table(v.dtype, v.device)(x)
            return weight * value, self.coder.count(q, self.T) + count
        code, _ = self.coder.encode(magnitude, True, (0.0, self.target.width))
        digits = float(self.coder.base) ** torch.arange(self.T - 1, -1, -1, dtype=v.dtype, device=v.device)
        x, weight = self._pathway(code.spikes @ digits)  # q, the spikes read in the code's base
        _, value, count = self.node.run(x, keep_spikes=False)  # Eqs. 5-8 step by step, accumulated as it fires
        return weight * value, code.counts + count

    def extra_repr(self) -> str:
        lo, hi = self.fitted.domain
        return f"{self.target.name}, T={self.T}, split_bits={self.split_bits}, neuron on [{lo:g}, {hi:g}]"
