"""ECMT's Expectation Compensation modules (Huang et al., ACM MM 2024, Theorems 1-2, Fig. 2).

The converted network runs ``T`` steps on the repeated analog input; every layer emits, per step,
an increment whose cumulative sum up to ``t`` is ``t`` times the ANN's value. A nonlinear ``F``
keeps that property when its output at step ``t`` is ``t F(S(t)/t)`` minus the sum of its earlier
outputs, ``S(t)`` being its cumulative input (Theorem 1); a product of two such streams, when its
output is ``S_A(t) S_B(t) / t`` minus the earlier outputs, with ``S_A(t) S_B(t)`` grown by the spike
terms ``A(t) S_B(t-1) + S_A(t-1) B(t) + A(t) B(t)`` (Theorem 2). So the mean of the outputs up to
``t`` equals ``F`` of the mean input (or the product of the mean operands) at every ``t``.

``F`` and the compensation arithmetic run in float: they are ECMT's float operations, counted in
``OpStats.float_flops`` (conventions in :mod:`.flops`). ``functional.reset_net`` starts a new run.
"""
from __future__ import annotations

import operator
from typing import Callable, Optional, Sequence

import torch

from ..ops import flops
from ..ops.base import DEFAULT_MODE, SpikingOp, broadcast_shape, float_function, working_dtype
from .multi_threshold import PERCENTILE, THRESHOLDS, MTCodedOp

Flops = Callable[[torch.Tensor], int]


class ExpectationCompensation(SpikingOp):
    """Theorem 1 around a float function ``fn``: step ``t`` outputs ``t F(S(t)/t) - sum_{tau<t} O(tau)``.

    ``flops_of(x)`` gives ``F``'s FLOPs on input ``x`` (the ANN's cost, charged once per run as
    ``ann_flops``); every step adds ``F``'s FLOPs plus :data:`flops.EC_STEP` per element to
    ``float_flops``. ``allow_neg_inf`` accepts ``-inf`` (masked Softmax positions) and keeps ``S``
    and the output sum in float64, so additive masks of ``finfo.min`` summed over the steps do not
    overflow; otherwise they are kept in float32 (float64 for float64 input). The computation has
    one form, so ``mode`` changes nothing. ``what`` names ``F`` in the conversion report's note.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], flops_of: Flops, allow_neg_inf: bool = False,
                 mode: str = DEFAULT_MODE, what: str = "F") -> None:
        super().__init__(mode)
        self.fn = fn
        self.report_note = f"{what}: F(S(t)/t) in float inside Expectation Compensation (Theorem 1)"
        self.flops_of = flops_of
        self.allow_neg_inf = allow_neg_inf
        self.register_memory("steps", 0)
        self.register_memory("input_sum", None)
        self.register_memory("output_sum", None)

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x)``: its gradient is the straight-through gradient of every step."""
        return self.fn(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, "input", allow_neg_inf=self.allow_neg_inf)
        if self.input_sum is None:
            self.input_sum = x.to(torch.float64 if self.allow_neg_inf else working_dtype(x))
        else:
            if self.input_sum.shape != x.shape:
                raise ValueError(f"{type(self).__name__}: input shape {tuple(x.shape)} differs from the earlier steps' "
                                 f"{tuple(self.input_sum.shape)}; call functional.reset_net(model) before a new input")
            self.input_sum = self.input_sum + x
        self.steps += 1
        t = self.steps
        target = t * self.fn((self.input_sum / t).to(x.dtype)).to(self.input_sum.dtype)
        out = target if self.output_sum is None else target - self.output_sum
        self.output_sum = target if self.output_sum is None else self.output_sum + out
        f_flops = self.flops_of(x)
        self.record(float_flops=f_flops + flops.EC_STEP * x.numel(), ann_flops=f_flops if t == 1 else 0)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', self.fn)!r}, " + super().extra_repr()


def _coincidences(a: torch.Tensor, b: torch.Tensor, matmul: bool, simulate: bool) -> int:
    """Nonzero pairs ``a != 0, b != 0`` that meet in ``a * b`` or ``a @ b`` (one accumulate each);
    for a matrix product, simulate mode multiplies the indicator matrices, fast mode uses the equal
    ``sum_k colsum(a)[k] rowsum(b)[k]``."""
    ma, mb = a != 0, b != 0
    if not matmul:
        return int((ma & mb).sum())
    if simulate:
        return int((ma.to(torch.float64) @ mb.to(torch.float64)).sum())
    return int((ma.sum(-2) * mb.sum(-1)).sum())  # integer counts, exact


