"""Ternary identity neuron: the signed-digit code of an integer, most significant digit first.

MBE_Id (paper Eq. 9) fires the binary digits of the quantised magnitude ``q``: at step ``k`` it
spikes when the residual reaches the digit weight ``w_k = 2^(T-1-k)`` and subtracts it, so the
spikes are ``popcount(q)``, about ``T / 2`` for large ``q``. This neuron integrates the same ``q``
but may also fire a negative spike (a ternary spike, as the sign-magnitude operands already
carry), with symmetric thresholds ``theta_k``::

    s[k]   = +1 if u[k] >= theta_k,  -1 if u[k] <= -theta_k,  else 0
    u[k+1] = u[k] - w_k s[k]
    o      = sum_k w_k s[k]

For an integer ``u[0] = q`` with ``|q| <= 2^T - 1`` every ``theta_k`` in ``(0, w_k]`` leaves
``u[T] = 0``, so ``o = q`` exactly: before step ``k`` the residual satisfies
``|u[k]| <= 2 w_k - 1`` (the largest sum of the digits left), and firing or not keeps it. The default
``theta_k = 2 w_k / 3`` fires a digit only when the residual is nearer ``+-w_k`` than the remaining
digits can reach comfortably; it gives the fewest nonzero digits of every ``q`` among all
representations with ``T`` signed digits (checked exhaustively for ``T <= 12`` in
``tests/test_signed_digits.py``): the non-adjacent form (NAF, weight ``popcount((3q ^ q) >> 1)``,
about ``T / 3``) whenever the NAF of ``q`` has at most ``T`` digits, i.e. ``q < 2^(T+1) / 3``.
Above that the NAF would need a digit ``2^T``; staying within ``T`` steps, the neuron fires
``2^T - 2^j = 2^(T-1) + ... + 2^j`` instead of the NAF's ``2^T - 2^j`` (``2^j`` the NAF's
second digit) and the NAF's digits below ``j``.

With ``base=3`` the digit weights are ``w_k = 3^(T-1-k)`` and the thresholds ``theta_k = w_k / 2``:
the neuron fires the balanced-ternary digits of every integer ``|q| <= (3^T - 1) / 2`` (before step
``k`` the residual satisfies ``|u[k]| <= (3 w_k - 1) / 2``; rounding it to the nearest multiple of
``w_k`` leaves at most ``(w_k - 1) / 2``), the only representation with ``T`` digits in
``{-1, 0, 1}``. ``T`` steps then hold ``3^T`` levels instead of ``2^(T+1) - 1``: the same
latency codes about ``1.58 T`` bits, at about ``2/3`` of a spike per digit below the leading one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from spikingjelly.activation_based import base

MAX_DIGITS = {2: 52, 3: 32}  # per base: integers and residuals stay exact in float64 (3^32 < 2^51)


def default_thresholds(T: int, base: int = 2) -> torch.Tensor:
    """``theta_k = 2 w_k / 3`` in base 2, the thresholds of the fewest nonzero digits; ``w_k / 2`` in
    base 3, the balanced-ternary digits (float64)."""
    return digit_weights(T, base) * (2.0 / 3.0 if base == 2 else 0.5)


def digit_weights(T: int, base: int = 2) -> torch.Tensor:
    """``w_k = base^(T-1-k)``, ``k = 0 .. T-1`` (float64)."""
    return torch.pow(float(base), torch.arange(T - 1, -1, -1, dtype=torch.float64))


def largest_input(T: int, base: int = 2) -> int:
    """The largest ``|q|`` that ``T`` digits of ``base`` hold: ``2^T - 1``, or ``(3^T - 1) / 2``."""
    return 2 ** T - 1 if base == 2 else (3 ** T - 1) // 2


def threshold_bounds(weights: torch.Tensor, base: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``: the thresholds that code every integer exactly satisfy ``low < theta_k <= high``:
    ``(0, w_k]`` in base 2, ``((w_k - 1) / 2, (w_k + 1) / 2]`` in base 3."""
    if base == 2:
        return torch.zeros_like(weights), weights
    return (weights - 1) / 2, (weights + 1) / 2


