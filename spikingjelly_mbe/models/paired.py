"""How sure a measured loss is: the SNN's loss against its ANN on the same held-out units, with a 95 %
confidence interval from the paired differences.

Each held-out unit ``i`` (an image or review for accuracy, a window of tokens for perplexity) gives
what the SNN lost on it, ``D_i``, over ``N_i`` scored items: ``D_i = correct_ann - correct_snn``
with ``N_i = 1`` for accuracy, ``D_i = sum of (nll_snn - nll_ann)`` over the window's ``N_i`` scored
tokens for perplexity. The loss is a function of the ratio ``r = sum D / sum N``: ``100 r``
accuracy points, or ``100 (exp(r) - 1)`` percent of perplexity (:func:`.tasks.metric_loss`). The
ratio's standard error is the ratio estimator's,
``se^2 = sum_i (D_i - r N_i)^2 / (n (n - 1) Nbar^2)`` (for ``N_i = 1`` the paired t-test's
``s^2 / n``), and the interval is the loss at ``r -+ t se``, ``t`` Student's 0.975 quantile with
``n - 1`` degrees of freedom. A window is the unit of a language model because the tokens of one
window share their context, so they are not independent; the windows of one stream are taken as
independent. The sums fold by addition, batch by batch and across ranks.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch

Sums = Dict[str, float]
Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile
# the loss as a function of the mean difference per scored item, per metric with a paired interval
LOSS_OF_RATIO: Dict[str, Callable[[float], float]] = {
    "accuracy": lambda r: 100.0 * r,
    "perplexity": lambda r: 100.0 * math.expm1(r)}


def unit_sums(lost: torch.Tensor, scored: torch.Tensor) -> Sums:
    """The foldable sums of one batch's units: ``lost`` (``D_i``) and ``scored`` (``N_i``) per unit."""
    d, n = lost.double().reshape(-1), scored.double().reshape(-1)
    return {"pair_units": float(d.numel()), "pair_d": float(d.sum()), "pair_n": float(n.sum()),
            "pair_dd": float((d * d).sum()), "pair_nn": float((n * n).sum()), "pair_dn": float((d * n).sum())}


def t_within(t: float, dof: int) -> float:
    """``P(|T| <= t)`` for Student's ``T`` with ``dof`` degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3 and 26.7.4; ``theta = atan(t / sqrt(dof))``)."""
    theta = math.atan(t / math.sqrt(dof))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2:
        for k in range(1, (dof - 1) // 2):  # 1 + 2/3 c^2 + (2 4)/(3 5) c^4 + ...
            term *= c2 * 2 * k / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0))
    for k in range(1, dof // 2):  # 1 + 1/2 c^2 + (1 3)/(2 4) c^4 + ...
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile, ``P(|T| <= t) = 0.95`` solved by bisection on :func:`t_within`."""
    if dof < 1:
        raise ValueError(f"dof must be a positive number of degrees of freedom, got {dof}")
    lo, hi = Z_975, 13.0  # the normal's quantile and above dof=1's 12.71
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_within(mid, dof) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def loss_interval(metric: str, sums: Sums) -> Optional[Tuple[float, float]]:
    """The loss's 95 % confidence interval from :func:`unit_sums` folded over the held-out set;
    ``None`` for a metric without units (agreement, cosine) or fewer than two units."""
    if metric not in LOSS_OF_RATIO or sums.get("pair_units", 0.0) < 2 or not sums.get("pair_n"):
        return None
    n = sums["pair_units"]
    r = sums["pair_d"] / sums["pair_n"]
    residual = max(sums["pair_dd"] - 2 * r * sums["pair_dn"] + r * r * sums["pair_nn"], 0.0)  # sum (D - r N)^2
    se = math.sqrt(residual / (n * (n - 1))) / (sums["pair_n"] / n)
    half = t_quantile_975(int(n) - 1) * se
    loss = LOSS_OF_RATIO[metric]
    return loss(r - half), loss(r + half)


__all__ = ["LOSS_OF_RATIO", "loss_interval", "t_quantile_975", "t_within", "unit_sums"]
