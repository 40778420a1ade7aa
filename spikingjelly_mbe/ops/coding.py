"""MBE_Id (Eq. 9): the identity-mapping MBE neuron that turns an operand into a spike train."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..neurons import MBENode

MAX_T = 24  # q < 2^T stays an exact integer in float32
_POPCOUNT16 = torch.tensor([bin(i).count("1") for i in range(1 << 16)], dtype=torch.float32)


def popcount(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Number of set bits of the integers ``0 <= q < 2^bits`` (``bits <= 32``) held in a float tensor."""
    v = q.to(torch.int64)
    table = _POPCOUNT16.to(device=q.device, dtype=q.dtype)
    if bits <= 16:
        return torch.take(table, v)
    return torch.take(table, v & 0xFFFF) + torch.take(table, v >> 16)


def check_steps(T: int) -> int:
    """``T`` must be an integer in ``[1, MAX_T]``; returns it."""
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise ValueError(f"T must be an integer in [1, {MAX_T}], got {T!r}")
    return T


def identity_node(T: int, A: float) -> MBENode:
    """MBE_Id for magnitudes in ``[0, A]`` (Eq. 9), the binary expansion as an MBE neuron.

    One basis with ``tau_v = tau_r = tau_d = dt / ln 2`` and ``alpha = 1/2``, so
    ``Vth[t] = r[t] = d[t] = 2^-(t+1)`` (Eq. 4); input gain ``1/A``; input offset ``2^-(T+1)``
    (half a step, so the neuron rounds to nearest and a zero input fires nothing); weight ``A``.
    It emits ``A * 2^-T * q`` with ``q = min(round(2^T x / A), 2^T - 1)``, and its spikes are the
    binary digits of ``q``, most significant first. This is the optimum the identity fits of the
    library find (the fitted output bias of half a step becomes the input offset here).
    """
    check_steps(T)
    if not (A > 0 and math.isfinite(A)):
        raise ValueError(f"the identity range A must be positive and finite, got {A!r}")
    tau = [1.0 / math.log(2.0)]
    return MBENode(tau, tau, tau, weight=[A], T=T, alpha=0.5, gain=[1.0 / A], offset=[2.0 ** -(T + 1)],
                   domain=(0.0, A))


@dataclass
class SpikeCode:
    """An operand coded by MBE_Id: ``value = sum_t weights[t] * spikes[..., t]`` (Eq. 9).

    ``spikes`` (simulate mode only) are ternary, ``sign(x) * s[t]`` with ``s`` binary; ``counts``
    are the spikes per element.
    """

    value: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor
    spikes: Optional[torch.Tensor] = None


class IdentityCoder(nn.Module):
    """Sign-magnitude MBE_Id for operands in ``[-A, A]``.

    ``|x|`` drives :func:`identity_node` and every spike carries the sign of ``x`` (a ternary
    spike; equivalently two bases with input gains ``+1/A`` and ``-1/A`` of which at most one
    fires). ``|x| > A`` is clamped to ``A`` and counted. ``simulate`` runs the neuron step by
    step and keeps the spikes; otherwise the same numbers come from ``q = floor(2^T u[0])``.
    """

    def __init__(self, T: int, A: float) -> None:
        super().__init__()
        self.node = identity_node(T, float(A))
        self.T, self.A = T, float(A)

    def quantize(self, magnitude: torch.Tensor) -> torch.Tensor:
        """The neuron's digits ``q`` (its spikes read as a binary number) for ``0 <= magnitude <= A``:
        ``q = min(floor(2^T u[0]), 2^T - 1)``, exactly what the greedy spike sequence encodes."""
        u0 = magnitude * self.node.gain.to(magnitude.dtype) + self.node.offset.to(magnitude.dtype)
        return torch.floor(u0 * 2.0 ** self.T).clamp_(0, 2 ** self.T - 1)

    def clamp(self, magnitude: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """``magnitude`` clamped to ``[0, A]`` and the number of elements that were above ``A``."""
        if magnitude.numel() == 0 or float(magnitude.max()) <= self.A:
            return magnitude, 0
        return magnitude.clamp(max=self.A), int((magnitude > self.A).sum())

    def encode(self, x: torch.Tensor, simulate: bool) -> Tuple[SpikeCode, int]:
        """``(code, number of clamped elements)``."""
        magnitude, clamped = self.clamp(x.abs())
        weights = self.node.decode_weights()[0].to(x.dtype)
        if simulate:
            s, value, counts = self.node.run(magnitude, keep_spikes=True)
            spikes = s[..., 0].movedim(0, -1) * torch.sign(x)[..., None]
            return SpikeCode(torch.copysign(value, x), counts, weights, spikes), clamped
        q = self.quantize(magnitude)
        value = q * 2.0 ** -self.T * self.node.weight.to(x.dtype)
        return SpikeCode(torch.copysign(value, x), popcount(q, self.T), weights), clamped

    def extra_repr(self) -> str:
        return f"T={self.T}, A={self.A:g}"
