"""MBE_Id (Eq. 9): the identity-mapping MBE neuron that turns an operand into a spike train.

An operand is quantised to the integer ``q = floor(L |x| / A + 1/2)`` (``L = 2^T - 1``) and coded
by ``T`` digits of weights ``2^(T-1-k)``, most significant first. :data:`CODES` lists the digit
codes, each with its closed-form spike count: ``'binary'``, the binary digits of ``q`` (MBE_Id
itself, ``popcount(q)`` spikes), and ``'signed'``, the signed digits of the ternary
:class:`~spikingjelly_mbe.neurons.SignedDigitNode` (the non-adjacent form whenever it fits in ``T``
digits: about ``T / 3`` spikes where binary fires ``T / 2``). Both decode to the same ``q``, so
every value is the same bits; only spikes and spike coincidences differ. ``'ternary'`` codes the
operands of the weight layers and the products only (the split functions of Softmax, the norms and
the roots index a binary code's top digits): balanced-ternary digits of weights ``3^(T-1-k)``
(the same neuron in base 3), so ``T`` steps hold ``q <= (3^T - 1) / 2``, the precision of about
``1.58 T`` binary digits for about ``2/3`` of a spike per digit below the leading one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, TypeVar, Union

import torch
import torch.nn as nn

from .. import kernels
from ..neurons import MBENode, MultiBasisNode, SignedDigitNode
from ..neurons.signed_digit import largest_input

MAX_T = 32  # the longest spike trains (the digits q < 2^T and their popcount fit 64-bit integers)
# the longest trains the operators code in float32: q < 2^T is exact up to T = 24, but the products and sums
# of T-digit codes round at 2^-24, which can flip a digit of the next stage's code once T nears 24
FLOAT32_MAX_T = 16
MIN_RANGE, MAX_RANGE = 2.0 ** -126, 2.0 ** 126  # A, gain 1/A and weight A stay normal float32 numbers
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # what operators take
Count = Union[int, torch.Tensor]  # a count known on the host, or one still on the device
Stats = TypeVar("Stats")  # what a coding pass returns beside its code (a clamp count, or the kernel's statistics)
_POPCOUNT16 = torch.tensor([bin(i).count("1") for i in range(1 << 16)], dtype=torch.float32)


def popcount(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Number of set bits of the integers ``0 <= q < 2^bits`` (``bits <= 32``) held in a float tensor."""
    table = _table(_POPCOUNT16, q)
    if bits <= 16:
        return lookup(table, q)
    v = q.to(torch.int64)
    return lookup(table, v & 0xFFFF) + lookup(table, v >> 16)