class SignedDigitNode(base.MemoryModule):
    """The ternary identity neuron of :mod:`.signed_digit` over ``T`` steps of digit ``base`` (2 or 3).

    ``thresholds``: ``theta_k`` for ``k = 0 .. T-1``, each within :func:`threshold_bounds` (default
    :func:`default_thresholds`). Single-step input ``q`` (integers with ``|q| <=``
    :func:`largest_input`) is the
    initial potential and the output is the decoded value ``o = q``; multi-step input
    ``[T, ...]`` is summed over time into the initial potential (SpikingJelly's ``FewSpikeNode``
    convention) and the output is the weighted spike sequence ``w_k s[k]``, ``[T, ...]``. Memories
    ``spike_count`` (nonzero digits fired) and ``num_inputs`` are zeroed by ``functional.reset_net``.
    """

    def __init__(self, T: int, thresholds: Optional[Sequence[float]] = None, step_mode: str = "s",
                 base: int = 2) -> None:
        super().__init__()
        if base not in MAX_DIGITS or isinstance(base, bool):
            raise ValueError(f"base must be one of {tuple(MAX_DIGITS)} (binary signed digits, balanced ternary), "
                             f"got {base!r}")
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_DIGITS[base]:
            raise ValueError(f"T must be an integer in [1, {MAX_DIGITS[base]}] in base {base}, got {T!r}")
        weights = digit_weights(T, base)
        theta = default_thresholds(T, base) if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
        low, high = threshold_bounds(weights, base)
        if theta.shape != (T,) or not bool(((theta > low) & (theta <= high)).all()):
            bound = "0 < theta_k <= w_k = 2^(T-1-k)" if base == 2 else "(w_k - 1)/2 < theta_k <= (w_k + 1)/2, w_k = 3^(T-1-k)"
            raise ValueError(f"thresholds must be {T} numbers with {bound}; got "
                             f"{theta.tolist() if theta.dim() == 1 else theta!r}")
        self.base = base
        self.register_buffer("weights", weights)
        self.register_buffer("thresholds", theta.clone())
        self.step_mode = step_mode
        self.register_memory("spike_count", 0)
        self.register_memory("num_inputs", 0)

    @property
    def T(self) -> int:
        return self.weights.numel()

    def check_input(self, q: torch.Tensor) -> None:
        """``q`` must be a float tensor of integers with ``|q| <=`` :func:`largest_input`."""
        if not isinstance(q, torch.Tensor) or not torch.is_floating_point(q):
            raise TypeError(f"SignedDigitNode expects a floating point tensor of integers, got "
                            f"{getattr(q, 'dtype', type(q).__name__)}")
        top = largest_input(self.T, self.base)
        if q.numel() and not bool(((q == q.round()) & (q.abs() <= top)).all()):
            raise ValueError(f"SignedDigitNode(T={self.T}, base={self.base}) codes integers q with |q| <= {top:g} exactly; "
                             "got a non-integer or larger input (quantise it first, e.g. IdentityCoder.quantize)")

    def run(self, q: torch.Tensor, keep_spikes: bool) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Fire step by step on ``u[0] = q``: ``(spikes [T, *q.shape] in {-1, 0, 1} or None, o, nonzero
        digits per element)``, in ``q``'s dtype (exact: every residual is an integer within the input's bound)."""
        self.check_input(q)
        u, out, count, spikes = q.clone(), torch.zeros_like(q), torch.zeros_like(q), []
        for w, theta in zip(self.weights.tolist(), self.thresholds.tolist()):
            s = (u >= theta).to(q.dtype) - (u <= -theta).to(q.dtype)
            u -= w * s
            out += w * s
            count += s.abs()
            if keep_spikes:
                spikes.append(s)
        fired = int(count.sum(dtype=torch.float64))
        self.spike_count = self.spike_count + fired
        self.num_inputs = self.num_inputs + q.numel()
        return (torch.stack(spikes) if keep_spikes else None), out, count

    def single_step_forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.run(q, keep_spikes=False)[1]

    def multi_step_forward(self, q_seq: torch.Tensor) -> torch.Tensor:
        if q_seq.dim() < 1 or q_seq.shape[0] != self.T:
            raise ValueError(f"multi-step input must have shape [T={self.T}, ...], got {tuple(q_seq.shape)}")
        spikes = self.run(q_seq.sum(0), keep_spikes=True)[0]
        return spikes * self.weights.to(spikes.dtype).view(-1, *([1] * (spikes.dim() - 1)))

    def extra_repr(self) -> str:
        return f"T={self.T}, base={self.base}, step_mode={self.step_mode!r}"
