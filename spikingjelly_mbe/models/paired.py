"""How sure a measured loss is: the SNN's loss against its ANN on the same held-out units, with a 95 %
confidence interval from the paired differences.

Each held-out unit ``i`` (an image or review for accuracy, a window of tokens for perplexity) gives
what the SNN lost on it, ``D_i``, over ``N_i`` scored items: ``D_i = correct_ann - correct_snn``
with ``N_i = 1`` for accuracy, ``D_i = sum of (nll_snn - nll_ann)`` over the window's ``N_i`` scored
tokens for perplexity (:func:`.tasks.metric_loss`'s loss is ``100 sum D / sum N`` accuracy points,
``100 (exp(sum D / sum N) - 1)`` percent of perplexity). The sums fold by addition, batch by batch and
across ranks.

* **Accuracy** (:func:`matched_interval`): the items only one model gets right decide it, ``b`` lost
  and ``c`` won back (``b - c = sum D``, ``b + c = sum D^2``). Bonett and Price's adjusted Wald
  interval for a difference of paired proportions adds one to each (``p12 = (b + 1) / (n + 2)``,
  ``p21 = (c + 1) / (n + 2)``, ``var = (p12 + p21 - (p12 - p21)^2) / (n + 2)``): it keeps 95 %
  coverage where a conversion changes only a few items, where the plain paired t-interval shrinks to
  nothing.
* **Perplexity** (:func:`ratio_interval`): the ratio ``r = sum D / sum N`` with the ratio estimator's
  standard error ``se^2 = sum_i (D_i - r N_i)^2 / (n (n - 1) Nbar^2)`` and Student's 0.975 quantile of
  ``n - 1`` degrees of freedom; the loss at ``r -+ t se``. A window is the unit because its tokens share
  their context; consecutive windows of one document are taken as independent, so the interval is
  somewhat narrower than one that grouped them by document.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Tuple

import torch

Sums = Dict[str, float]
Interval = Tuple[float, float]
Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile


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


@functools.lru_cache(maxsize=None)
def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile, ``P(|T| <= t) = 0.95`` solved by bisection on :func:`t_within`."""
    if dof < 1:
        raise ValueError(f"dof must be a positive number of degrees of freedom, got {dof}")
    lo, hi = Z_975, 13.0  # the normal's quantile and above dof=1's 12.71
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_within(mid, dof) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def matched_interval(sums: Sums) -> Interval:
    """Accuracy points lost, Bonett-Price adjusted Wald interval from the discordant items (module docstring)."""
    n, lost, changed = sums["pair_units"], sums["pair_d"], sums["pair_dd"]
    b, c = (changed + lost) / 2, (changed - lost) / 2
    p12, p21 = (b + 1) / (n + 2), (c + 1) / (n + 2)
    half = Z_975 * math.sqrt(max(p12 + p21 - (p12 - p21) ** 2, 0.0) / (n + 2))
    return max(-100.0, 100 * (p12 - p21 - half)), min(100.0, 100 * (p12 - p21 + half))


def ratio_interval(sums: Sums) -> Interval:
    """Perplexity increase in percent at the ratio estimator's t-interval (module docstring)."""
    n = sums["pair_units"]
    r = sums["pair_d"] / sums["pair_n"]
    residual = max(sums["pair_dd"] - 2 * r * sums["pair_dn"] + r * r * sums["pair_nn"], 0.0)  # sum (D - r N)^2
    half = t_quantile_975(int(n) - 1) * math.sqrt(residual / (n * (n - 1))) / (sums["pair_n"] / n)
    return 100 * math.expm1(r - half), 100 * math.expm1(r + half)


INTERVALS: Dict[str, Callable[[Sums], Interval]] = {"accuracy": matched_interval, "perplexity": ratio_interval}


def loss_interval(metric: str, sums: Sums) -> Optional[Interval]:
    """The loss's 95 % confidence interval from :func:`unit_sums` folded over the held-out set; ``None``
    for a metric without units (agreement, cosine), fewer than two units, or non-finite sums."""
    keys = ("pair_units", "pair_d", "pair_n", "pair_dd", "pair_nn", "pair_dn")
    if metric not in INTERVALS or not all(math.isfinite(sums.get(k, math.nan)) for k in keys) \
            or sums["pair_units"] < 2 or sums["pair_n"] <= 0:
        return None
    return INTERVALS[metric](sums)


__all__ = ["INTERVALS", "loss_interval", "matched_interval", "ratio_interval", "t_quantile_975", "t_within", "unit_sums"]