class ProductCompensation(MTCodedOp):
    """Theorem 2: ``a * b`` (``kind='product'``, broadcasting) or ``a @ b`` (``kind='matmul'``) of
    two step streams, each operand coded by an MT neuron (``n`` thresholds per sign, calibrated
    like :class:`~.multi_threshold.MTLinearInput`: ``ranges`` are ``(lambda_pA, lambda_nA,
    lambda_pB, lambda_nB)``).

    With MT outputs ``A(t), B(t)`` and their sums ``S_A, S_B``: ``P(t) = P(t-1) + A(t) S_B(t-1) +
    S_A(t-1) B(t) + A(t) B(t)`` (``= S_A(t) S_B(t)``) and step ``t`` outputs ``P(t)/t`` minus the
    sum of the earlier outputs. ``mode='simulate'`` adds the three spike terms (the reference);
    ``'fast'`` forms ``S_A(t) S_B(t)`` in one product (equal up to float rounding). ``sops``: the
    nonzero pairs of the three terms (as ECMT counts them); ``float_flops``:
    :data:`flops.EC_PRODUCT_STEP` per output element and step; ``ann_flops``: the float product
    once per run.
    """

    KINDS = ("product", "matmul")

    def __init__(self, kind: str, n: int = THRESHOLDS, percentile: float = PERCENTILE,
                 thresholds: Optional[Sequence[float]] = None, mode: str = DEFAULT_MODE) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        super().__init__(2, n, percentile, thresholds, mode)
        self.kind = kind
        for name in ("sum_a", "sum_b", "product_sum", "output_sum"):
            self.register_memory(name, None)

    @classmethod
    def from_float(cls, float_op: object, **options: object) -> "ProductCompensation":
        """Theorem 2 for ``torch.mul`` / ``operator.mul`` (``'product'``) or ``torch.matmul`` /
        ``operator.matmul`` (``'matmul'``) of two activations. ``options``: ``n``, ``percentile``,
        ``thresholds`` (else calibrated), ``mode``."""
        products = (torch.mul, torch.multiply, operator.mul)
        float_function(cls, float_op, (*products, torch.matmul, operator.matmul),
                       takes="torch.mul, operator.mul, torch.matmul or operator.matmul")
        return cls("product" if any(float_op is f for f in products) else "matmul", **options)

    @property
    def matmul(self) -> bool:
        return self.kind == "matmul"

    @property
    def report_note(self) -> str:
        return f"{self.kind} of two MT-coded activations: S_A(t) S_B(t) / t less the earlier outputs (Theorem 2)"

    def float_op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b if self.matmul else a * b

    def check_shapes(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if not self.matmul:
            broadcast_shape(a, b, type(self).__name__)
            return
        if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"ProductCompensation(kind='matmul') needs a [..., M, K] and b [..., K, N]; got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")

    def float_op_flops(self, out: torch.Tensor, a: torch.Tensor) -> int:
        if self.matmul:
            return flops.matmul(out.numel() // out.shape[-1], a.shape[-1], out.shape[-1])
        return flops.PRODUCT * out.numel()

    def float_reference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b if self.matmul else a * b

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.check_floating(a, "operand a")
        self.check_floating(b, "operand b")
        self.check_shapes(a, b)
        if self.calibrating:
            self.observe(a, b)
            return self.float_op(a, b)
        self.require_thresholds()
        dtype = working_dtype(a)
        A, B = self.code(0, a.to(dtype)), self.code(1, b.to(dtype))
        self.steps += 1
        t = self.steps
        if t == 1:
            sops = _coincidences(A, B, self.matmul, self.simulating)
            self.sum_a, self.sum_b, self.product_sum = A, B, self.float_op(A, B)
        else:
            if self.sum_a.shape != A.shape or self.sum_b.shape != B.shape:
                raise ValueError(f"{type(self).__name__}: operand shapes changed between steps; call "
                                 "functional.reset_net(model) before a new input")
            terms = ((A, self.sum_b), (self.sum_a, B), (A, B))
            sops = sum(_coincidences(x, y, self.matmul, self.simulating) for x, y in terms)
            self.sum_a, self.sum_b = self.sum_a + A, self.sum_b + B
            if self.simulating:
                self.product_sum = self.product_sum + sum(self.float_op(x, y) for x, y in terms)
            else:
                self.product_sum = self.float_op(self.sum_a, self.sum_b)
        target = self.product_sum / t
        out = target if self.output_sum is None else target - self.output_sum
        self.output_sum = target if self.output_sum is None else self.output_sum + out
        self.record(sops=sops, float_flops=flops.EC_PRODUCT_STEP * out.numel(),
                    ann_flops=self.float_op_flops(out, a) if t == 1 else 0)
        return out.to(torch.promote_types(a.dtype, b.dtype))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, " + super().extra_repr()