def signed_digit_count(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Nonzero digits :class:`~spikingjelly_mbe.neurons.SignedDigitNode` fires for the integers
    ``0 <= q < 2^bits`` (``bits <= 32``) held in a float tensor: :func:`naf_digit_count`, looked up
    in its table of all ``2^bits`` patterns up to 16 bits (one gather)."""
    if bits > 16:
        return naf_digit_count(q, bits)
    if bits not in _SIGNED_COUNTS:
        _SIGNED_COUNTS[bits] = naf_digit_count(torch.arange(1 << bits, dtype=torch.float32), bits)
    return lookup(_table(_SIGNED_COUNTS[bits], q), q)


def naf_digit_count(q: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`signed_digit_count` in closed form.

    ``D = ((3q) ^ q) >> 1`` marks the digits of the non-adjacent form of ``q`` (bit ``bits`` set when
    its top digit is ``2^bits``). Below ``2^bits`` the count is ``popcount(D)``; otherwise the
    neuron fires ``2^(bits-1) + ... + 2^j`` for the NAF's ``2^bits - 2^j`` (``2^j`` the highest digit
    of ``D`` below ``2^bits``), so the digits ``j .. bits-1`` are filled: ``S`` smears that digit
    down, and ``top & ~(S >> 1)`` are the positions ``>= j``."""
    v = q.to(torch.int64)
    top = (1 << bits) - 1
    digits = ((3 * v) ^ v) >> 1
    low = digits & top
    smear = low
    for shift in (1, 2, 4, 8, 16):
        smear = smear | (smear >> shift)
    fill = ((digits >> bits) * top) & ~(smear >> 1)
    return popcount((low | fill).to(q.dtype), bits)


def ternary_digit_count(q: torch.Tensor, T: int) -> torch.Tensor:
    """Nonzero balanced-ternary digits of the integers ``0 <= q <= (3^T - 1) / 2`` held in a float
    tensor (what ``SignedDigitNode(T, base=3)`` fires): looked up in the table of every ``q`` up to
    ``T = 10`` (29,525 entries), beyond that :func:`balanced_ternary_weight` of ``q`` itself."""
    if T > TERNARY_TABLE_T:
        return balanced_ternary_weight(q.to(torch.int64), T).to(q.dtype)
    if T not in _TERNARY_COUNTS:
        _TERNARY_COUNTS[T] = balanced_ternary_weight(torch.arange(largest_input(T, 3) + 1), T).float()
    return lookup(_table(_TERNARY_COUNTS[T], q), q)


def balanced_ternary_weight(v: torch.Tensor, T: int) -> torch.Tensor:
    """Nonzero digits of the balanced-ternary form of the integers ``0 <= v <= (3^T - 1) / 2`` (int64):
    a remainder 2 is the digit -1 and a carry."""
    count = torch.zeros_like(v)
    for _ in range(T):
        r = v % 3
        count += (r != 0).long()
        v = (v - r) // 3 + (r == 2).long()
    return count


_SIGNED_COUNTS: Dict[int, torch.Tensor] = {}  # bits -> signed digit count of every pattern (float32, CPU)
_TERNARY_COUNTS: Dict[int, torch.Tensor] = {}  # T -> balanced-ternary digit count of every q (float32, CPU)
TERNARY_TABLE_T = 10  # ternary counts up to here come from a table of every q
_TABLE_COPIES: Dict[Tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _table(table: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table`` in ``like``'s dtype and device, copied once per process."""
    if table.dtype == like.dtype and table.device == like.device:
        return table
    key = (id(table), like.dtype, like.device)
    if key not in _TABLE_COPIES:
        _TABLE_COPIES[key] = table.to(device=like.device, dtype=like.dtype)
    return _TABLE_COPIES[key]


@dataclass(frozen=True)
class DigitCode:
    """A digit code: its closed-form spike ``count(q, bits)``, the ``neuron(T)`` that fires its
    digits step by step (``None``: MBE_Id itself, :func:`identity_node`), the digit ``base`` and the
    most steps ``max_T`` it codes exactly."""

    count: Callable[[torch.Tensor, int], torch.Tensor]
    neuron: Optional[Callable[[int], nn.Module]] = None
    base: int = 2
    max_T: int = 32

    def levels(self, T: int) -> int:
        """The largest ``q`` of ``T`` digits: ``2^T - 1`` (binary, signed) or ``(3^T - 1) / 2``."""
        return largest_input(T, self.base)


CODES: Dict[str, DigitCode] = {
    "binary": DigitCode(popcount),
    "signed": DigitCode(signed_digit_count, SignedDigitNode),
    "ternary": DigitCode(ternary_digit_count, lambda T: SignedDigitNode(T, base=3), base=3,
                         max_T=20),  # (3^20 - 1) / 2 < 2^31: the levels of binary T=32 at most
}
DEFAULT_CODE = "signed"  # the same values as binary with fewer spikes


def check_code(code: str, argument: str = "code") -> str:
    """``code`` must name an entry of :data:`CODES`; returns it (the error names ``argument``)."""
    if not isinstance(code, str) or code not in CODES:
        raise ValueError(f"{argument} must be one of {tuple(CODES)}, got {code!r}")
    return code


def check_flag(value: bool, argument: str) -> bool:
    """``value`` must be ``True`` or ``False``; returns it (the error names ``argument``)."""
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False, got {value!r}")
    return value


def code_levels(code: str, T: int, argument: str = "code") -> int:
    """The largest ``q`` of ``T`` digits of ``code`` (:meth:`DigitCode.levels`), with an error naming
    ``argument`` and ``T`` when the code cannot hold that many steps exactly."""
    digit_code = CODES[code]
    if T > digit_code.max_T:
        raise ValueError(f"{argument}={code!r} holds at most T={digit_code.max_T} steps exactly, got T={T}; give "
                         f"these operators at most {digit_code.max_T} digits (a T mapping, docs/digits.md) or pass "
                         f"{argument}={DEFAULT_CODE!r}")
    return digit_code.levels(T)


def equivalent_digits(code: str, T: int) -> float:
    """The binary digits of precision of ``T`` digits of ``code``, ``log2(levels + 1)``: ``T`` for a
    binary or signed code, ``log2((3^T + 1) / 2)`` for a ternary one (what sets its working dtype and
    its ``'auto'`` budget)."""
    return math.log2(code_levels(code, T) + 1)


def kernel_coded(code: str, T: int) -> bool:
    """Whether the compiled kernels (``c``, ``triton``) code ``T`` digits of ``code``: float32 codes of at
    most :data:`FLOAT32_MAX_T` equivalent binary digits (binary and signed ``T <= 16``, ternary
    ``T <= 10``); else the ``torch`` path."""
    return equivalent_digits(code, T) <= FLOAT32_MAX_T


def total(counts: torch.Tensor) -> torch.Tensor:
    """Exact sum of integer-valued counts, a float64 tensor on their device (read it only when needed:
    that waits for the device)."""
    return counts.sum(dtype=torch.float64)


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (rows of ``table``) for integer-valued ``index`` of any dtype and shape; an
    index outside the table (from a NaN input, reported by the operator's checks) reads its nearest row."""
    rows = index.to(torch.int32).flatten().clamp_(0, table.shape[0] - 1)
    return table.index_select(0, rows).view(*index.shape, *table.shape[1:])


def decode(node: MultiBasisNode, spikes: torch.Tensor) -> torch.Tensor:
    """``f_hat`` from a neuron's spikes ``[T, ..., N]``: ``o_n = sum_t d_n[t] s_n[t]`` (Eq. 7),
    then ``sum_n w_n o_n + b`` (Eq. 8), in the spikes' dtype."""
    dtype = spikes.dtype
    o = torch.einsum("t...n,nt->...n", spikes, node.intensity.to(dtype))
    return o @ node.weight.to(dtype) + node.bias.to(dtype)


def check_steps(T: int) -> int:
    """``T`` must be an integer in ``[1, MAX_T]``; returns it."""
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise ValueError(f"T must be an integer in [1, {MAX_T}], got {T!r}")
    return T


def identity_node(T: int, A: float) -> MBENode:
    """MBE_Id for magnitudes in ``[0, A]`` (Eq. 9), the binary expansion as an MBE neuron.

    One basis with ``tau_v = tau_r = tau_d = dt / ln 2`` and ``alpha = 1/2``, so
    ``Vth[t] = r[t] = d[t] = 2^-(t+1)`` (Eq. 4). With ``L = 2^T - 1`` levels above zero, input gain
    ``L / (2^T A)``, input offset ``2^-(T+1)`` (half a step: the neuron rounds to nearest and a zero
    input fires nothing) and weight ``2^T A / L``, it emits ``q A / L`` with
    ``q = floor(L x / A + 1/2)``: the uniform quantiser of ``[0, A]`` with ``2^T`` levels, error at
    most ``A / (2 L)``. Its spikes are the binary digits of ``q``, most significant first. The
    library's identity fits find this neuron up to one step (their fitted output bias of half a
    step is the input offset here); the exact form gives fast mode a closed form.
    """
    check_steps(T)
    if not (A > 0 and math.isfinite(A)):
        raise ValueError(f"the identity range A must be positive and finite, got {A!r}")
    if not MIN_RANGE <= A <= MAX_RANGE:
        raise ValueError(f"the identity range A={A!r} must lie in [2^-126, 2^126] (gain 1/A and weight A must be "
                         "normal float32 numbers); rescale the operand")
    tau, levels = [1.0 / math.log(2.0)], 2.0 ** T - 1
    return MBENode(tau, tau, tau, weight=[A * 2.0 ** T / levels], T=T, alpha=0.5, gain=[levels / (2.0 ** T * A)],
                   offset=[2.0 ** -(T + 1)], domain=(0.0, A))


# what an overflow-shifting code still clamps (and its operator counts): beyond even the largest shift
BEYOND_SHIFT = "beyond the largest power-of-two shift of the range (a range calibrated on zeros?)"


def finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with infinities (a finite input divided by a tiny range) replaced by the dtype's largest
    finite values, so the overflow shift can code them; NaN stays NaN."""
    limit = torch.finfo(x.dtype).max
    return x.clamp(-limit, limit)


def overflow_shift(x: torch.Tensor, A: float) -> torch.Tensor:
    """``2^e`` per element of ``x``, ``e >= 0`` the smallest exponent with ``|x| <= 2^e A`` (1 within
    ``[-A, A]``), at most the largest power of two of ``x``'s dtype (an element beyond even that, from
    a range calibrated on zeros, is clamped and counted by the coder). The quotient is taken in
    float64, so a float32 ``|x| / A`` cannot overflow (``A = 1``: no quotient)."""
    quotient = x.detach() if A == 1.0 else x.detach().double() / A
    # |q| (1 - eps/2), rounded, lies below 2^j exactly when |q| <= 2^j and never falls below 2^(j-1) when
    # |q| > 2^(j-1): its frexp exponent is the smallest e with |q| <= 2^e (an exact 2^j fits at e = j)
    _, exponent = torch.frexp(quotient * (1.0 - torch.finfo(quotient.dtype).eps / 2))
    top = math.frexp(torch.finfo(x.dtype).max)[1] - 1  # the largest finite power of two: 2^127 in float32
    return torch.exp2(exponent.clamp_(min=0, max=top).to(x.dtype))


def element_exponent(z: torch.Tensor, span: int) -> torch.Tensor:
    """``2^e`` per element of ``z`` (``|z| < 1``): ``e`` the exponent of ``|z|`` (``|z| 2^-e`` in
    ``[1/2, 1)``; 0 for ``z = 0``), within ``[-span, 0]``."""
    _, e = torch.frexp(z)
    return torch.exp2(e.clamp_(min=-span, max=0).to(z.dtype))


@dataclass
class SpikeCode:
    """An operand coded by MBE_Id: ``value = sum_t weights[t] * spikes[..., t]`` (Eq. 9).

    ``counts`` are the spikes per element. Simulate mode also keeps the ternary ``spikes``
    (``sign(x) * s[t]`` with ``s`` the code's digits, binary, signed or ternary) and the decoding
    ``weights`` ``d[t]`` (the output step times ``2^(T-1-t)``, or ``3^(T-1-t)`` in base 3).
    """

    value: torch.Tensor
    counts: torch.Tensor
    spikes: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None

    def shifted(self, shift: torch.Tensor) -> "SpikeCode":
        """The code with each element's spikes carrying its power of two ``shift`` (an exponent shift
        of that neuron's output weights, ``d[t] 2^e``): the value times ``shift``, the same counts."""
        spikes = None if self.spikes is None else self.spikes * shift[..., None]
        return SpikeCode(self.value * shift, self.counts, spikes, self.weights)


class IdentityCoder(nn.Module):
    """Sign-magnitude MBE_Id for operands in ``[-A, A]`` (Eq. 9), in one of the digit :data:`CODES`.

    ``|x|`` drives :func:`identity_node` and every spike carries the sign of ``x`` (a ternary
    spike; equivalently two bases with input gains ``+1/A`` and ``-1/A`` of which at most one
    fires). ``|x| > A`` is clamped to ``A`` and counted, or with ``shift_overflow`` coded at ``2^e A``,
    ``e >= 0`` the smallest exponent that holds it (:func:`overflow_shift`: one comparison, and an
    exponent shift of that neuron's spike weights; only what even the dtype's largest power of two
    cannot hold is clamped and counted). With ``element_span`` every element of ``|x| <= A`` is coded
    at its own exponent: ``x = 2^e u`` with ``e`` the exponent of ``|x| / A`` within ``[-element_span,
    0]`` (:func:`element_exponent`: a comparison, and an exponent shift of that neuron's spike weights,
    ``d[t] 2^e``), ``u`` takes the ``T`` digits, so a small element keeps ``T`` significant digits
    instead of rounding to 0 on the grid of ``A``. ``code='binary'`` fires the binary digits
    of ``q``; ``code='signed'`` feeds ``q`` to a :class:`~spikingjelly_mbe.neurons.SignedDigitNode`,
    whose signed digits (a negative one flips the spike's sign) decode to the same ``q``;
    ``code='ternary'`` quantises to ``(3^T - 1) / 2`` levels (input gain ``L / A``, output step
    ``A / L``, the binary neuron's scaling with that ``L``) and fires the balanced-ternary digits of
    ``q`` (``SignedDigitNode(T, base=3)``); only its input and output scaling is taken from
    :func:`identity_node`. ``simulate`` runs the code's neuron step by step and keeps the spikes;
    otherwise the same numbers come from ``q = floor(2^T u[0])`` and the code's closed-form count.
    """

    def __init__(self, T: int, A: float, code: str = DEFAULT_CODE, shift_overflow: bool = False,
                 floor: float = 0.0, element_span: Optional[int] = None) -> None:
        super().__init__()
        if element_span is not None and (isinstance(element_span, bool) or not isinstance(element_span, int)
                                         or element_span < 0):
            raise ValueError(f"element_span must be None or a non-negative int (the lowest element exponent is "
                             f"-element_span), got {element_span!r}")
        self.T, self.code, self.shift_overflow = T, check_code(code), bool(shift_overflow)
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor < A \
                or (floor and shift_overflow):
            raise ValueError(f"floor must be a number in [0, A={A!r}) (the smallest nonzero magnitude; 0: none), and 0 "
                             f"with shift_overflow, got {floor!r}")
        self.floor = float(floor)
        self.element_span = element_span
        digit_code = CODES[self.code]
        self.count, self.base, self.levels = digit_code.count, digit_code.base, code_levels(self.code, T)
        self.kernel_coded = kernel_coded(self.code, T)
        self.digits = None if digit_code.neuron is None else digit_code.neuron(T)
        self.set_range(A)

    def set_range(self, A: float) -> None:
        """Code ``[-A, A]`` (a centred code: ``0`` and ``[floor, A]`` in magnitude), ``A`` rounded to float32
        (the kernels compare operands with it in float32, the overflow shift in float64: an ``A`` between two
        float32 numbers would shift an operand in one and not the other): a new :func:`identity_node`, whose
        float32 parameters fast mode uses as Python numbers (scalars, never read from the device)."""
        A = float(torch.tensor(float(A), dtype=torch.float32)) if MIN_RANGE <= float(A) <= MAX_RANGE else A
        if self.floor and not self.floor < A:
            raise ValueError(f"a centred code's range A={A!r} (rounded to float32) must lie above its floor="
                             f"{self.floor!r}; widen A or lower the floor")
        self.A, self.centre, self.zero, self.reach = float(A), 0.0, 0.0, float(A)
        if self.floor:  # the band [floor, A] as centre +- reach, both float32 (reach rounded up: it holds the band)
            self.centre = float(torch.tensor((self.floor + A) / 2, dtype=torch.float32))
            self.reach = max(A - self.centre, self.centre - self.floor)
            rounded = torch.tensor(self.reach, dtype=torch.float32)
            self.reach = float(rounded if float(rounded) >= self.reach else torch.nextafter(rounded, rounded + 1))
            self.zero = float(torch.tensor(self.floor / 2, dtype=torch.float32))
        device = self.node.gain.device if "node" in self._modules else None
        self.node = identity_node(self.T, self.reach).to(device)
        self.gain, self.offset, self.weight = (float(p[0]) for p in (self.node.gain, self.node.offset, self.node.weight))
        if self.base != 2:  # the same scaling for (3^T - 1) / 2 levels: q = floor(|x| L / A + 1/2), value q A / L
            self.gain, self.weight = (float(torch.tensor(v, dtype=torch.float32)) for v in
                                      (self.levels / (2.0 ** self.T * self.reach),
                                       2.0 ** self.T * self.reach / self.levels))
        self._params: Dict[Tuple[torch.dtype, bool], Tuple[float, ...]] = {}
        for dtype in FLOAT_DTYPES:  # rounded here, not in a forward: torch.compile traces the lookup alone
            for clamp in (False, True):
                self.kernel_params(dtype, clamp)

    def get_extra_state(self) -> Dict[str, object]:
        """The range ``A`` and the settings a saved coder must share (``T``, ``code``, ``shift_overflow``,
        ``floor``, ``element_span``)."""
        return {"T": self.T, "code": self.code, "shift_overflow": self.shift_overflow, "floor": self.floor,
                "element_span": self.element_span, "A": self.A}

    def set_extra_state(self, state: Dict[str, object]) -> None:
        # saved before centred codes or element spans: floor 0, no span
        own, state = self.get_extra_state(), {"floor": 0.0, "element_span": None, **state}
        differ = [f"{k}={state[k]!r} (this coder: {own[k]!r})"
                  for k in ("T", "code", "shift_overflow", "floor", "element_span") if state[k] != own[k]]
        if differ:
            raise ValueError(f"IdentityCoder: the state_dict was saved with {', '.join(differ)}; load it into a model "
                             "converted with the same settings")
        if state["A"] != self.A:
            self.set_range(state["A"])

    def kernel_params(self, dtype: torch.dtype, clamp: bool) -> Tuple[float, ...]:
        """The neuron as six numbers, each used as a ``dtype`` scalar: input gain ``2^T g``, offset
        ``2^T c``, the clamp of ``|x| 2^T g`` (``A g 2^T`` rounded in ``dtype``, or ``inf``; a centred
        code's digits clamp at its ``reach``), the
        output step ``w 2^-T``, the top pattern (the code's levels: ``2^T - 1`` in base 2) and the code
        (its index in :data:`CODES`). Scaling by ``2^T`` is exact."""
        key = (dtype, clamp)
        if key not in self._params:
            scale = 2.0 ** self.T
            limit = float(torch.tensor(self.reach, dtype=dtype) * torch.tensor(self.gain, dtype=dtype)) * scale
            self._params[key] = (self.gain * scale, self.offset * scale, limit if clamp else math.inf,
                                 self.weight * 2.0 ** -self.T, float(self.levels), float(list(CODES).index(self.code)))
        return self._params[key]

    def row_params(self, dtype: torch.dtype) -> Tuple[float, ...]:
        """What the row kernels (Softmax, the norms) take: :meth:`kernel_params` (a centred code's clamped at
        its digits' ``reach``), the ``centre`` and the ``zero`` threshold (both 0 for a plain code)."""
        return self.kernel_params(dtype, bool(self.floor)) + (self.centre, self.zero)

    def quantize(self, x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """The digits ``q`` (the spikes read as a number in the code's base) the neuron fires for ``|x|``
        (clamped to ``A`` when ``clamp``): ``q = min(floor(2^T u[0]), levels)``, exactly what the
        greedy spike sequence encodes, computed in place on one new tensor from :meth:`kernel_params`
        (``|x g| = |x| g``)."""
        return self.digits_of(x, clamp, count=False)[0]

    def digits_of(self, x: torch.Tensor, clamp: bool, count: bool) -> Tuple[torch.Tensor, Count]:
        """:meth:`quantize`, and with ``count`` the number of elements beyond ``A`` (a device count)."""
        gain, offset, limit, _, top, _ = self.kernel_params(x.dtype, clamp)
        u = (x * gain).abs_()
        beyond = (u > limit).sum() if count else 0
        if clamp:
            u.clamp_(max=limit)
        return u.add_(offset).floor_().clamp_(max=top), beyond

    def encode(self, x: torch.Tensor, simulate: bool,
               bounds: Optional[Tuple[float, float]] = None) -> Tuple[SpikeCode, Count]:
        """``(code, number of elements clamped to A)``. ``bounds`` are ``(min x, max x)`` when the
        caller knows them by construction (an infinite end: unknown); a non-negative ``x`` skips the
        sign. Fast mode never reads ``x`` on the host: without known bounds it shifts (with
        ``shift_overflow``; the shift is 1 within ``[-A, A]``) and counts clamps on the device.
        Simulate mode measures the bounds it does not know."""
        if self.element_span is not None:
            low, high = (-math.inf, math.inf) if bounds is None else bounds
            reduced = (low if low >= 0 else min(low, -self.A), max(high, self.A))  # |x / shift| >= |x|, or in [A/2, A]
            return self.at_element_exponents(x, lambda u: self.encode_at(u, simulate, reduced))
        return self.encode_at(x, simulate, bounds)

    def at_element_exponents(self, x: torch.Tensor, code_at: Callable[[torch.Tensor], Tuple[SpikeCode, Stats]]
                             ) -> Tuple[SpikeCode, Stats]:
        """``x = 2^e u`` coded by ``code_at(u)`` with its spikes carrying ``2^e``: ``e`` the exponent of
        ``|x| / A`` within ``[-element_span, 0]`` (:func:`element_exponent`)."""
        shift = element_exponent(x / self.A, self.element_span)
        code, extra = code_at(x / shift)
        return code.shifted(shift), extra

    def encode_at(self, x: torch.Tensor, simulate: bool,
                  bounds: Optional[Tuple[float, float]] = None) -> Tuple[SpikeCode, Count]:
        """:meth:`encode` without the element exponents."""
        if simulate and not (bounds is not None and math.isfinite(bounds[0] - bounds[1])):
            low = -math.inf if bounds is None else bounds[0]
            bounds = (0.0, 0.0) if x.numel() == 0 else tuple(float(v) for v in torch.aminmax(x))
            bounds = (max(bounds[0], low), bounds[1])
        known = bounds is not None and math.isfinite(bounds[0] - bounds[1])
        if self.shift_overflow and (not known or max(-bounds[0], bounds[1]) > self.A) \
                and (not simulate or math.isfinite(bounds[0] - bounds[1])):
            shift = overflow_shift(x, self.A)
            code, clamped = self.code_within(x / shift, simulate, bounds if not known else (bounds[0], math.inf))
            return code.shifted(shift), clamped
        return self.code_within(x, simulate, bounds)

    def code_within(self, x: torch.Tensor, simulate: bool,
                    bounds: Optional[Tuple[float, float]] = None) -> Tuple[SpikeCode, Count]:
        """:meth:`encode` without the overflow shift: ``|x| > A`` is clamped and counted (unless the
        ``bounds`` keep ``x`` within ``[-A, A]``); with a ``floor``, :meth:`centred`."""
        if self.floor:
            return self.centred(x, simulate, bounds)
        return self.digits_code(x, simulate, bounds)

    def centred(self, x: torch.Tensor, simulate: bool,
                bounds: Optional[Tuple[float, float]] = None) -> Tuple[SpikeCode, Count]:
        """A centred code of ``x`` whose nonzero magnitudes lie in ``[floor, A]``: ``|x| = c + v`` with the
        centre ``c`` (``(floor + A) / 2``) a second basis of the neuron that fires once, with weight ``c``
        (Eq. 8's ``sum_n w_n o_n``), and ``v`` in ``[-reach, reach]`` (``reach = (A - floor) / 2``) the
        :meth:`digits_code` of ``T`` digits; every spike carries ``sign(x)``. The digits code half the
        band's width on both signs: two more binary digits than ``T`` digits on ``[0, A]`` spend on a band
        ``[A/2, A]``, for one spike more per nonzero element. ``|x| < floor / 2`` codes 0 and fires
        nothing (a zero among them); ``floor / 2 <= |x| < floor`` codes ``floor`` (the nearer of the
        two: error below ``floor / 2``); ``|x| > A`` is clamped to ``A`` and counted."""
        magnitude = x.abs()
        within = bounds is not None and max(-bounds[0], bounds[1]) <= self.A
        clamped = 0 if within else (magnitude > self.A).sum()
        live = magnitude >= self.zero
        offset = (magnitude - self.centre).clamp_(-self.reach, self.reach).mul_(live)
        code, _ = self.digits_code(offset, simulate, (-self.reach, self.reach))
        value = code.value.add_(self.centre).mul_(live).copysign_(x)
        counts = code.counts + live
        if not simulate:
            return SpikeCode(value, counts), clamped
        spikes = torch.cat([live.to(x.dtype)[..., None], code.spikes], -1).mul_(torch.sign(x)[..., None])
        weights = torch.cat([code.weights.new_tensor([self.centre]), code.weights])
        return SpikeCode(value, counts, spikes, weights), int(clamped)

    def digits_code(self, x: torch.Tensor, simulate: bool,
                    bounds: Optional[Tuple[float, float]] = None) -> Tuple[SpikeCode, Count]:
        """:meth:`code_within` by the ``T`` digits alone (sign-magnitude on ``[-reach, reach]``)."""
        signed = bounds is None or bounds[0] < 0
        within = bounds is not None and max(-bounds[0], bounds[1]) <= self.reach
        if simulate:
            clamped = 0 if within else int((x.abs() > self.reach).sum())
            magnitude = x.abs() if signed else x
            spikes, value, counts = self.simulate(magnitude.clamp(max=self.reach) if clamped else magnitude)
            if signed:
                sign = torch.sign(x)
                value, spikes = value * sign, spikes * sign[..., None]
            return SpikeCode(value, counts, spikes, self.decode_weights(x.dtype)), clamped
        if self.kernel_coded and (kernels.usable(x) or kernels.triton_usable(x)):
            code, stats = self.fused_at(x, shift=False)
            return code, stats[1]
        q, clamped = self.digits_of(x, clamp=not within, count=not within)
        counts = self.count(q, self.T)
        value = q.mul_(self.kernel_params(x.dtype, False)[3])  # = (q 2^-T) w, both scalings exact
        return SpikeCode(value.copysign_(x) if signed else value, counts), clamped

    def decode_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """The spike weights ``d[t]`` in ``dtype``: MBE_Id's (Eq. 9), in base 3 the output step times
        ``3^(T-1-t)``."""
        if self.base == 2:
            return self.node.decode_weights()[0].to(dtype)
        step = self.kernel_params(torch.float32, False)[3]
        return (self.digits.weights * step).to(dtype)

    def simulate(self, magnitude: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The code's neuron step by step on ``0 <= magnitude <= A``: ``(spikes [..., T], value,
        spikes per element)``. Binary: MBE_Id itself; signed: the signed digits of ``q``, scaled
        by the output step like fast mode's value (the same bits)."""
        if self.digits is None:
            s, value, counts = self.node.run(magnitude, keep_spikes=True)
            return s[..., 0].movedim(0, -1), value, counts
        s, q, counts = self.digits.run(self.quantize(magnitude), keep_spikes=True)
        return s.movedim(0, -1), q.mul_(self.kernel_params(magnitude.dtype, False)[3]), counts

    def fused(self, x: torch.Tensor, overflow: bool = True) -> Tuple[SpikeCode, List[Count]]:
        """Fast mode in one compiled pass (the ``c`` or ``triton`` backend, :mod:`spikingjelly_mbe.kernels`): the
        code and ``[spikes, inputs with |x| > A, NaN/Inf]``. It always clamps, which changes nothing
        for ``|x| <= A`` (rounding is monotone), and always carries the sign, which only turns the
        zero of a ``-0.0`` input into ``-0.0``. With ``shift_overflow`` (unless ``overflow=False``) inputs beyond
        ``A`` are coded again at their :func:`overflow_shift`; only what even that cannot hold is
        clamped and counted. With ``element_span`` it codes ``x`` at the element exponents first. A centred
        coder (``floor``) is refused: its code is the centre plus the digits of the offset (:meth:`encode`)."""
        if self.floor:
            raise ValueError(f"IdentityCoder(floor={self.floor:g}): fused() codes the T digits of [-A, A] alone, not "
                             "a centred code (its centre plus the digits of |x| - centre); call encode()")
        if self.element_span is not None:
            return self.at_element_exponents(x, lambda u: self.fused_at(u, overflow))
        return self.fused_at(x, overflow)

    def fused_at(self, x: torch.Tensor, shift: bool = True) -> Tuple[SpikeCode, List[Count]]:
        """:meth:`fused` without the element exponents: the ``T`` digits alone (a centred code's offset too)."""
        self.check_kernel_coded()
        if kernels.triton_usable(x):
            value, counts, stats, _ = self.triton_code(x, shift, counts=True)
            return SpikeCode(value, counts), [stats[0], stats[1], stats[2]]
        value, counts, stats = kernels.encode(x, self.kernel_params(x.dtype, True), self.reach)
        if shift and self.shift_overflow and stats[1] and not stats[2]:
            shifts = overflow_shift(x, self.A)
            value, counts, stats = kernels.encode(x / shifts, self.kernel_params(x.dtype, True), self.reach)
            return SpikeCode(value, counts).shifted(shifts), stats
        return SpikeCode(value, counts), stats

    def triton_code(self, x: torch.Tensor, shift: bool = True, counts: bool = False, scale: Optional[torch.Tensor] = None,
                    inner: int = 1, **options: object) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`fused` on the ``triton`` backend, :func:`~spikingjelly_mbe.kernels.triton_ops.code`'s
        outputs as they come (``scale``, ``inner``: per-channel ranges; ``options``: its rectifier, SOP
        and column-sum arguments); at the overflow shift when ``shift`` and ``shift_overflow``."""
        self.check_kernel_coded()
        return kernels.load_triton().code(x, scale, None, inner, list(self.kernel_params(torch.float32, True)),
                                          self.reach, shift and self.shift_overflow, counts, **options)

    def check_kernel_coded(self) -> None:
        """The compiled kernels code float32 digits of at most 16 equivalent binary digits (:func:`kernel_coded`)."""
        if not self.kernel_coded:
            raise ValueError(f"IdentityCoder(T={self.T}, code={self.code!r}): beyond the compiled kernels' float32 "
                             "codes; call encode(), which takes the torch path")

    def extra_repr(self) -> str:
        span = "" if self.element_span is None else f", element_span={self.element_span}"
        return (f"T={self.T}, A={self.A:g}, code={self.code!r}, shift_overflow={self.shift_overflow}, "
                f"floor={self.floor:g}{span}")
