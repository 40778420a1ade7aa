"""Per-layer precision of the MBE_Id operand codes (Eq. 9), allocated from calibration under an error budget.

A ``T``-digit code of range ``A`` rounds ``|x|`` to the nearest multiple of the step
``delta = A / (2^T - 1)``; the rounding adds noise of RMS ``delta / sqrt(12)`` (a uniform
quantiser). Calibrated at ``A = max |x|``, the step follows the operand's largest value, and a
heavy-tailed operand (most values far below its maximum) gets far more precision than its error
needs, paid in spikes: a signed-digit code fires about one spike per three digits *below the
value's leading digit*, so every halving of ``delta`` costs every value a third of a spike more.

Under a ``budget`` ``eps`` the step is instead set so the rounding noise is ``eps`` of the
operand's RMS seen on the calibration batches, ``delta = sqrt(12) eps rms``, and the code's range
becomes ``max(A, delta (2^T - 1))``: the same ``T`` time steps, no value clamped that ``A`` would
keep, and the digits below ``delta`` never fire. When ``T`` digits cannot reach the budget's step
over ``[0, A]`` the range stays ``A`` (the full-precision code).
"""
from __future__ import annotations

import math
from typing import Optional

# relative RMS rounding noise per operand. Measured at T=16 on the four real models' quick subsets
# (benchmarks/real_models.py --quick --models smollm2 minilm gpt2-small dinov2 --T 16 --budget B):
# whole-model strict energy 0.61-0.63 at 2^-10, 0.54-0.56 at 2^-9, 0.47-0.49 at 2^-8, every metric
# within 0.5 points / 0.5 % of the ANN at each
DEFAULT_BUDGET = 2.0 ** -9


def check_budget(budget: Optional[float]) -> Optional[float]:
    """``budget`` must be ``None`` (every code at full precision) or a number in ``(0, 1)``; returns it."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget < 1.0:
        raise ValueError(f"budget must be None (full precision) or the relative RMS rounding noise per operand in "
                         f"(0, 1), e.g. 2**-10; got {budget!r}")
    return float(budget)


def budget_step(rms: float, budget: float) -> float:
    """The largest rounding step whose noise RMS ``delta / sqrt(12)`` is ``budget * rms``."""
    return math.sqrt(12.0) * budget * rms


def covering_range(A: float, step: Optional[float], T: int) -> float:
    """The range of a ``T``-digit code of step at least ``step`` that keeps ``[0, A]``:
    ``max(A, step (2^T - 1))`` (``A`` when ``step`` is ``None`` or 0)."""
    return max(A, step * (2.0 ** T - 1.0)) if step else A
