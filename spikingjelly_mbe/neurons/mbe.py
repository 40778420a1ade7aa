"""Multi-basis Exponential Decay neuron (paper Eqs. 4-8)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch

from .multibasis import Domain, MultiBasisNode, finite_number, positive_int


def decay_table(alpha: float, tau: torch.Tensor, T: int, dt: float, decay: bool = True) -> torch.Tensor:
    """``Para(tau_n, t) = alpha * exp(-t * dt / tau_n)`` for ``t < T`` (Eq. 4): ``[N, T]``.

    With ``decay=False`` the parameter stays ``alpha`` at every step (the Fig. 6(c) ablation).
    """
    t = torch.arange(T, dtype=torch.get_default_dtype())
    if not decay:
        return torch.full((tau.numel(), T), float(alpha))
    ratio = torch.exp(-dt / tau.to(t.dtype))  # per-step decay factor; 1/2 for tau = dt / ln 2
    return alpha * ratio[:, None] ** t[None, :]


class MBENode(MultiBasisNode):
    """MBE neuron: ``N`` bases whose threshold, reset and intensity decay as in Eq. 4.

    Basis ``n`` has time constants ``tau_v[n]``, ``tau_r[n]``, ``tau_d[n]`` sharing the scale
    ``alpha`` and step ``dt``; the outputs are mixed by the basis weights ``w`` (Eq. 8). Beyond
    the paper, each basis has an input gain and offset (``u_n[0] = gain_n * x + offset_n``; a
    negative gain covers negative lobes with positive thresholds) and the neuron has an output
    bias; see :mod:`spikingjelly_mbe.neurons.multibasis` (also for ``backend`` and
    ``surrogate_function``).
    """

    def __init__(self, tau_v: Sequence[float], tau_r: Sequence[float], tau_d: Sequence[float],
                 weight: Sequence[float], T: int, alpha: float = 1.0, dt: float = 1.0,
                 gain: Sequence[float] | None = None, offset: Sequence[float] | None = None,
                 bias: float = 0.0, decay: bool = True, domain: Domain = None,
                 step_mode: str = "s", backend: str = "torch",
                 surrogate_function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        taus = [torch.as_tensor(v, dtype=torch.get_default_dtype()).flatten()
                for v in (tau_v, tau_r, tau_d)]
        n = taus[0].numel()
        if any(t.numel() != n for t in taus):
            raise ValueError("tau_v, tau_r and tau_d need one entry per basis")
        if decay and not all(bool((t > 0).all()) for t in taus):
            raise ValueError("time constants must be positive")
        T = positive_int("T", T)
        if not (finite_number("alpha", alpha) > 0 and finite_number("dt", dt) > 0):
            raise ValueError(f"need T >= 1, alpha > 0, dt > 0; got T={T}, alpha={alpha}, dt={dt}")
        vth, reset, intensity = (decay_table(alpha, t, T, dt, decay) for t in taus)
        super().__init__(vth, reset, intensity,
                         [1.0] * n if gain is None else gain,
                         [0.0] * n if offset is None else offset,
                         weight, bias, domain, step_mode, backend, surrogate_function)
        self.register_buffer("tau", torch.stack(taus))
        self.alpha, self.dt, self.decay = float(alpha), float(dt), bool(decay)

    def get_extra_state(self) -> Dict[str, Any]:
        """The domain and the Eq. 4 constants (``alpha``, ``dt``, ``decay``) travel with ``state_dict``."""
        return {**super().get_extra_state(), "alpha": self.alpha, "dt": self.dt, "decay": self.decay}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.alpha, self.dt, self.decay = float(state["alpha"]), float(state["dt"]), bool(state["decay"])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha:g}, dt={self.dt:g}, decay={self.decay}"
