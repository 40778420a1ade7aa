"""Fused Triton kernels for fast mode (the ``triton`` backend of :mod:`.backend`), as torch custom ops.

Each kernel does one operator's elementwise pass in one launch, with the arithmetic of the eager
fast path in float32 (half-precision inputs are read as float32), so it returns the same bits:

* ``sjmbe::code``: the sign-magnitude MBE_Id code of an operand (Eq. 9; binary or signed digits,
  :data:`~spikingjelly_mbe.ops.coding.CODES`), optionally per channel ``(x - c_k) / A_k`` in,
  decoded ``value A_k + c_k`` out (a weight layer's input), and optionally each element's overflow
  shift ``2^e`` (``e >= 0`` the smallest exponent with ``|x| <= 2^e A``); spikes per element on
  request;
* ``sjmbe::lookup``: a fitted neuron's :class:`~spikingjelly_mbe.neurons.NeuronTable` (bucket, binary
  lifting, entry);
* ``sjmbe::bases``: a multi-basis neuron's whole ``T``-step loop (Eqs. 5-8) with the membranes in
  registers, emitting the weighted spike sequence ``[T, ...]``.

Statistics (spikes, clamped or out-of-domain inputs, NaN/Inf inputs) are summed on the device into
an ``int64`` tensor that the caller reads when it needs them. Registered with
``torch.library.custom_op`` so torch.compile, CUDA graphs, the profiler and dispatch counters see one
op per kernel. Kernels are compiled without contracting ``a * b + c`` into FMAs and divide with IEEE rounding
(``tl.math.div_rn``), as the C kernels.
The kernels run compiled (CUDA) or, with ``TRITON_INTERPRET=1`` set before ``triton`` is first
imported (it decides how Triton's own library functions run), in the Triton interpreter on CPU tensors.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import backend

BLOCK = 1024
MAX_ROW = 1 << 15  # the row kernels (softmax, norms) keep a whole row in one block
ROWS = 64  # elements per program of the bases kernel ([ROWS, N] membranes in registers)
FLOAT32_TOP_EXPONENT = 127  # the largest finite power of two of float32
HALF_OR_SINGLE = (torch.float32, torch.float16, torch.bfloat16)


def usable(*tensors: torch.Tensor, row: int = 0) -> bool:
    """Whether the Triton kernels take these tensors: the ``triton`` backend chosen, float32 or half
    precision, no autograd, on CUDA (or on the CPU under the interpreter), rows of at most
    :data:`MAX_ROW` elements."""
    if not tensors or row > MAX_ROW or backend.select(*tensors) != "triton":
        return False
    if not all(t.dtype in HALF_OR_SINGLE for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cuda" or (t.device.type == "cpu" and backend.interpreting()) for t in tensors)


@triton.jit
def _popcount(v):
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return (v * 0x01010101 >> 24) & 0xFF


@triton.jit
def _digit_count(digits, top_bits, CODE: tl.constexpr):
    """Spikes of the digit patterns ``digits`` (int32) in the code ``CODE`` (0 binary, 1 signed, 2 ternary)."""
    if CODE == 0:
        count = _popcount(digits)
    elif CODE == 2:  # coding.ternary_digit_count: ten balanced-ternary digits (T <= 10), a remainder 2 is -1 and a carry
        count = tl.zeros_like(digits)
        for _ in tl.static_range(10):
            third = digits // 3
            remainder = digits - 3 * third
            count += (remainder != 0).to(tl.int32)
            digits = third + (remainder == 2).to(tl.int32)
    else:  # coding.signed_digit_count
        naf = ((3 * digits) ^ digits) >> 1
        low = naf & top_bits
        smear = low | (low >> 1)
        smear = smear | (smear >> 2)
        smear = smear | (smear >> 4)
        smear = smear | (smear >> 8)
        fill = tl.where(naf > top_bits, top_bits, 0) & ~(smear >> 1)
        count = _popcount(low | fill)
    return count


@triton.jit
def _mbe_id(u, gain, offset, clamp, step, top, top_bits, limit, limit64, CODE: tl.constexpr, SHIFT: tl.constexpr,
            SIGNED: tl.constexpr):
    """The MBE_Id code of finite float32 ``u`` (Eq. 9): ``(decoded value at its overflow shift, spikes,
    |u| beyond limit after the shift)`` (``IdentityCoder.encode``; ``SIGNED``: the value carries ``u``'s sign)."""
    shift = tl.full(u.shape, 1.0, tl.float32)
    if SHIFT:
        ratio = tl.abs(u).to(tl.float64) / limit64  # coding.overflow_shift, in float64 as there
        bits = ratio.to(tl.int64, bitcast=True)
        exponent = ((bits >> 52) & 0x7FF) - 1023 + ((bits & 0xFFFFFFFFFFFFF) != 0).to(tl.int64)
        exponent = tl.minimum(tl.maximum(exponent, 0), 127).to(tl.int32)
        shift = ((exponent + 127) << 23).to(tl.float32, bitcast=True)
        u = tl.math.div_rn(u, shift)
    beyond = tl.abs(u) > limit
    q = tl.minimum(tl.floor(tl.minimum(tl.abs(u * gain), clamp) + offset), top)  # IdentityCoder.quantize
    count = _digit_count(q.to(tl.int32), top_bits, CODE)
    value = q * step
    if SIGNED:
        value = tl.where(u.to(tl.int32, bitcast=True) < 0, -value, value)  # copysign(value, x)
    return value * shift, count, beyond


@triton.jit
def _finite(u):
    """``coding.finite``: infinities to the largest finite float32 values (NaN stays NaN)."""
    return tl.minimum(tl.maximum(u, -3.4028234663852886e38), 3.4028234663852886e38)


@triton.jit
def _nonfinite(x, inside):
    """How many of ``x`` (where ``inside``) are NaN or infinite, as an int64 scalar."""
    return tl.sum((inside & ~(tl.abs(x) <= 3.4028234663852886e38)).to(tl.int64), 0)


@triton.jit
def _code_kernel(x_ptr, scale_ptr, center_ptr, value_ptr, counts_ptr, stats_ptr, partner_ptr, sums_ptr, n, inner,
                 channels, gain, offset, clamp, step, top, top_bits, limit, limit64_ptr, fanout, partner_inner,
                 sum_rows, sum_inner, CODE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_CENTER: tl.constexpr,
                 SHIFT: tl.constexpr, COUNTS: tl.constexpr, RECTIFY: tl.constexpr, HAS_PARTNER: tl.constexpr,
                 SUMS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """One block of :func:`code`: (relu(x) - c_k) / A_k, its shift, the MBE_Id digits, their count and SOPs."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inside = i < n
    x = tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32)
    bad = _nonfinite(x, inside)
    channel = (i // inner) % channels
    u = x
    if RECTIFY:
        u = tl.where(u > 0.0, u, 0.0)
    if HAS_CENTER:
        center = tl.load(center_ptr + channel, mask=inside, other=0.0)
        u = u - center
    if HAS_SCALE:
        scale = tl.load(scale_ptr + channel, mask=inside, other=1.0)
        u = tl.math.div_rn(u, scale)  # IEEE division, as the eager path
    value, count, beyond = _mbe_id(_finite(u), gain, offset, clamp, step, top, top_bits, limit, tl.load(limit64_ptr),
                                   CODE, SHIFT, not RECTIFY)
    if HAS_SCALE:
        value = value * scale
    if HAS_CENTER:
        value = value + center
    tl.store(value_ptr + i, value, mask=inside)
    if COUNTS:
        tl.store(counts_ptr + i, count.to(tl.float32), mask=inside)
    count = tl.where(inside, count, 0)
    if SUMS:
        tl.atomic_add(sums_ptr + (i // (sum_rows * sum_inner)) * sum_inner + i % sum_inner, count, mask=inside)
    if HAS_PARTNER:
        partner = tl.load(partner_ptr + i // partner_inner, mask=inside, other=0)
        sops = tl.sum(count.to(tl.int64) * partner.to(tl.int64), 0)
    else:
        sops = tl.sum(count.to(tl.int64), 0) * fanout
    tl.atomic_add(stats_ptr + 0, tl.sum(count.to(tl.int64), 0))
    tl.atomic_add(stats_ptr + 1, tl.sum((inside & beyond).to(tl.int64), 0))
    tl.atomic_add(stats_ptr + 2, bad)
    tl.atomic_add(stats_ptr + 3, sops)


@torch.library.custom_op("sjmbe::code", mutates_args=())
def code(x: torch.Tensor, scale: Optional[torch.Tensor], center: Optional[torch.Tensor], inner: int,
         params: List[float], limit: float, shift: bool, counts: bool, rectify: bool = False, fanout: int = 0,
         partner: Optional[torch.Tensor] = None, partner_inner: int = 1,
         sum_rows: int = 0, sum_inner: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value, spikes per element, [spikes, |x| beyond A (after any shift), NaN/Inf in x, SOPs], sums)``
    of the MBE_Id code of ``x`` in float32. ``params`` are ``IdentityCoder.kernel_params(float32, True)``,
    ``limit`` its range ``A``. ``scale`` / ``center`` (one per channel, channel ``(i // inner) %
    channels``) make it code ``(x - c_k) / A_k`` and return ``value A_k + c_k``; ``rectify`` codes
    ``relu(x)`` (unsigned); ``shift`` codes an element beyond ``A`` at its overflow shift;
    ``counts=False`` returns an empty count tensor. SOPs: each element's spikes times ``fanout``, or
    with an int32 ``partner`` times ``partner[i // partner_inner]`` (a matrix product's coincidences).
    ``sum_rows > 0``: ``sums`` (int32) holds the spikes of ``x`` viewed as ``[outer, sum_rows,
    sum_inner]`` summed over its middle dimension (a left matrix operand's column sums), else it is empty."""
    x = x.contiguous()
    n = x.numel()
    value = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    spikes = torch.empty(x.shape if counts else (0,), dtype=torch.float32, device=x.device)
    stats = torch.zeros(4, dtype=torch.int64, device=x.device)
    sums = torch.zeros(n // (sum_rows * sum_inner) * sum_inner if sum_rows else 0, dtype=torch.int32, device=x.device)
    channels = 1 if scale is None and center is None else (scale if scale is not None else center).numel()
    gain, offset, clamp, step, top, code_index = params
    if n:
        _code_kernel[(triton.cdiv(n, BLOCK),)](
            x, x if scale is None else scale.contiguous(), x if center is None else center.contiguous(), value,
            spikes if counts else value, stats, x if partner is None else partner.contiguous(), sums if sum_rows else stats,
            n, max(inner, 1), channels, gain, offset, clamp, step, top, int(top), limit, _float64s((limit,), x.device),
            fanout, max(partner_inner, 1), max(sum_rows, 1), max(sum_inner, 1), CODE=int(code_index),
            HAS_SCALE=scale is not None, HAS_CENTER=center is not None, SHIFT=shift, COUNTS=counts, RECTIFY=rectify,
            HAS_PARTNER=partner is not None, SUMS=sum_rows > 0, BLOCK_SIZE=BLOCK, enable_fp_fusion=False)
    return value, spikes, stats, sums


@triton.jit
def _operand(x_ptr, ranges_ptr, i, inside, inner, channels, gain, offset, clamp, step, top, top_bits, limit, limit64,
             CODE: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """One operand of :func:`product`: its channel's range, its decoded unit code, spikes, clamps, NaN/Inf."""
    u = tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32)
    scale = tl.full(u.shape, 1.0, tl.float32)
    if PER_CHANNEL:
        scale = tl.load(ranges_ptr + (i // inner) % channels, mask=inside, other=1.0)
        u = tl.math.div_rn(u, scale)
    bad = _nonfinite(u, inside)
    value, count, beyond = _mbe_id(_finite(u), gain, offset, clamp, step, top, top_bits, limit, limit64, CODE, True,
                                   True)
    return value, scale, tl.where(inside, count, 0).to(tl.int64), tl.sum((inside & beyond).to(tl.int64), 0), bad


@triton.jit
def _product_kernel(a_ptr, b_ptr, ranges_a_ptr, ranges_b_ptr, out_ptr, stats_ptr, limits64_ptr, n, inner_a, channels_a,
                    inner_b, channels_b, gain_a, offset_a, clamp_a, step_a, limit_a, gain_b, offset_b, clamp_b, step_b,
                    limit_b, top, top_bits, CODE: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """One block of :func:`product`."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inside = i < n
    va, ra, ca, clamped_a, bad_a = _operand(a_ptr, ranges_a_ptr, i, inside, inner_a, channels_a, gain_a, offset_a,
                                            clamp_a, step_a, top, top_bits, limit_a, tl.load(limits64_ptr + 0), CODE,
                                            PER_CHANNEL)
    vb, rb, cb, clamped_b, bad_b = _operand(b_ptr, ranges_b_ptr, i, inside, inner_b, channels_b, gain_b, offset_b,
                                            clamp_b, step_b, top, top_bits, limit_b, tl.load(limits64_ptr + 1), CODE,
                                            PER_CHANNEL)
    out = va * vb
    if PER_CHANNEL:
        out = out * (ra * rb)
    tl.store(out_ptr + i, out, mask=inside)
    tl.atomic_add(stats_ptr + 0, tl.sum(ca + cb, 0))
    tl.atomic_add(stats_ptr + 1, clamped_a)
    tl.atomic_add(stats_ptr + 2, clamped_b)
    tl.atomic_add(stats_ptr + 3, tl.sum(ca * cb, 0))
    tl.atomic_add(stats_ptr + 4, bad_a)
    tl.atomic_add(stats_ptr + 5, bad_b)


@torch.library.custom_op("sjmbe::product", mutates_args=())
def product(a: torch.Tensor, b: torch.Tensor, ranges_a: Optional[torch.Tensor], inner_a: int,
            ranges_b: Optional[torch.Tensor], inner_b: int, params_a: List[float], params_b: List[float],
            limits: List[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``SpikingProduct`` of same-shape ``a`` and ``b`` in one pass: each operand's MBE_Id code (Eq. 9;
    ``params_*``: ``IdentityCoder.kernel_params(float32, True)``, ``limits`` the ranges ``A``) at its
    overflow shift, with per-channel ``ranges_*`` (channel ``(i // inner) % channels``; both or
    neither) the codes of ``a / A_k`` and ``b / B_k`` times ``A_k B_k``; ``(a * b in float32,
    [spikes, a beyond A, b beyond A, coincidences, NaN/Inf in a, in b])``."""
    a, b = a.contiguous(), b.contiguous()
    n = a.numel()
    out = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    stats = torch.zeros(6, dtype=torch.int64, device=a.device)
    if n:
        per_channel = ranges_a is not None
        (gain_a, offset_a, clamp_a, step_a, top, code_index), (gain_b, offset_b, clamp_b, step_b) = params_a, params_b[:4]
        _product_kernel[(triton.cdiv(n, BLOCK),)](
            a, b, ranges_a.contiguous() if per_channel else a, ranges_b.contiguous() if per_channel else b, out, stats,
            _float64s(tuple(limits), a.device), n, max(inner_a, 1), ranges_a.numel() if per_channel else 1,
            max(inner_b, 1), ranges_b.numel() if per_channel else 1, gain_a, offset_a, clamp_a, step_a, limits[0],
            gain_b, offset_b, clamp_b, step_b, limits[1], top, int(top), CODE=int(code_index), PER_CHANNEL=per_channel,
            BLOCK_SIZE=BLOCK, enable_fp_fusion=False)
    return out, stats


@product.register_fake
def _(a, b, ranges_a, inner_a, ranges_b, inner_b, params_a, params_b, limits):
    return a.new_empty(a.shape, dtype=torch.float32), a.new_empty(6, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _float64s(values: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float64 tensor on ``device``, made once (a kernel reads them in float64)."""
    return torch.tensor(values, dtype=torch.float64, device=device)


@code.register_fake
def _(x, scale, center, inner, params, limit, shift, counts, rectify=False, fanout=0, partner=None, partner_inner=1,
      sum_rows=0, sum_inner=1):
    return (x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape if counts else (0,), dtype=torch.float32),
            x.new_empty(4, dtype=torch.int64),
            x.new_empty(x.numel() // (sum_rows * sum_inner) * sum_inner if sum_rows else 0, dtype=torch.int32))


@triton.jit
def _lookup_kernel(x_ptr, first_ptr, edges_ptr, entries_ptr, out_ptr, stats_ptr, n, lo, hi, scale, last,
                   LEVELS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """One block of :func:`lookup` (the C kernel ``sjmbe_lookup_f32``'s arithmetic)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inside = i < n
    v = tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32)
    bad = _nonfinite(v, inside)
    outside = tl.sum((inside & ((v < lo) | (v > hi))).to(tl.int64), 0)
    c = tl.where(v >= lo, v, lo)  # NaN -> lo: never indexes outside the tables
    c = tl.where(c <= hi, c, hi)
    bucket = tl.minimum(tl.maximum(tl.floor((c - lo) * scale), 0.0), last)
    position = tl.load(first_ptr + bucket.to(tl.int32), mask=inside, other=0)
    for level in tl.static_range(LEVELS):
        candidate = position + (1 << (LEVELS - 1 - level))
        edge = tl.load(edges_ptr + candidate, mask=inside, other=float("inf"))
        position = tl.where(edge <= c, candidate, position)
    value = tl.load(entries_ptr + 2 * position, mask=inside, other=0.0)
    fired = tl.load(entries_ptr + 2 * position + 1, mask=inside, other=0.0)
    tl.store(out_ptr + i, value, mask=inside)
    tl.atomic_add(stats_ptr + 0, tl.sum(fired.to(tl.int64), 0))
    tl.atomic_add(stats_ptr + 1, outside)
    tl.atomic_add(stats_ptr + 2, bad)


@torch.library.custom_op("sjmbe::lookup", mutates_args=())
def lookup(x: torch.Tensor, first: torch.Tensor, padded_edges: torch.Tensor, entries: torch.Tensor, lo: float,
           hi: float, scale: float, levels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(f_hat(x) in float32, [spikes, inputs outside [lo, hi], NaN/Inf])`` from a float32
    :class:`~spikingjelly_mbe.neurons.NeuronTable`'s tensors (:func:`table_tensors`)."""
    x = x.contiguous()
    n = x.numel()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    stats = torch.zeros(3, dtype=torch.int64, device=x.device)
    if n:
        _lookup_kernel[(triton.cdiv(n, BLOCK),)](x, first, padded_edges, entries, out, stats, n, lo, hi, scale,
                                                 float(first.numel() - 1), LEVELS=levels, BLOCK_SIZE=BLOCK,
                                                 enable_fp_fusion=False)
    return out, stats


@lookup.register_fake
def _(x, first, padded_edges, entries, lo, hi, scale, levels):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(3, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def table_tensors(table) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float, float, int]:
    """A float32 :class:`~spikingjelly_mbe.neurons.NeuronTable` as :func:`lookup`'s arguments after ``x``."""
    return (table.first.contiguous(), table.padded_edges.contiguous(), torch.view_as_real(table.entries).contiguous(),
            table.lo, table.hi, table.scale, len(table.jumps))


@triton.jit
def _bases_kernel(x_ptr, gain_ptr, offset_ptr, vth_ptr, reset_ptr, decode_ptr, out_ptr, stats_ptr, n, bias,
                  N: tl.constexpr, N_PAD: tl.constexpr, T: tl.constexpr, ROWS_SIZE: tl.constexpr):
    """One block of :func:`bases`: ``u_n[0] = a_n x + c_n``, then per step the spikes, the reset and
    the weighted output ``sum_n w_n d_n[t] s_n[t]`` (+ bias at ``t = 0``), membranes in registers."""
    i = tl.program_id(0).to(tl.int64) * ROWS_SIZE + tl.arange(0, ROWS_SIZE)
    inside = i < n
    basis = tl.arange(0, N_PAD)
    real = basis < N
    x = tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32)
    gain = tl.load(gain_ptr + basis, mask=real, other=0.0)
    offset = tl.load(offset_ptr + basis, mask=real, other=0.0)
    u = x[:, None] * gain[None, :]
    u = u + offset[None, :]
    fired = tl.zeros((ROWS_SIZE, N_PAD), tl.int32)
    for t in tl.static_range(T):
        vth = tl.load(vth_ptr + basis * T + t, mask=real, other=float("inf"))
        reset = tl.load(reset_ptr + basis * T + t, mask=real, other=0.0)
        weight = tl.load(decode_ptr + basis * T + t, mask=real, other=0.0)
        spike = u >= vth[None, :]
        u = u - tl.where(spike, reset[None, :], 0.0)
        fired += spike.to(tl.int32)
        y = tl.sum(tl.where(spike, weight[None, :], 0.0), 1)
        if t == 0:
            y = y + bias
        tl.store(out_ptr + t * n + i, y, mask=inside)
    tl.atomic_add(stats_ptr, tl.sum(tl.sum(tl.where(inside[:, None], fired, 0).to(tl.int64), 1), 0))


@torch.library.custom_op("sjmbe::bases", mutates_args=())
def bases(x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, vth: torch.Tensor, reset: torch.Tensor,
          decode_weights: torch.Tensor, bias: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(weighted spike sequence [T, *x.shape] in float32, [spikes])`` of a multi-basis neuron
    (``[N]`` gains and offsets, ``[N, T]`` thresholds, resets and decoding weights ``w_n d_n[t]``)
    driven by ``x``: the whole time loop in one kernel."""
    x = x.contiguous()
    N, T = vth.shape
    n = x.numel()
    out = torch.empty((T, *x.shape), dtype=torch.float32, device=x.device)
    stats = torch.zeros(1, dtype=torch.int64, device=x.device)
    if n:
        tables = [t.to(device=x.device, dtype=torch.float32).contiguous() for t in (gain, offset, vth, reset,
                                                                                  decode_weights)]
        _bases_kernel[(triton.cdiv(n, ROWS),)](x, *tables, out, stats, n, bias, N=N, N_PAD=triton.next_power_of_2(N),
                                               T=T, ROWS_SIZE=ROWS, enable_fp_fusion=False)
    return out, stats


@bases.register_fake
def _(x, gain, offset, vth, reset, decode_weights, bias):
    return x.new_empty((vth.shape[1], *x.shape), dtype=torch.float32), x.new_empty(1, dtype=torch.int64)


PARAMS = 8  # a coder's row of :func:`coder_rows`: gain, offset, clamp, step, top, code, then lo (split functions), 0
# or a row coder's centre and zero threshold (IdentityCoder.row_params)


@functools.lru_cache(maxsize=None)
def coder_rows(device: torch.device, *coders: Tuple[float, ...]) -> torch.Tensor:
    """Coders' ``kernel_params`` (and a split function's ``lo``) as float32 rows of :data:`PARAMS` on
    ``device``, as the C kernels read them (each number rounded to float32); made once."""
    return torch.tensor([list(c) + [0.0] * (PARAMS - len(c)) for c in coders], dtype=torch.float32, device=device)


@triton.jit
def _quantize(x, params_ptr):
    """``IdentityCoder.quantize`` with a coder row of :func:`coder_rows`."""
    gain = tl.load(params_ptr + 0)
    offset = tl.load(params_ptr + 1)
    clamp = tl.load(params_ptr + 2)
    top = tl.load(params_ptr + 4)
    return tl.minimum(tl.floor(tl.minimum(tl.abs(x * gain), clamp) + offset), top)


@triton.jit
def _band_value(x, params_ptr, top_bits, CODE: tl.constexpr):
    """``(value, spikes)`` of ``x`` in a row coder of :func:`coder_rows` (``IdentityCoder.row_params``; the C
    kernels' ``band_value``): the centred code ``sign(x) (centre + v)`` when its centre is positive (0 and no
    spike below the zero threshold), else ``sign(x) q w 2^-T``."""
    centre = tl.load(params_ptr + 6)
    centred = centre > 0.0
    magnitude = tl.abs(x)
    live = magnitude >= tl.load(params_ptr + 7)
    offset = tl.where(centred, magnitude - centre, magnitude)
    digits = _quantize(offset, params_ptr)
    v = digits * tl.load(params_ptr + 3)
    v = tl.where(offset < 0.0, -v, v)
    v = tl.where(centred, tl.where(live, v + centre, 0.0), v)
    counts = _digit_count(digits.to(tl.int32), top_bits, CODE)
    counts = tl.where(centred, (counts + 1) * live.to(tl.int32), counts)  # the centre's spike
    return tl.where(x.to(tl.int32, bitcast=True) < 0, -v, v), counts


@triton.jit
def _pow2(n):
    """``2^n`` for integer-valued float32 ``n <= 127``, exactly (subnormal down to ``2^-149``, then 0)."""
    k = tl.maximum(n, -150.0).to(tl.int32)
    subnormal = tl.where(k >= -149, 1 << ((k + 149) & 31), 0)
    return tl.where(k >= -126, (k + 127) << 23, subnormal).to(tl.float32, bitcast=True)


@triton.jit
def _exponent(v):
    """``frexp(v)``'s exponent for finite float32 ``v`` (0 for zero; subnormals too)."""
    small = (v.to(tl.int32, bitcast=True) & 0x7F800000) == 0
    bits = tl.where(small, v * 16777216.0, v).to(tl.int32, bitcast=True)
    return tl.where(v == 0, 0, ((bits >> 23) & 0xFF) - 126 - tl.where(small, 24, 0))


@triton.jit
def _mantissa(v):
    """``frexp(v)``'s mantissa (in ``[1/2, 1)``) for finite positive float32 ``v`` (subnormals too)."""
    small = (v.to(tl.int32, bitcast=True) & 0x7F800000) == 0
    bits = tl.where(small, v * 16777216.0, v).to(tl.int32, bitcast=True)
    return ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)


@triton.jit
def _split_value(v, params_ptr, table_ptr):
    """A ``SplitFunction``'s (value, spikes) for ``v`` in its domain: the table entry of its digits."""
    q = _quantize(v - tl.load(params_ptr + 6), params_ptr).to(tl.int32)
    return tl.load(table_ptr + 2 * q), tl.load(table_ptr + 2 * q + 1).to(tl.int32)


@triton.jit
def _softmax_kernel(x_ptr, out_ptr, stats_ptr, n, params_ptr, exp2_table_ptr, recip_table_ptr, log2e, floor_exp,
                    carry, top_bits, neurons_per_value, element_span, CODE: tl.constexpr, BLOCK_N: tl.constexpr):
    """One row of :func:`softmax` (the C kernel ``sjmbe_softmax_f32``'s arithmetic)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    inside = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=inside, other=float("-inf")).to(tl.float32)
    bad = tl.sum((inside & ~(x < float("inf"))).to(tl.int32), 0)
    peak = tl.max(x, 0)
    m = tl.where(peak == float("-inf"), 0.0, peak)
    y = (x - m) * log2e
    y = tl.where(y > floor_exp, y, floor_exp)
    alive = inside & (y > floor_exp)
    whole = tl.floor(y + carry)  # a fraction within carry of 1: the next exponent (SpikingSoftmax.stages)
    frac_digits = _quantize(tl.maximum(y - whole, 0.0), params_ptr).to(tl.int32)
    e = tl.load(exp2_table_ptr + 2 * frac_digits) * _pow2(whole)
    e = tl.where(inside, e, 0.0)
    spikes = tl.sum(tl.where(alive, tl.load(exp2_table_ptr + 2 * frac_digits + 1).to(tl.int32), 0), 0)
    live = tl.sum(alive.to(tl.int32), 0)
    total = tl.sum(e.to(tl.float64), 0).to(tl.float32)
    exponent = _exponent(tl.where(total > 0.0, total, 1.0))
    mantissa = _mantissa(tl.where(total > 0.0, total, 1.0))
    recip, recip_spikes = _split_value(2.0 * mantissa, params_ptr + 8, recip_table_ptr)
    recip = tl.where(total > 0.0, recip, 0.0)
    spikes += tl.where(total > 0.0, recip_spikes, 0)
    r_value, r_spikes = _band_value(recip, params_ptr + 24, top_bits, CODE)
    scaled = r_value * _pow2((1 - exponent).to(tl.float32))
    e_shift = _pow2(tl.maximum(tl.minimum(_exponent(e), 0), -element_span).to(tl.float32))  # e's own exponent
    e_value, e_counts = _band_value(tl.math.div_rn(e, e_shift), params_ptr + 16, top_bits, CODE)
    e_spikes = tl.sum(tl.where(inside, e_counts, 0), 0)
    p = (e_value * e_shift) * scaled
    tl.store(out_ptr + row * n + cols, tl.minimum(p, 1.0), mask=inside)
    spikes = (spikes + e_spikes + r_spikes).to(tl.int64)
    tl.atomic_add(stats_ptr + 0, spikes)
    tl.atomic_add(stats_ptr + 1, neurons_per_value * (live.to(tl.int64) + 1))
    tl.atomic_add(stats_ptr + 2, spikes + live.to(tl.int64) + e_spikes.to(tl.int64) * r_spikes.to(tl.int64))
    tl.atomic_add(stats_ptr + 3, bad.to(tl.int64))


@torch.library.custom_op("sjmbe::softmax", mutates_args=())
def softmax(x: torch.Tensor, params: torch.Tensor, exp2_table: torch.Tensor, recip_table: torch.Tensor,
            log2e: float, floor_exponent: float, carry: float, top_bits: int, code: int,
            neurons_per_value: int, element_span: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``SpikingSoftmax`` along the last dimension of ``x``, one row per program: ``(output in float32,
    [spikes, neurons, SOPs, NaN/+inf])``, a row's neurons ``neurons_per_value`` per unmasked element
    and for its sum, its SOPs its spikes, unmasked elements and product coincidences. ``params``:
    :func:`coder_rows` of the exp2 split function, the reciprocal's, the ``e`` and ``1/M`` coders; the
    split functions' tables as interleaved float32 ``(value, spikes)``; ``carry``: the exponent is
    ``floor(y + carry)`` (``SpikingSoftmax.carry``); ``element_span``: each ``e`` is coded at its own
    exponent, at least ``-element_span``."""
    x = x.contiguous()
    n = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    stats = torch.zeros(4, dtype=torch.int64, device=x.device)
    if x.numel():
        _softmax_kernel[(x.numel() // n,)](x, out, stats, n, params, exp2_table, recip_table, log2e,
                                           floor_exponent, carry, top_bits, neurons_per_value, element_span, CODE=code,
                                           BLOCK_N=triton.next_power_of_2(n),
                                           enable_fp_fusion=False)
    return out, stats


@softmax.register_fake
def _(x, params, exp2_table, recip_table, log2e, floor_exponent, carry, top_bits, code, neurons_per_value, element_span):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(4, dtype=torch.int64)


@triton.jit
def _norm_kernel(x_ptr, weight_ptr, bias_ptr, out_ptr, stats_ptr, n, params_ptr, rsqrt_table_ptr, eps, inv_n,
                 min_row_exponent, element_span, top_bits, CENTERED: tl.constexpr, ELEMENT: tl.constexpr,
                 HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, CODE: tl.constexpr, BLOCK_N: tl.constexpr):
    """One row of :func:`norm` (the C kernel ``sjmbe_norm_f32``'s arithmetic)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    inside = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=inside, other=0.0).to(tl.float32)
    bad = tl.sum((inside & ~(tl.abs(x) <= 3.4028234663852886e38)).to(tl.int32), 0)
    hi = tl.max(tl.where(inside, x, float("-inf")), 0)
    lo = tl.min(tl.where(inside, x, float("inf")), 0)
    mean = 0.0
    if CENTERED:
        mean = (tl.sum(x.to(tl.float64), 0) / n).to(tl.float32)
    k = tl.maximum(_exponent(tl.maximum(hi - mean, mean - lo)), min_row_exponent)
    z = (x - mean) * _pow2((-k).to(tl.float32))
    shift = tl.full(z.shape, 1.0, tl.float32)
    if ELEMENT:
        shift = _pow2(tl.maximum(tl.minimum(_exponent(z), 0), -element_span).to(tl.float32))
        z = tl.math.div_rn(z, shift)
    value, counts = _band_value(z, params_ptr + 8, top_bits, CODE)
    value = tl.where(inside, value * shift, 0.0)
    counts = tl.where(inside, counts, 0)
    z_spikes = tl.sum(counts, 0)
    z_squares = tl.sum(counts * counts, 0)
    variance = tl.sum(((value * value) * inv_n).to(tl.float64), 0).to(tl.float32)
    shifted = variance + eps * _pow2((-2 * k).to(tl.float32))
    exponent = _exponent(shifted)
    mantissa = _mantissa(shifted)
    odd = ((exponent - 1) % 2 + 2) % 2
    rho, rho_split_spikes = _split_value(2.0 * mantissa * tl.where(odd == 1, 2.0, 1.0), params_ptr, rsqrt_table_ptr)
    rho = tl.where(variance > 0.0, rho, 0.0)
    spikes = tl.where(variance > 0.0, rho_split_spikes, 0)
    rho_value, rho_spikes = _band_value(rho, params_ptr + 16, top_bits, CODE)
    scaled = rho_value * _pow2((-((exponent - 1 - odd) // 2)).to(tl.float32))
    out = value * scaled
    if HAS_WEIGHT:
        out = out * tl.load(weight_ptr + cols, mask=inside, other=0.0)
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + cols, mask=inside, other=0.0)
    tl.store(out_ptr + row * n + cols, out, mask=inside)
    spikes = (spikes + z_spikes + rho_spikes).to(tl.int64)
    tl.atomic_add(stats_ptr + 0, spikes)
    tl.atomic_add(stats_ptr + 1, spikes + z_squares.to(tl.int64) + z_spikes.to(tl.int64) * rho_spikes.to(tl.int64))
    tl.atomic_add(stats_ptr + 2, bad.to(tl.int64))


@torch.library.custom_op("sjmbe::norm", mutates_args=())
def norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], params: torch.Tensor,
         rsqrt_table: torch.Tensor, centered: bool, eps: float, min_row_exponent: int, element_span: int,
         top_bits: int, code: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``SpikingLayerNorm`` (``centered``) / ``SpikingRMSNorm`` and the affine map over rows of ``n``
    elements, one row per program: ``(output in float32, [spikes, SOPs (the spikes and both products'
    coincidences), NaN/Inf])``.
    ``params``: :func:`coder_rows` of the rsqrt split function, the ``z`` and ``rho`` coders;
    ``element_span >= 0``: each element of ``z`` carries its own exponent, at least ``-element_span``."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    stats = torch.zeros(3, dtype=torch.int64, device=x.device)
    if x.numel():
        _norm_kernel[(x.numel() // n,)](
            x, x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(), out, stats, n,
            params, rsqrt_table, eps, 1.0 / n, min_row_exponent, element_span, top_bits,
            CENTERED=centered, ELEMENT=element_span >= 0, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            CODE=code, BLOCK_N=triton.next_power_of_2(n), enable_fp_fusion=False)
    return out, stats


@norm.register_fake
def _(x, n, weight, bias, params, rsqrt_table, centered, eps, min_row_exponent, element_span, top_bits, code):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(3, dtype=torch.int64)
