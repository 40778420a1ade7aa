"""Spiking Softmax: Eq. 13 for the exponential, an IEEE-754 split for the reciprocal, a spiking product."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..fitting.targets import default_split_bits
from . import flops
from .base import DEFAULT_MODE, DEFAULT_N, DEFAULT_T, SpikingOp, float_function, working_dtype
from .coding import (CODES, DEFAULT_CODE, IdentityCoder, check_code, check_flag, check_steps, element_exponent,
                     equivalent_digits, total)
from .products import product_sops, spike_product
from .split import SplitFunction

LOG2E = 1.0 / math.log(2.0)
MIN_EXPONENT = -2048.0  # 2^-2048 is 0 even in float64: such entries (and -inf) contribute exactly 0
NEURONS_PER_VALUE = SplitFunction.NEURONS_PER_ELEMENT + 1  # a split function's and the product's MBE_Id


class SpikingSoftmax(SpikingOp):
    """``softmax(x, dim)`` with every nonlinearity an MBE neuron.

    0. The row maximum ``m`` is subtracted first, before any spiking stage (a comparison, like a
       winner-take-all): ``y = (x - m) log2(e) <= 0``. This fixes every internal range by
       construction, so the operator needs no calibration.
    1. ``e^(x-m) = 2^n * 2^f`` with ``n = floor(y + h) <= 0`` and ``f = max(y - n, 0)`` (Eq. 13): ``2^f``
       from the ``exp2`` :class:`SplitFunction`, ``2^n`` an exponent shift (integer addition, not a
       neuron). ``h`` is half a step of the ``2^f`` neuron's input code: a fraction that code would
       round up to 1 (the end of Eq. 13's ``[0, 1)``) carries into the exponent, ``2^(n-1) 2^1 =
       2^n 2^0``, so ``y`` one ulp below an integer (a score one ulp below the row maximum, a near tie)
       gives the digits of that integer, not the fit's value at 1. ``y`` is clamped to ``-2048``:
       ``-inf`` (masked) and anything below ``2^-2048`` gives ``e = 0`` exactly, and those positions
       fire no spikes.
    2. ``S = sum e = M 2^E`` with ``M`` in ``[1, 2)`` (IEEE-754 split, ``torch.frexp``); ``1/M``
       from the ``reciprocal`` :class:`SplitFunction`, so ``1/S = 2^-E / M``.
    3. ``softmax = (e * 1/M) * 2^-E``: the product through MBE_Id codes and ``sum_ij D_ij S_ij``
       (Eqs. 9-12); both ranges are the largest values stages 1 and 2 can emit. ``e``'s code carries
       its own exponent, as the norms' element exponents: ``e = 2^j u`` with ``j`` the exponent of
       ``e`` (``u`` in ``[1/2, 1)``; ``j >= -2T``, ``-3T`` in centred codes), ``u`` takes the ``T``
       digits and every spike of that element weighs ``d[t] 2^j``. A small probability thus keeps ``T``
       significant digits instead of rounding to 0 on the grid of the row's maximum: rows of 197
       logits of SD 2 summed to 0.86 on average at T=4 that way, now 1.00 (``tests/test_numerics_audit.py``).
       With ``centered_codes`` (the default) ``u`` (in ``[1/2, 1]``) and ``1/M`` (in ``(1/2, 1]``, the
       reciprocal's outputs) are centred codes (:meth:`~.coding.IdentityCoder.centred`): a centre spike
       plus ``T`` signed digits of the offset, about two binary digits more for one spike more per
       element; ``j >= -3T`` then (an ``e`` below ``2^-(3T+2)`` codes 0, one in ``[2^-(3T+2), 2^-(3T+1))``
       codes ``2^-(3T+1)``). At T=4 the RMS error falls to 0.54x (``tests/test_centred_codes.py``).
       The result is capped at 1, the true maximum (a one-hot row would otherwise give up to ``1 + 4e-5``,
       which the next product's operand range of exactly 1 would have to clamp).

    ``split_bits=b`` moves the top ``b`` input digits of both neurons into a table of ``2^b``
    constant weights (see :mod:`~spikingjelly_mbe.ops.split`; default 3, at most ``T - 1``); ``b=0`` is
    the paper's form. ``code`` is the digit code of every MBE_Id stage (:data:`~.coding.CODES`).
    A row that is entirely masked gives zeros and fires no spike (its reciprocal would only scale
    zeros). Fast mode on CPU float32 runs the stages in one
    fused kernel (:meth:`fused`) with the same float operations as the PyTorch stages. SOPs: one
    per spike of every neuron (decoding), one per unmasked element for the row sum, and the
    product's coincidences.
    """

    def __init__(self, dim: int = -1, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, *, N: int = DEFAULT_N,
                 split_bits: Optional[int] = None, code: str = DEFAULT_CODE, centered_codes: bool = True) -> None:
        super().__init__(mode)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim, self.T, self.code = dim, check_steps(T), check_code(code)
        self.precision_digits = equivalent_digits(self.code, self.T)  # sets the working dtype
        split_bits = default_split_bits(T) if split_bits is None else split_bits
        self.exp2 = SplitFunction("exp2", T, N, split_bits, code)
        self.reciprocal = SplitFunction("reciprocal", T, N, split_bits, code)
        self.carry = self.exp2.unit / 2  # h: half a step of the fraction's code on [0, 1]
        # e = 2^f_hat * 2^n: n = 0 only within h of the row maximum (f = 0), otherwise n <= -1
        self.centered_codes = check_flag(centered_codes, "centered_codes")
        self.element_span = (3 if centered_codes else 2) * T  # e's code: its exponent, at least -2T (centred: -3T)
        # e 2^-j lies in [1/2, A] and 1/M in the reciprocal's outputs: centred codes (IdentityCoder.centred)
        self.e_coder = IdentityCoder(T, max(self.exp2.output_at_lo, self.exp2.max_output / 2), code,
                                     floor=0.5 if centered_codes else 0.0)
        self.r_coder = IdentityCoder(T, self.reciprocal.max_output, code,
                                     floor=self.reciprocal.min_output if centered_codes else 0.0)

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingSoftmax":
        """The spiking twin of ``float_op``: an ``nn.Softmax`` module (its ``dim``) or ``torch.softmax`` /
        ``F.softmax`` with the ``dim`` it takes after its input. ``options``: ``T``, ``mode``, ``N``,
        ``split_bits``, ``code``, ``centered_codes``."""
        if float_function(cls, float_op, (torch.softmax, F.softmax), (nn.Softmax,),
                          "an nn.Softmax module or torch.softmax / F.softmax and its dim"):
            return cls(*args, **options)
        if float_op.dim is None:
            raise ValueError("SpikingSoftmax.from_float: nn.Softmax(dim=None) picks its dimension from the input's "
                             "rank; give the module a dim")
        return cls(float_op.dim, **options)

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        """``torch.softmax``, with fully masked rows (all ``-inf``) fixed at 0 like the spiking output."""
        masked = (x == float("-inf")).all(self.dim, keepdim=True)
        return torch.softmax(x.masked_fill(masked, 0.0), self.dim).masked_fill(masked, 0.0)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if x.dim() == 0 or not -x.dim() <= self.dim < x.dim():
            raise ValueError(f"SpikingSoftmax(dim={self.dim}) needs an input with dimension {self.dim}; "
                             f"got shape {tuple(x.shape)}")
        if x.numel() == 0:  # no rows, or rows of length 0: nothing to normalise, like torch.softmax
            return x.new_empty(x.shape)
        fast = not self.simulating and self.exp2.packed_table is not None
        if fast and kernels.triton_usable(x, row=x.shape[self.dim]):
            out, (spikes, neurons, sops, nonfinite) = self.by_triton(x)
            self.counted_nonfinite(x, "input", nonfinite, allow_neg_inf=True)
            self.record(spikes=spikes, neurons=neurons, sops=sops, ann_flops=flops.SOFTMAX * x.numel())
            return out.to(x.dtype)
        if fast and kernels.usable(x, row=x.shape[self.dim]):
            out, (spikes, live_count, sops, nonfinite) = self.fused(x, self.exp2.packed_table)
            self.counted_nonfinite(x, "input", nonfinite, allow_neg_inf=True)
        else:
            self.check_input(x, "input", allow_neg_inf=True)
            out, spikes, live_count, sops = self.stages(x.to(working_dtype(x, self.precision_digits)))
        rows = x.numel() // x.shape[self.dim]
        self.record(spikes=spikes, neurons=NEURONS_PER_VALUE * (live_count + rows),
                    sops=spikes + live_count + sops, ann_flops=flops.SOFTMAX * x.numel())
        return out.to(x.dtype)

    def stages(self, xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 0-3 in PyTorch (both modes): ``(output, spikes, unmasked elements, product SOPs)``."""
        simulate = self.simulating
        row_max = xs.amax(self.dim, keepdim=True)
        row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)  # fully masked rows
        y = (xs - row_max).mul_(LOG2E).clamp_min_(MIN_EXPONENT)
        live = y > MIN_EXPONENT
        n = torch.floor(y + self.carry)
        exp2_frac, exp2_spikes = self.exp2.evaluate(y.sub_(n).clamp_min_(0.0), simulate)
        e = exp2_frac.mul_(n.exp2_())  # the exponent shift 2^n (exact)
        row_sum = e.sum(self.dim, keepdim=True, dtype=torch.float64).to(e.dtype)
        live_row = row_sum > 0  # a fully masked row: its reciprocal would only scale zeros, so it does not fire
        mantissa, exponent = torch.frexp(torch.where(live_row, row_sum, torch.ones_like(row_sum)))
        recip, recip_spikes = self.reciprocal.evaluate(2 * mantissa, simulate)  # 1/M, M = 2 * mantissa in [1, 2)
        recip, recip_spikes = recip * live_row, recip_spikes * live_row
        shift = element_exponent(e, self.element_span)  # e's own exponent: its code keeps T significant digits
        e_code = self.e_coder.encode(e / shift, simulate, (0.0, self.e_coder.A))[0].shifted(shift)
        r_code, _ = self.r_coder.encode(recip, simulate, (0.0, self.r_coder.A))
        out = spike_product(e_code, r_code, simulate, torch.exp2(1.0 - exponent.to(xs.dtype)))  # 1/S = 2^(1-exponent) / M
        out = out.clamp_(max=1.0)  # a probability: the fits' error must not lift it above 1
        spikes = total(exp2_spikes * live) + total(recip_spikes) + total(e_code.counts) + total(r_code.counts)
        return out, spikes, live.sum(), product_sops(e_code, r_code)

    def by_triton(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Fast mode's stages in one Triton program per row (:func:`~spikingjelly_mbe.kernels.triton_ops.softmax`),
        the same float32 operations as :meth:`stages`: ``(output, [spikes, neurons, SOPs, NaN/+inf
        inputs])``, counted on the device."""
        triton_ops = kernels.load_triton()
        tables = (torch.view_as_real(f.table(torch.float32, x.device)) for f in (self.exp2, self.reciprocal))
        params = triton_ops.coder_rows(  # exp2 and 1/M split functions, the e and 1/M coders
            x.device, *(f.coder.kernel_params(torch.float32, False) + (f.target.lo,) for f in (self.exp2, self.reciprocal)),
            *(c.row_params(torch.float32) for c in (self.e_coder, self.r_coder)))
        out, stats = triton_ops.softmax(x.movedim(self.dim, -1), params, *tables, LOG2E, MIN_EXPONENT, self.carry,
                                        int(self.e_coder.kernel_params(torch.float32, False)[4]),
                                        list(CODES).index(self.code), NEURONS_PER_VALUE, self.element_span)
        return out.movedim(-1, self.dim), [stats[0], stats[1], stats[2], stats[3]]

    def fused(self, x: torch.Tensor, packed: Tuple[torch.Tensor, int]) -> Tuple[torch.Tensor, List[int]]:
        """Fast mode's stages in one C pass per row (:mod:`spikingjelly_mbe.kernels`), the
        same float32 operations as :meth:`stages`: ``(output, [spikes, unmasked elements, product
        SOPs, NaN/+inf inputs])``."""
        rows_last = x.movedim(self.dim, -1)
        recip_params, recip_table = self.reciprocal.kernel_args(x.dtype)
        exp2_params = self.exp2.kernel_args(x.dtype)[0]
        e_params, r_params = (kernels.doubles(c.row_params(x.dtype)) for c in (self.e_coder, self.r_coder))
        out, stats = kernels.rowwise("sjmbe_softmax_f32", rows_last, rows_last.shape[-1], 4, LOG2E, MIN_EXPONENT,
                                     self.carry, exp2_params, packed[0].data_ptr(), packed[1], recip_params,
                                     recip_table.data_ptr(), e_params, r_params, self.element_span)
        return out.movedim(-1, self.dim), stats

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, T={self.T}, split_bits={self.exp2.split_bits}, code={self.code!r}, "
                f"centered_codes={self.centered_codes}, "
                + super().extra_repr())
