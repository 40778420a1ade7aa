"""Spike-driven top-k selection (a Mixture-of-Experts router's choice of experts).

Each candidate's score is coded by one MBE_Id neuron (Eq. 9) on the calibrated score range, its
binary digits fired most significant first. The top ``k`` follow from those spike trains alone by
bisection on spike counts (a radix selection, the counting form of a winner-take-all): at every
step a counter sums the spikes of the candidates still competing; if at most the remaining number
of places fired, all of them win and the silent ones compete on; otherwise the silent ones lose.
After ``T`` steps the candidates still competing have equal codes and the lowest indices take the
places left. The selection is exactly the input's top ``k`` wherever the ``k``-th and ``k+1``-th
scores differ by more than one code step (plus the error the scores carry); the values are the
scores at the chosen places (routing the spikes of the winners, no new arithmetic). A ``-inf`` score
marks a masked candidate (a router's excluded group): its neuron stays silent and it competes only for
places no finite score takes.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .base import DEFAULT_MODE, DEFAULT_T, CalibratedOp, float_function, working_dtype
from .coding import IdentityCoder, check_steps, total
from .observer import RangeObserver


class SpikingTopK(CalibratedOp):
    """``torch.topk(x, k, dim)`` (largest, sorted) with the selection made by spiking neurons.

    With ``lo``/``hi`` unset the operator starts ``calibrating`` (float topk, the score range
    observed); :meth:`finish_calibration` sets the code's range to the observed ``[lo, hi]`` widened by
    half its width on each side (scores beyond are clamped to its ends and counted). ``simulate``
    runs the neurons and the counting selection step by step; fast mode selects on the same digit
    patterns with a stable sort (equal patterns: lower index first), which is the same selection.
    The ``k`` winners are ordered by their patterns (ties by index). SOPs: one per spike (each
    reaches the counter); ``ann_flops``: one comparison per element.
    """

    operands = 2  # ranges (lo, hi)

    def __init__(self, k: int, dim: int = -1, T: int = DEFAULT_T, mode: str = DEFAULT_MODE) -> None:
        super().__init__(mode)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"SpikingTopK: k must be a positive integer, got {k!r}")
        self.k, self.dim, self.T = k, dim, check_steps(T)
        self.coder = IdentityCoder(self.T, 1.0, "binary")
        self.register_buffer("score_range", None)  # (lo, hi) of the code, set by calibration
        self.observer_lo, self.observer_hi = RangeObserver(), RangeObserver()
        self.calibrating = True

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingTopK":
        """The spiking twin of ``torch.topk`` (largest, sorted) with the arguments it takes after its
        input (``k, dim``). ``options``: ``T``, ``mode``."""
        float_function(cls, float_op, (torch.topk,), takes="torch.topk and its k, dim")
        return cls(*args, **options)

    @property
    def ranges(self) -> Optional[Tuple[float, float]]:
        return None if self.score_range is None else tuple(float(v) for v in self.score_range)

    def set_ranges(self, ranges: Tuple[float, float]) -> None:
        """Code scores on ``[lo, hi]`` and stop calibrating."""
        lo, hi = (float(v) for v in ranges)
        if not (torch.finfo(torch.float32).tiny < hi - lo < float("inf")):
            raise ValueError(f"SpikingTopK: the range (lo, hi) needs lo < hi, both finite, got {ranges!r}")
        self.score_range = torch.tensor([lo, hi], dtype=torch.float64)
        self.calibrating = False

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float, float]:
        if not self.observer_hi.samples:
            raise RuntimeError("SpikingTopK: finish_calibration() before any calibration forward")
        lo, hi = -self.observer_lo.max, self.observer_hi.max
        width = max(hi - lo, torch.finfo(torch.float32).tiny * 4)
        self.set_ranges((lo - width / 2, hi + width / 2))
        self.observer_lo, self.observer_hi = RangeObserver(), RangeObserver()
        return self.ranges

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.topk(x, self.k, dim=self.dim)

    def compute(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.check_input(x, "input", allow_neg_inf=True)
        if x.dim() == 0 or x.shape[self.dim] < self.k:
            raise ValueError(f"SpikingTopK: k={self.k} needs at least {self.k} candidates along dim {self.dim}, got "
                             f"shape {tuple(x.shape)}")
        if self.calibrating:
            scores = x.detach()
            self.observer_hi.observe(scores.amax(self.dim).clamp(min=0))
            self.observer_lo.observe(scores.masked_fill(scores == -math.inf, 0.0).amin(self.dim).clamp(max=0))
            return torch.topk(x, self.k, dim=self.dim)
        rows = x.movedim(self.dim, -1)
        if self.score_range is None:
            raise RuntimeError("SpikingTopK has no score range: calibrate it or call set_ranges((lo, hi))")
        xs = rows.to(working_dtype(rows, self.T))
        lo, hi = self.score_range.to(xs)
        masked = xs == -math.inf
        u = (xs - lo) / (hi - lo)
        self.note_clamped((((u < 0) & ~masked) | (u > 1)).sum(), "scores outside the calibrated range to its ends")
        u = u.clamp(0.0, 1.0)
        if self.simulating:
            spikes, _, counts = self.coder.simulate(u)
            chosen = self.select(spikes, ~masked)
            q = spikes @ (2.0 ** torch.arange(self.T - 1, -1, -1, dtype=u.dtype, device=u.device))
            q = torch.where(masked, -0.5, q)
            order = torch.sort(torch.where(chosen, q, -1.0), dim=-1, descending=True, stable=True).indices
            index = order[..., :self.k]
        else:
            q = self.coder.quantize(u)
            counts = self.coder.count(q, self.T)
            index = torch.sort(torch.where(masked, -1.0, q), dim=-1, descending=True, stable=True).indices[..., :self.k]
        spikes_fired = total(counts)
        self.record(spikes=spikes_fired, neurons=rows.numel(), sops=spikes_fired, ann_flops=rows.numel())
        values = rows.gather(-1, index)
        return values.movedim(-1, self.dim), index.movedim(-1, self.dim)

    def select(self, spikes: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The counting selection on binary digit spikes ``[..., n, T]`` (most significant first)
        among ``candidates`` (the unmasked places): a boolean mask of the ``k`` winners per row, the
        masked places filling by index any place the candidates leave."""
        alive = candidates.clone()
        chosen = torch.zeros_like(alive)
        need = torch.full(spikes.shape[:-2] + (1,), self.k, dtype=torch.long, device=spikes.device)
        for t in range(self.T):
            firing = alive & (spikes[..., t] > 0)
            fired = firing.sum(-1, keepdim=True)
            all_win = fired <= need
            chosen |= firing & all_win
            need = need - torch.where(all_win, fired, 0)
            alive = torch.where(all_win, alive & ~firing, firing)
        late = alive & (alive.long().cumsum(-1) <= need)
        chosen |= late
        need = need - late.sum(-1, keepdim=True)
        rest = ~chosen
        return chosen | (rest & (rest.long().cumsum(-1) <= need))

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, T={self.T}, range={self.ranges}, " + super().extra_repr()
