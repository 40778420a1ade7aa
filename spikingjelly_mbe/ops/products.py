"""Spiking floating-point products and matrix products (Eqs. 9-12)."""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import kernels
from . import flops
from .base import DEFAULT_MODE, DEFAULT_T, CalibratedOp, Count, broadcast_shape, float_function, working_dtype
from .observer import Extreme, RangeObserver
from .precision import (DEFAULT_BUDGET, Budget, ChannelPeaks, along, budget_step, channel_layout, channel_ranges,
                        covering_range, resolve_budget)
from .coding import (BEYOND_SHIFT, DEFAULT_CODE, MAX_RANGE, MIN_RANGE, IdentityCoder, SpikeCode, check_code,
                     check_flag, check_steps, code_levels, equivalent_digits, kernel_coded, total)

# an operand coded at element exponents resolves 2^-ELEMENT_RESOLUTION of its range: its finest step is about
# 2^-(span + digits). The attention probabilities on 512 items (metric / strict energy at span None; 2, 4, 6, 8):
# DINOv2 T=4 74.4 / 0.155; -, 82.6 / 0.153, 84.0 / 0.154, 86.9 / 0.155 (rule: 6); T=6 92.6 / 0.262; 93.6 / 0.263,
# 93.8 / 0.264, 93.0 / 0.265 (rule: 4); SmolLM2 code='ternary' T=4 62.7 / 0.291; 57.9 / 0.289, 53.7 / 0.288, -,
# 54.8 / 0.291 (rule: 5); SmolLM2 T=8 40.2 / 0.370; 40.4 / 0.371, 40.9 / 0.373, -, 40.9 / 0.377 (rule: 2)
ELEMENT_RESOLUTION = 10


def element_span(code: str, T: int) -> Optional[int]:
    """The lowest element exponent ``-span`` of an operand coded at element exponents in ``code`` at ``T``
    digits: ``span + equivalent digits = ELEMENT_RESOLUTION`` (rounded); ``None`` (the range's own grid)
    where ``T``'s digits already resolve that much."""
    span = round(ELEMENT_RESOLUTION - equivalent_digits(code, T))
    return span if span > 0 else None


def intensity_matrix(a: SpikeCode, b: SpikeCode, scale: float = 1.0) -> torch.Tensor:
    """``D = scale * d d'^T`` (Eq. 11), shared by every element of the product."""
    return scale * torch.outer(a.weights, b.weights)


def spike_product(a: SpikeCode, b: SpikeCode, simulate: bool, scale: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
    """``scale * x1 * x2 ~ sum_ij D_ij S_ij`` with ``S_ij = s[i] s'[j]`` (Eqs. 10-12), broadcasting.

    ``simulate`` sums over the spike coincidences, ``sum_j (sum_i s[i] D_ij) s'[j]``, each element's sum
    taken on its own, digit by digit (a matrix product would round identical elements differently by where
    its blocking puts them); fast mode multiplies the decoded operands, the same sum regrouped as
    ``(sum_i d[i] s[i]) (sum_j d'[j] s'[j])``. A float ``scale`` pre-scales ``D``; a tensor ``scale`` (a
    power of two per row, an exponent shift) scales the result and is folded into ``b`` in fast mode,
    which is exact.
    """
    if simulate:
        D = intensity_matrix(a, b, 1.0 if isinstance(scale, torch.Tensor) else scale)
        coupled = sum(a.spikes[..., i, None] * D[i] for i in range(D.shape[0]))  # sum_i s[i] D_ij, [..., j]
        out = (coupled * b.spikes).sum(-1)
        return out * scale if isinstance(scale, torch.Tensor) else out
    if isinstance(scale, torch.Tensor):
        return a.value * (b.value * scale)
    out = a.value * b.value
    return out.mul_(scale) if scale != 1.0 else out


def product_sops(a: SpikeCode, b: SpikeCode) -> torch.Tensor:
    """Spike coincidences ``S_ij != 0`` of an element-wise product: ``sum c1 * c2`` over the
    broadcast shape, computed by first summing each operand over the dimensions the other
    broadcasts along (no tensor of the full shape is formed)."""
    shape = torch.broadcast_shapes(a.counts.shape, b.counts.shape)
    ca = a.counts.reshape((1,) * (len(shape) - a.counts.dim()) + tuple(a.counts.shape))
    cb = b.counts.reshape((1,) * (len(shape) - b.counts.dim()) + tuple(b.counts.shape))
    only_a = [d for d in range(len(shape)) if ca.shape[d] > 1 and cb.shape[d] == 1]
    only_b = [d for d in range(len(shape)) if cb.shape[d] > 1 and ca.shape[d] == 1]
    ca = ca.sum(only_a, keepdim=True) if only_a else ca
    cb = cb.sum(only_b, keepdim=True) if only_b else cb
    return total(ca * cb)


def spike_matmul(a: SpikeCode, b: SpikeCode, simulate: bool) -> torch.Tensor:
    """``(A @ B)[m, n] ~ sum_k sum_ij D_ij S_ij[m, k, n]`` (Eq. 12 summed over the inner index).

    ``simulate`` forms, for every step ``i`` of ``A``'s spikes and all steps ``j`` of ``B``'s at
    once, the coincidence counts ``sum_k s[m,k,i] s'[k,n,j]`` (a product of spike matrices) and
    weights them by ``D_ij``; fast mode multiplies the decoded matrices.
    """
    if not simulate:
        return a.value @ b.value
    D = intensity_matrix(a, b)
    steps = D.shape[1]
    N = b.spikes.shape[-2]
    s2 = b.spikes.movedim(-1, -2).flatten(-2)  # [..., K, T*N] (K = 0 too)
    out = None
    for i in range(D.shape[0]):
        coincidences = (a.spikes[..., i] @ s2).unflatten(-1, (steps, N))  # [..., M, T, N]
        term = (coincidences * D[i][:, None]).sum(-2)
        out = term if out is None else out + term
    return out


def matmul_sops(a: SpikeCode, b: SpikeCode, simulate: bool) -> torch.Tensor:
    """Spike coincidences of a matrix product: ``sum_{m,k,n} c1[m,k] c2[k,n]``.

    Simulate mode sums the product of the count matrices; fast mode uses the equal
    ``sum_k colsum(c1)[k] * rowsum(c2)[k]``.
    """
    if simulate:
        return total(a.counts.double() @ b.counts.double())
    return total(a.counts.sum(-2, dtype=torch.float64) * b.counts.sum(-1, dtype=torch.float64))


def _check_ranges(ranges: Sequence[float]) -> Tuple[float, float]:
    if len(ranges) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   and v > 0 for v in ranges):
        raise ValueError(f"ranges must be two positive finite numbers (A1, A2), got {ranges!r}")
    if not all(MIN_RANGE <= v <= MAX_RANGE for v in ranges):
        raise ValueError(f"ranges {ranges!r}: each range must lie in [2^-126, 2^126] (the identity neuron's gain "
                         "1/A and weight A must be normal float32 numbers); rescale the operands")
    return float(ranges[0]), float(ranges[1])


class _TwoOperandOp(CalibratedOp):
    """Both operands pass through sign-magnitude MBE_Id neurons of ranges ``(A1, A2)`` (Eq. 9) in the
    digit ``code`` (:data:`~.coding.CODES`; the coincidences are the products of the operands'
    nonzero-digit counts in every code).

    With ``ranges=None`` the operator starts ``calibrating``: forwards return the float result and
    record ``|operand|``; :meth:`finish_calibration` fixes ``A`` to the maximum (or a percentile)
    and, under a ``budget`` (:mod:`.precision`; ``'auto'``: ``2^-9``), each operand's rounding step to ``budget`` of its
    RMS, which widens a range to ``step L`` (the code's levels, ``2^T - 1`` in base 2) where that is larger. :meth:`set_ranges` fixes
    the ranges explicitly (widened only by steps that calibration set). An operator with
    ``per_channel`` codes each operand with one range per channel of its last dimension
    (:class:`~.precision.ChannelPeaks`): the product of the unit-range codes of ``a / A_k`` and
    ``b / B_k``, times ``A_k B_k`` (``D`` scaled per element). ``element_exponents=(a, b)`` codes that
    operand at its element exponents (:class:`~.coding.IdentityCoder`'s ``element_span``, :func:`element_span`):
    each element down to ``2^-span`` of the range keeps ``T`` significant digits, for operands whose small
    elements add up (attention probabilities); its range is then not widened by the budget's step.
    """

    float_op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    operands = 2  # ranges (A1, A2)
    per_channel = False
    calibrated_buffers = ("channel_ranges_a", "channel_ranges_b")

    def __init__(self, T: int, mode: str, ranges: Optional[Sequence[float]], code: str,
                 budget: Budget, element_exponents: Tuple[bool, bool] = (False, False)) -> None:
        super().__init__(mode)
        self.T, self.code = check_steps(T), check_code(code)
        if not (isinstance(element_exponents, tuple) and len(element_exponents) == 2):
            raise ValueError(f"element_exponents must be two bools (operand a, operand b), got {element_exponents!r}")
        self.element_spans = tuple(element_span(self.code, self.T) if check_flag(e, "element_exponents") else None
                                   for e in element_exponents)
        self.levels, self.precision_digits = code_levels(self.code, self.T), equivalent_digits(self.code, self.T)
        self.kernel_coded = kernel_coded(self.code, self.T)
        self.budget = resolve_budget(budget, self.precision_digits, "operand")
        self.steps: Optional[Tuple[float, float]] = None  # the budget's rounding steps, set by calibration
        self.coders: Optional[torch.nn.ModuleList] = None
        self.shares: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # per-channel shares, set by calibration
        self.register_buffer("channel_ranges_a", None)
        self.register_buffer("channel_ranges_b", None)
        self.observers = (RangeObserver(), RangeObserver())
        self.peaks = (ChannelPeaks(-1), ChannelPeaks(-1))
        self.calibration_forwards = 0
        self.calibrating = ranges is None
        if ranges is not None:
            self.set_ranges(ranges)

    @property
    def ranges(self) -> Optional[Tuple[float, float]]:
        """``(A1, A2)``; with per-channel ranges, each operand's largest."""
        if self.channel_ranges_a is not None:
            return float(self.channel_ranges_a.max()), float(self.channel_ranges_b.max())
        return None if self.coders is None else (self.coders[0].A, self.coders[1].A)

    def set_ranges(self, ranges: Sequence[float]) -> None:
        """Fix the identity ranges ``(A1, A2)`` (each widened to its calibrated step's covering range,
        :func:`~.precision.covering_range`) and stop calibrating."""
        A1, A2 = _check_ranges(tuple(ranges))
        steps = self.steps or (None, None)
        if self.shares is not None:
            self.channel_ranges_a, self.channel_ranges_b = (channel_ranges(A, shares, step, self.levels) for A, shares, step
                                                            in zip((A1, A2), self.shares, steps))
            A1 = A2 = 1.0  # the coders see x / A_k
        else:
            A1, A2 = (A if span is not None else min(covering_range(A, step, self.levels), MAX_RANGE)
                      for A, step, span in zip((A1, A2), steps, self.element_spans))
        self.coders = self.operand_coders((A1, A2))
        self.calibrating = False

    @property
    def on_one_grid(self) -> bool:
        """Both operands coded on their range's grid, none at element exponents: what the fused product
        kernels code."""
        return self.element_spans == (None, None)

    def settings_state(self) -> Dict[str, Any]:
        return {**super().settings_state(), "budget": self.budget, "element_spans": self.element_spans}

    def calibrated_state(self) -> Dict[str, Any]:
        return {"steps": self.steps, "shares": self.shares, "calibrating": self.calibrating,
                "coded": self.coders is not None}

    def restore_calibrated(self, state: Dict[str, Any]) -> None:
        self.steps, self.shares, self.calibrating = state["steps"], state["shares"], state["calibrating"]
        if state["coded"] and self.coders is None:  # the coders load their ranges next
            self.coders = self.operand_coders((1.0, 1.0)).to(self.state_device())

    def operand_coders(self, ranges: Tuple[float, float]) -> torch.nn.ModuleList:
        """The operands' MBE_Id coders of ``ranges``, each at its overflow shift and element span."""
        return torch.nn.ModuleList([IdentityCoder(self.T, A, self.code, shift_overflow=True, element_span=span)
                                    for A, span in zip(ranges, self.element_spans)])

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float, float]:
        """Ranges from the observed ``max |operand|`` (or its ``percentile``), and the budget's steps
        from the observed RMS; returns the observed ranges (:attr:`ranges` holds them widened)."""
        if not self.observers[0].samples or not self.observers[1].samples:
            seen = (f"but its {self.calibration_forwards} calibration forward(s) saw only empty operands, so no "
                    "data was observed" if self.calibration_forwards else "before any calibration forward")
            raise RuntimeError(f"{type(self).__name__}: finish_calibration() {seen}; run a few non-empty "
                               "batches while calibrating, or call set_ranges((A1, A2))")
        if self.budget is not None:
            self.steps = tuple(budget_step(o.rms(), self.budget) for o in self.observers)
        if self.per_channel:
            self.shares = tuple(p.shares() for p in self.peaks)
        observed = tuple(o.range(percentile) for o in self.observers)
        self.set_ranges(observed)
        self.observers = (RangeObserver(), RangeObserver())
        self.peaks = (ChannelPeaks(-1), ChannelPeaks(-1))
        self.calibration_forwards = 0
        return observed

    def isolated_extremes(self) -> Dict[str, List[Extreme]]:
        """Per operand, the calibration samples standing far beyond the rest
        (:meth:`.RangeObserver.isolated`); an operand with any restarts its statistics for a second
        pass that leaves them out."""
        found = {name: observer.isolated() for name, observer in zip(("operand a", "operand b"), self.observers)}
        self.peaks = tuple(ChannelPeaks(-1) if found[name] else peaks
                           for name, peaks in zip(("operand a", "operand b"), self.peaks))
        return {name: extremes for name, extremes in found.items() if extremes}

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.check_floating(a, "operand a")
        self.check_floating(b, "operand b")
        self.check_shapes(a, b)
        if self.calibrating:
            for name, observer, peaks, x in zip(("operand a", "operand b"), self.observers, self.peaks, (a, b)):
                self.reject_nonfinite(x, name)
                kept = observer.admit(x)
                if kept is not None:
                    observer.observe(kept)
                    if self.per_channel:
                        peaks.observe(kept)
            self.calibration_forwards += 1
            return self.float_op(a, b)
        if self.coders is None:
            raise RuntimeError(f"{type(self).__name__} has no operand ranges: run calibration forwards while "
                               "op.calibrating is True and then op.finish_calibration(), or pass ranges=(A1, A2) "
                               "/ call op.set_ranges((A1, A2))")
        dtype_out = a.dtype if a.dtype == b.dtype else torch.promote_types(a.dtype, b.dtype)
        ann_flops = self.float_flops(a, b)
        # the backend, chosen once per call (the c kernels take the operands once they are scaled)
        chosen = kernels.backend.select(a, b) if not self.simulating and a.numel() and b.numel() \
            and self.kernel_coded else "torch"
        if chosen == "triton" and self.on_one_grid and self.triton_fusable(a, b) \
                and kernels.triton_usable(a, b):
            out = self.by_triton(a, b)
            self.record(ann_flops=ann_flops)
            return out.to(dtype_out)
        scale, channel_ranges_a = None, self.channel_ranges_a
        if channel_ranges_a is not None:  # per channel: the unit-range codes of a / A_k and b / B_k
            dtype = working_dtype(a, self.precision_digits)
            ranges = (along(channel_ranges_a, a.to(dtype), -1), along(self.channel_ranges_b, b.to(dtype), -1))
            a, b, scale = a.to(dtype) / ranges[0], b.to(dtype) / ranges[1], ranges[0] * ranges[1]
        if chosen == "c" and kernels.takes(a, b):
            out = self.fused(a, b, True, ann_flops)
        elif chosen == "triton" and kernels.triton_usable(a, b):
            out = self.fused(a, b, False, ann_flops)
        else:
            out = self.stages(a, b)
            self.record(ann_flops=ann_flops)
        if scale is not None:
            out = out * scale
        return out if out.dtype == dtype_out else out.to(dtype_out)

    def float_reference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.float_op(a, b)

    def stages(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Both operands' MBE_Id codes, then :meth:`combine`, in PyTorch (both modes)."""
        dtype = working_dtype(a, self.precision_digits)
        codes = []
        for name, coder, x in zip("ab", self.coders, (a, b)):
            self.check_input(x, f"operand {name}")
            code, clamped = coder.encode(x.to(dtype), self.simulating)
            self.count_operand(name, x, total(code.counts), clamped)
            codes.append(code)
        return self.combine(*codes)

    def fused(self, a: torch.Tensor, b: torch.Tensor, c_backend: bool, ann_flops: int) -> torch.Tensor:
        """Fast mode with the operand codes from the compiled kernels (``c_backend``: on the ``c`` backend, else
        on ``triton``); records the statistics, ``ann_flops`` among them."""
        codes = []
        for name, coder, x in zip("ab", self.coders, (a, b)):
            code, (spikes, clamped, nonfinite) = coder.fused(x)
            self.counted_nonfinite(x, f"operand {name}", nonfinite)
            self.count_operand(name, x, spikes, clamped)
            codes.append(code)
        self.record(ann_flops=ann_flops)
        return self.combine(*codes)

    def triton_fusable(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether :meth:`by_triton` takes these operands (else each is coded by itself)."""
        return False

    def by_triton(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fast mode in fused Triton kernels, the statistics counted on the device (float32)."""
        raise NotImplementedError

    def count_triton_operand(self, name: str, x: torch.Tensor, spikes: Count, clamped: Count, nonfinite: Count) -> None:
        """:meth:`count_operand` with a Triton kernel's device counts, NaN/Inf among them."""
        self.counted_nonfinite(x, f"operand {name}", nonfinite)
        self.count_operand(name, x, spikes, clamped)

    def count_operand(self, name: str, x: torch.Tensor, spikes: Count, clamped: Count) -> None:
        """Record one operand's spikes and neurons; count (and warn about) elements that even the
        overflow shift could not hold."""
        self.note_clamped(clamped, f"of operand {name} {BEYOND_SHIFT}")
        self.record(spikes=spikes, neurons=x.numel())

    def extra_repr(self) -> str:
        return (f"T={self.T}, ranges={self.ranges}, code={self.code!r}, budget={self.budget}, "
                f"calibrating={self.calibrating}, "
                + super().extra_repr())


class SpikingProduct(_TwoOperandOp):
    """``a * b`` (broadcasting) as ``sum_ij D_ij S_ij`` with ``D = d d'^T`` (Eqs. 9-12).

    Signed operands use sign-magnitude coding: ``|a|`` drives MBE_Id and each spike carries
    ``sign(a)``, so ``S_ij = s[i] s'[j]`` is ``-1, 0`` or ``+1`` and every coincidence adds or
    subtracts ``D_ij``. SOPs are the coincidences; ``ann_flops`` one per output element.
    """

    float_op = staticmethod(torch.mul)
    per_channel = True

    def __init__(self, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, ranges: Optional[Sequence[float]] = None,
                 code: str = DEFAULT_CODE, budget: Budget = DEFAULT_BUDGET,
                 element_exponents: Tuple[bool, bool] = (False, False)) -> None:
        super().__init__(T, mode, ranges, code, budget, element_exponents)

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "SpikingProduct":
        """The spiking twin of ``torch.mul`` / ``torch.multiply`` / ``operator.mul`` (a product of two
        activations). ``options``: ``T``, ``mode``, ``ranges`` (else calibrated), ``code``, ``budget``,
        ``element_exponents``."""
        float_function(cls, float_op, (torch.mul, torch.multiply, operator.mul), takes="torch.mul or operator.mul")
        return cls(**options)

    def check_shapes(self, a: torch.Tensor, b: torch.Tensor) -> None:
        broadcast_shape(a, b, type(self).__name__)

    def combine(self, a: SpikeCode, b: SpikeCode) -> torch.Tensor:
        self.record(sops=product_sops(a, b))
        return spike_product(a, b, self.simulating)

    def fused(self, a: torch.Tensor, b: torch.Tensor, c_backend: bool, ann_flops: int) -> torch.Tensor:
        """Same-shape operands on the ``c`` backend: codes, product and coincidences in one compiled pass."""
        if a.shape != b.shape or not c_backend or not self.on_one_grid:
            return super().fused(a, b, c_backend, ann_flops)
        coder_a, coder_b = self.coders
        out, (spikes_a, spikes_b, sops, clamped_a, clamped_b, nonfinite) = kernels.product(
            a, b, (coder_a.kernel_params(a.dtype, True), coder_b.kernel_params(a.dtype, True)), (coder_a.A, coder_b.A))
        if (clamped_a or clamped_b) and not nonfinite:  # operands beyond their ranges: shifted codes
            return super().fused(a, b, c_backend, ann_flops)
        if nonfinite:
            self.reject_nonfinite(a, "operand a")
            self.reject_nonfinite(b, "operand b")  # one of them raises, naming the count
        # count_operand's (nothing clamped) and the coincidences, in one record
        self.record(spikes=spikes_a + spikes_b, neurons=2 * a.numel(), sops=sops, ann_flops=ann_flops)
        return out

    def triton_fusable(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape

    def by_triton(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Both codes (per channel: of ``a / A_k`` and ``b / B_k``, times ``A_k B_k``), the product and
        its coincidences in one kernel (:func:`~spikingjelly_mbe.kernels.triton_ops.product`)."""
        if self.channel_ranges_a is not None:
            (_, inner_a, ranges_a), (_, inner_b, ranges_b) = (channel_layout(r, x, -1) for r, x in
                                                               ((self.channel_ranges_a, a), (self.channel_ranges_b, b)))
        else:
            ranges_a = ranges_b = None
            inner_a = inner_b = 1
        coders = self.coders
        out, stats = kernels.load_triton().product(a, b, ranges_a, inner_a, ranges_b, inner_b,
                                                   *(list(c.kernel_params(torch.float32, True)) for c in coders),
                                                   [c.A for c in coders])
        self.count_triton_operand("a", a, stats[0], stats[1], stats[4])
        self.count_triton_operand("b", b, 0, stats[2], stats[5])
        self.record(sops=stats[3])
        return out

    def float_flops(self, a: torch.Tensor, b: torch.Tensor) -> int:
        return flops.PRODUCT * math.prod(broadcast_shape(a, b, type(self).__name__))


class SpikingMatmul(_TwoOperandOp):
    """``a @ b`` (batched like ``torch.matmul``) from spiking products (Eq. 12 summed over ``k``).

    Operands are coded like :class:`SpikingProduct`'s (sign-magnitude, ternary spikes). SOPs are
    the coincidences ``sum_{m,k,n} c1[m,k] c2[k,n]``; ``ann_flops`` is ``M K N`` (MACs) per batch element.
    """

    float_op = staticmethod(torch.matmul)

    def __init__(self, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, ranges: Optional[Sequence[float]] = None,
                 code: str = DEFAULT_CODE, budget: Budget = DEFAULT_BUDGET,
                 element_exponents: Tuple[bool, bool] = (False, False)) -> None:
        super().__init__(T, mode, ranges, code, budget, element_exponents)

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "SpikingMatmul":
        """The spiking twin of ``torch.matmul`` / ``torch.mm`` / ``torch.bmm`` / ``operator.matmul`` (a
        matrix product of two activations). ``options`` as :meth:`SpikingProduct.from_float`'s."""
        float_function(cls, float_op, (torch.matmul, torch.mm, torch.bmm, operator.matmul),
                       takes="torch.matmul, torch.mm, torch.bmm or operator.matmul")
        return cls(**options)

    def check_shapes(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.dim() < 2 or b.dim() < 2:
            raise ValueError(f"SpikingMatmul needs a [..., M, K] and b [..., K, N]; got {tuple(a.shape)} and "
                             f"{tuple(b.shape)} (use SpikingProduct for element-wise or vector products)")
        K = a.shape[-1]
        if b.shape[-2] != K:
            raise ValueError(f"SpikingMatmul: a is {tuple(a.shape)} = [..., M, K={K}], so b must be [..., K={K}, N]; "
                             f"got {tuple(b.shape)}")
        try:
            torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            raise ValueError(f"SpikingMatmul: batch shapes {tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} are not "
                             "broadcastable") from None

    def combine(self, a: SpikeCode, b: SpikeCode) -> torch.Tensor:
        self.record(sops=matmul_sops(a, b, self.simulating))
        return spike_matmul(a, b, self.simulating)

    def fused(self, a: torch.Tensor, b: torch.Tensor, c_backend: bool, ann_flops: int) -> torch.Tensor:
        """Operands of one batch shape on the ``c`` backend: each coded in one compiled pass straight into the
        layout the product reads, its spikes summed per inner index ``k`` on the way (the coincidences are
        ``sum_k colsum(c1)[k] rowsum(c2)[k]``, :func:`matmul_sops`)."""
        if a.shape[:-2] != b.shape[:-2] or a.dim() > kernels.MAX_DIMS or not c_backend \
                or max(a.shape[-2], b.shape[-1]) * self.T >= 2 ** 31:
            return super().fused(a, b, c_backend, ann_flops)
        values, sums = [], []
        for name, coder, x, reduced in zip("ab", self.coders, (a, b), (-2, -1)):
            params = coder.kernel_params(x.dtype, True)
            value, spike_sums, (spikes, clamped, nonfinite) = kernels.matmul_operand(x, reduced, params, coder.A, False,
                                                                                     coder.element_span)
            if clamped and not nonfinite and coder.shift_overflow:
                value, spike_sums, (spikes, clamped, nonfinite) = kernels.matmul_operand(x, reduced, params, coder.A, True,
                                                                                         coder.element_span)
            self.counted_nonfinite(x, f"operand {name}", nonfinite)
            self.count_operand(name, x, spikes, clamped)
            values.append(value)
            sums.append(spike_sums)
        self.record(sops=(sums[0].long() * sums[1].long()).sum(), ann_flops=ann_flops)
        return values[0] @ values[1]

    def triton_fusable(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape[:-2] == b.shape[:-2] and self.channel_ranges_a is None

    def by_triton(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Each operand's code in one Triton kernel (:func:`~spikingjelly_mbe.kernels.triton_ops.code`):
        ``a``'s spikes summed over its rows, which ``b``'s kernel weights its spikes with (the
        coincidences, :func:`matmul_sops`); then the product of the decoded matrices."""
        (M, K), N = a.shape[-2:], b.shape[-1]
        value_a, _, stats_a, column_spikes = self.coders[0].triton_code(a, sum_rows=M, sum_inner=K)
        value_b, _, stats_b, _ = self.coders[1].triton_code(b, partner=column_spikes, partner_inner=N)
        for name, x, stats in (("a", a, stats_a), ("b", b, stats_b)):
            self.count_triton_operand(name, x, stats[0], stats[1], stats[2])
        self.record(sops=stats_b[3])
        return value_a @ value_b

    def float_flops(self, a: torch.Tensor, b: torch.Tensor) -> int:
        batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        return flops.matmul(batch * a.shape[-2], a.shape[-1], b.shape[-1])


def einsum_steps(equation: str) -> Tuple[str, str]:
    """``(a's step letter, b's step letter)``: two letters the ``equation`` does not use."""
    free = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    return free[0], free[1]


class SpikingEinsum(_TwoOperandOp):
    """``torch.einsum(equation, a, b)`` for any two-operand subscript pattern, as spike
    coincidences weighted by ``D_ij`` (Eqs. 10-12) and summed over the contracted indices.

    Simulate mode contracts the ternary spike trains with ``D``: ``a[..., i] D[i, j] b[..., j]``
    inside the same ``equation`` (two extra step indices); fast mode contracts the decoded operands.
    Operands are coded like :class:`SpikingProduct`'s. SOPs: ``einsum(equation, c1, c2)`` summed, the
    coincidences of every term; ``ann_flops``: one multiply-accumulate per term.
    """

    def __init__(self, equation: str, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, ranges: Optional[Sequence[float]] = None,
                 code: str = DEFAULT_CODE, budget: Budget = DEFAULT_BUDGET,
                 element_exponents: Tuple[bool, bool] = (False, False)) -> None:
        if not isinstance(equation, str) or equation.partition("->")[0].count(",") != 1:
            raise ValueError(f"SpikingEinsum needs a two-operand equation such as 'bij,bjk->bik', got {equation!r}")
        self.equation = equation.replace(" ", "")
        super().__init__(T, mode, ranges, code, budget, element_exponents)

    @classmethod
    def from_float(cls, float_op: object, equation: str, **options: object) -> "SpikingEinsum":
        """The spiking twin of ``torch.einsum`` with ``equation`` (two operands). ``options`` as
        :meth:`SpikingProduct.from_float`'s."""
        float_function(cls, float_op, (torch.einsum,), takes="torch.einsum and its equation")
        return cls(equation, **options)

    def float_op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, a, b)

    def check_shapes(self, a: torch.Tensor, b: torch.Tensor) -> None:
        try:
            torch.einsum(self.equation, a.new_empty(a.shape, device="meta"), b.new_empty(b.shape, device="meta"))
        except RuntimeError as error:
            raise ValueError(f"SpikingEinsum({self.equation!r}): operands {tuple(a.shape)} and {tuple(b.shape)} do "
                             f"not fit the equation ({error})") from None

    def combine(self, a: SpikeCode, b: SpikeCode) -> torch.Tensor:
        inputs, _, output = self.equation.partition("->")
        left, right = inputs.split(",")
        self.record(sops=total(torch.einsum(self.equation, a.counts.double(), b.counts.double())))
        if not self.simulating:
            return torch.einsum(self.equation, a.value, b.value)
        i, j = einsum_steps(self.equation)
        if not output and "->" not in self.equation:  # implicit output: the letters used once, sorted
            letters = left + right
            output = "".join(sorted(c for c in set(letters) if c.isalpha() and letters.count(c) == 1))
            output = ("..." if "..." in letters else "") + output
        stepped = f"{left}{i},{i}{j},{right}{j}->{output}"
        return torch.einsum(stepped, a.spikes, intensity_matrix(a, b), b.spikes)

    def float_flops(self, a: torch.Tensor, b: torch.Tensor) -> int:
        inputs, _, _ = self.equation.partition("->")
        sizes = {}
        for letters, x in zip(inputs.split(","), (a, b)):
            if "..." not in letters:
                sizes.update(zip(letters, x.shape))
        return math.prod(sizes.values()) if sizes else max(a.numel(), b.numel())

    def extra_repr(self) -> str:
        return f"{self.equation!r}, " + super().extra_repr()
