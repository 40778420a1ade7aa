"""Fused CPU kernels for fast mode: the eager fast path's float32 arithmetic in one compiled pass.

Kernels: MBE_Id operand coding (products, matmuls), the per-channel input codes of weight layers and
rectifiers (centres, ranges and overflow shifts included), Softmax and LayerNorm/RMSNorm row by row, the
:class:`~spikingjelly_mbe.neurons.NeuronTable` lookup of activations, and a step of ECMT's
:class:`~spikingjelly_mbe.ecmt.MTNode`; each returns the bits
and spike counts of the PyTorch fast path (``tests/test_kernels.py``).
``spike_kernels.c`` is compiled once per machine with the system C compiler (``$CC`` or ``cc``) into
the project cache and loaded with :mod:`ctypes`; nothing is downloaded. Without a compiler, on GPU
tensors or for float64 the operators keep their eager fast path, which
returns the same numbers. They are the ``c`` backend of :mod:`.backend` (``SPIKINGJELLY_MBE_BACKEND``;
``SPIKINGJELLY_MBE_BACKEND=torch`` or :func:`disabled` choose the ``torch`` backend).
Rows are split across ``torch.get_num_threads()`` threads (ctypes releases the GIL).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..cache import cache_dir
from . import backend

log = logging.getLogger("spikingjelly_mbe.kernels")

SOURCE = Path(__file__).with_name("spike_kernels.c")
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11"]
MIN_CHUNK = 1 << 13  # elements per thread, at least
MAX_ROW = 1 << 21  # the kernels count spikes per row in int32
MAX_DIMS = 8  # dimensions of a matrix product's operand (spike_kernels.c)

_library: Optional[ctypes.CDLL] = None
_tried = False
_pointer, _i64, _f64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
SIGNATURES = {
    "sjmbe_encode_f32": [_pointer, _i64, _pointer, _f64, _pointer, _pointer, _pointer],
    "sjmbe_channel_code_f32": [_pointer, _i64, _i64, _i64, _i64, ctypes.c_int32, _pointer, _pointer, _pointer, _pointer,
                               _pointer],
    "sjmbe_operand_f32": [_pointer, ctypes.c_int32, _pointer, _pointer, _pointer, _i64, _i64, _i64, _i64, ctypes.c_int32,
                          _i64, _i64, _pointer, _f64, ctypes.c_int32, ctypes.c_int32, _pointer, _pointer, _pointer],
    "sjmbe_product_f32": [_pointer, _pointer, _i64, _pointer, _f64, _pointer, _f64, _pointer, _pointer],
    "sjmbe_softmax_f32": [_pointer, _i64, _i64, _f64, _f64, _f64, _pointer, _pointer, ctypes.c_int32] + [_pointer] * 4
                         + [ctypes.c_int32, _pointer, _pointer],
    "sjmbe_norm_f32": [_pointer, _i64, _i64, _int, _f64, _f64, _int] + [_pointer] * 8,
    "sjmbe_lookup_f32": [_pointer, _i64, _i64, _f64, _f64, _f64, _pointer, ctypes.c_int32, _pointer, _pointer,
                         ctypes.c_int32, _pointer, _pointer, _pointer],
    "sjmbe_rectified_f32": [_pointer, _i64, _i64, _i64, _i64, _pointer, _pointer, _f64, _f64, _f64, _pointer,
                            ctypes.c_int32, _pointer, _pointer, ctypes.c_int32, _pointer, _pointer, _i64, _i64, _pointer,
                            _pointer, _pointer, _pointer, _pointer],
    "sjmbe_mt_step_f32": [_pointer, _pointer, _i64, _pointer, ctypes.c_int32, _pointer, _pointer, _pointer],
}


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(sorted({line for line in info.splitlines() if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checksum_file(library_path: Path) -> Path:
    """The sidecar holding the sha256 of ``library_path`` recorded when it was built."""
    return library_path.with_name(library_path.name + ".sha256")


def verified(library_path: Path) -> bool:
    """Whether ``library_path`` is exactly the file this machine built: its sha256 equals the one
    recorded at build time. A truncated, replaced or foreign library is never handed to ``ctypes``
    (mapping a truncated one kills the interpreter with SIGBUS)."""
    try:
        return _checksum_file(library_path).read_text().strip() == _sha256(library_path)
    except OSError:
        return False


def _compile(compiler: str, target: Path) -> None:
    """Build into a temporary folder next to ``target``, record the sha256, then move both into
    place atomically: concurrent processes never load a half-written library."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built, checksum = Path(tmp) / target.name, Path(tmp) / _checksum_file(target).name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True, capture_output=True,
                        text=True, timeout=120)
        checksum.write_text(_sha256(built) + "\n")
        os.replace(built, target)
        os.replace(checksum, _checksum_file(target))


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, built on first use; ``None`` (logged once) when no C compiler works."""
    global _library, _tried
    if _tried:
        return _library
    _tried = True
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc/gcc or $CC): fast mode runs its eager PyTorch path (same numbers, slower)")
        return None
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS).encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    try:
        target = cache_dir("kernels") / f"spike_kernels-{key}.so"
        if not verified(target):
            if _checksum_file(target).exists():
                log.warning("cached kernels %s do not match the sha256 recorded at build (truncated, replaced or "
                            "built with other flags): rebuilding", target)
            _compile(compiler, target)
            if not verified(target):
                raise OSError(f"{target} changed while it was being built")
        lib = ctypes.CDLL(str(target))
        for name, argtypes in SIGNATURES.items():
            getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, None
    except (OSError, subprocess.SubprocessError, AttributeError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("could not build or load the fused kernels with %s (%s): fast mode runs its eager PyTorch path",
                    compiler, str(detail).strip()[:500])
        return None
    _library = lib
    return lib


def disabled() -> contextlib.AbstractContextManager:
    """Run the eager fast path inside the block (to compare the two, or to time them): the ``torch`` backend."""
    return backend.use("torch")


def usable(*tensors: torch.Tensor, row: int = 0) -> bool:
    """Whether the kernels can take these tensors (rows of length ``row``): the ``c`` backend chosen
    (:func:`.backend.select`) and :func:`takes` them."""
    return backend.select(*tensors) == "c" and takes(*tensors, row=row)


def takes(*tensors: torch.Tensor, row: int = 0) -> bool:
    """Whether the kernels, once the ``c`` backend is chosen, can take these tensors (rows of length
    ``row``): built, float32 on the CPU, no autograd, rows of at most :data:`MAX_ROW` elements, and not
    inside a ``torch.compile`` trace (a compiled graph cannot hold these foreign calls; it computes the
    same numbers on the ``torch`` path). An operator that chose its backend once per call asks this."""
    if row > MAX_ROW or torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:  # a loop of attribute reads: this runs on every operator call
        if t.dtype is not torch.float32 or not t.is_cpu or (grad and t.requires_grad):
            return False
    return library() is not None


def address(t: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's data pointer for a kernel argument (``None``: a NULL pointer)."""
    return None if t is None else t.data_ptr()


def doubles(values: Sequence[float]) -> ctypes.Array:
    """Parameters as a C ``double`` array (one per distinct tuple of values: the kernels only read it)."""
    return _doubles(tuple(values))


@functools.lru_cache(maxsize=1024)
def _doubles(values: Tuple[float, ...]) -> ctypes.Array:
    return (ctypes.c_double * len(values))(*values)


def pack(values: torch.Tensor, spikes: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
    """A float32 lookup table as one int32 word per entry, ``spikes << 24 | (value bits - base)``, and
    ``base`` (the exponent field of the lower binade): possible when every value is positive, all lie
    in two adjacent binades and every spike count is an integer in ``[0, 255]``; ``None`` otherwise."""
    if values.dtype != torch.float32 or not values.numel() or not bool((values > 0).all()):
        return None
    if not bool(((spikes >= 0) & (spikes <= 255) & (spikes == spikes.round())).all()):
        return None
    bits = values.contiguous().view(torch.int32).long()
    base = int(bits.min()) & ~0x7FFFFF
    offset = bits - base
    if int(offset.max()) >= 1 << 24:
        return None
    words = offset | (spikes.long() << 24)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32), base


def dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill the block of memory from its first one, in some order (a
    permutation of a contiguous tensor): an element-wise kernel can run on that block, and
    ``torch.empty_like(x)`` has the same layout."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def encode(x: torch.Tensor, coder: Sequence[float], limit: float) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """``(value, counts, [spikes, |x| > limit, NaN/Inf])``: the sign-magnitude MBE_Id code of float32
    ``x`` (``IdentityCoder.encode``'s fast path; ``coder`` from ``IdentityCoder.kernel_params``), in
    ``x``'s memory layout when that is dense (a transposed operand is not copied)."""
    x = x if dense(x) else x.contiguous()
    value, counts = torch.empty_like(x), torch.empty_like(x)
    params, fn = doubles(coder), library().sjmbe_encode_f32

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr() + 4 * start, stop - start, params, limit, value.data_ptr() + 4 * start,
           counts.data_ptr() + 4 * start, stats)

    return value, counts, _chunked(run, x.numel(), 1, 3)


def channel_code(x: torch.Tensor, channels: int, inner: int, ranges: torch.Tensor, centres: Optional[torch.Tensor],
                 rectify: bool, coder: Sequence[float]) -> Tuple[torch.Tensor, List[int]]:
    """``(x_hat, [spikes, clamped beyond the largest shift, NaN/Inf])``: float32 ``x`` viewed as
    ``[outer, channels, inner]``, each element's ``relu`` (``rectify``) less its channel's centre, over
    its channel's range, coded by a unit-range MBE_Id ``coder`` (``IdentityCoder.kernel_params``) at its
    overflow shift and decoded back (``SpikingWeightInput``'s and ``SpikingReLU``'s fast path).
    ``ranges`` and ``centres`` (or ``None``) hold one float32 per channel."""
    x = x.contiguous()
    out = torch.empty_like(x)
    params, fn = doubles(coder), library().sjmbe_channel_code_f32

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr(), start, stop, channels, inner, int(rectify), ranges.data_ptr(), address(centres), params,
           out.data_ptr(), stats)

    return out, _chunked(run, x.numel(), 1, 3)


ChannelCode = Tuple[int, int, torch.Tensor, Optional[torch.Tensor], Sequence[float]]


def rectified(x: torch.Tensor, channels: int, inner: int, ranges: torch.Tensor, coder: Sequence[float],
              table: Sequence[object], following: Optional[ChannelCode] = None,
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[int]]:
    """``(relu code + residual, its code or None, [rectifier's spikes, clamped, NaN/Inf, residual's spikes,
    outside its domain, NaN/Inf, its code's spikes, clamped, NaN/Inf])``: a rectified activation on float32
    ``x`` in one pass, :func:`channel_code` of ``relu(x)`` (``ranges`` per channel, no centres) plus the
    lookup of the residual's ``NeuronTable`` (``table``: its ``kernel_args()``), added in that order. With
    ``following`` (``channels, inner, ranges, centres, coder``: :func:`channel_code`'s arguments for the
    weight layer the output feeds) the output's :func:`channel_code` in the same pass (else ``None`` and
    three zeros)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    coded = None if following is None else torch.empty_like(x)
    next_channels, next_inner, next_ranges, next_centres, next_coder = following or (0, 0, None, None, ())
    params, next_params, fn = doubles(coder), doubles(next_coder), library().sjmbe_rectified_f32

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr(), start, stop, channels, inner, ranges.data_ptr(), params, *table, out.data_ptr(), next_channels,
           next_inner, address(next_ranges), address(next_centres), next_params, address(coded), stats)

    return out, coded, _chunked(run, x.numel(), 1, 9)


def flattens(x: torch.Tensor) -> bool:
    """Whether the batch dimensions of ``x`` (all but the last two) merge into one without a copy, so
    that ``torch.matmul`` passes ``x`` to its batched product in its own layout."""
    batch = [(stride, size) for stride, size in zip(x.stride()[:-2], x.shape[:-2]) if size != 1]
    return all(outer == inner * size for (outer, _), (inner, size) in zip(batch, batch[1:]))


def matmul_operand(x: torch.Tensor, reduced: int, coder: Sequence[float], limit: float,
                   shifting: bool, span: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """``(value, sums, [spikes, |x / s| > limit, NaN/Inf])`` for float32 ``x`` ``[..., R, C]``, an operand of
    ``SpikingMatmul``: the sign-magnitude MBE_Id code of every element (``IdentityCoder.fused``'s, each at its
    element exponent within ``[-span, 0]`` when ``span`` is given, and its overflow shift ``s`` when
    ``shifting``), and ``sums`` (int32 ``[..., K]``) its spikes summed over dimension
    ``reduced`` (-2 or -1; ``K`` the other one). ``value`` is laid out as ``torch.matmul`` hands the eager
    code of ``x`` to its BLAS call (that code has ``x``'s layout when dense: kept where the batch dimensions
    flatten, else copied contiguous), so the product reads it without a copy and returns the same bits."""
    value = torch.empty_like(x) if dense(x) else torch.empty(x.shape, dtype=x.dtype)
    value = value if flattens(value) else torch.empty(x.shape, dtype=x.dtype)
    run_dim = max((-1, -2), key=lambda d: (x.stride(d) == 1, value.stride(d) == 1, d == -1)) % x.dim()
    other = (x.dim() - 2) + (x.dim() - 1) - run_dim
    outer = [*range(x.dim() - 2), other]
    sums = torch.zeros(*x.shape[:-2], x.shape[-1] if reduced == -2 else x.shape[-2], dtype=torch.int32)
    shape, in_strides, out_strides = ((ctypes.c_int64 * len(outer))(*[v[d] for d in outer])
                                      for v in (x.shape, x.stride(), value.stride()))
    run, rows = x.shape[run_dim], x.shape[other]
    params, fn = doubles(coder), library().sjmbe_operand_f32
    reduce_run = int(run_dim == reduced % x.dim())

    def work(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr(), len(outer), shape, in_strides, out_strides, run, x.stride(run_dim), value.stride(run_dim),
           rows, reduce_run, start * rows, stop * rows, params, limit, int(shifting), -1 if span is None else span,
           value.data_ptr(), sums.data_ptr(), stats)

    return value, sums, _chunked(work, math.prod(x.shape[:-2]), rows * run, 3)


def product(a: torch.Tensor, b: torch.Tensor, coders: Sequence[Sequence[float]],
            limits: Sequence[float]) -> Tuple[torch.Tensor, List[int]]:
    """``(a * b, [spikes of a, of b, coincidences, |a| > A_a, |b| > A_b, NaN/Inf])`` of same-shape
    float32 operands through their MBE_Id codes (``SpikingProduct``'s fast path)."""
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    params, fn = [doubles(c) for c in coders], library().sjmbe_product_f32

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(a.data_ptr() + 4 * start, b.data_ptr() + 4 * start, stop - start, params[0], limits[0], params[1],
           limits[1], out.data_ptr() + 4 * start, stats)

    return out, _chunked(run, a.numel(), 1, 6)


def rowwise(kernel: str, x: torch.Tensor, n: int, stat_count: int, *args: object) -> Tuple[torch.Tensor, List[int]]:
    """Run a row kernel on float32 ``x`` viewed as ``[rows, n]``; returns ``(out, summed stats)``."""
    x = x.contiguous()
    out = torch.empty_like(x)
    fn = getattr(library(), kernel)

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr() + 4 * start * n, stop - start, n, *args, out.data_ptr() + 4 * start * n, stats)

    return out, _chunked(run, x.numel() // n if n else 0, n, stat_count)


def mt_step(x: torch.Tensor, v: Optional[torch.Tensor], lambdas: Sequence[float],
            levels: int) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """``(out, new potential, [spikes, saturated, NaN/Inf])``: one step of an MT neuron on float32
    ``x`` with potential ``v`` (``None``: zero), ``MTNode.single_step_forward``'s arithmetic."""
    x = x.contiguous()
    v = None if v is None else v.contiguous()
    out, v_out = torch.empty_like(x), torch.empty_like(x)
    params, fn = doubles(lambdas), library().sjmbe_mt_step_f32

    def run(start: int, stop: int, stats: ctypes.Array) -> None:
        fn(x.data_ptr() + 4 * start, None if v is None else v.data_ptr() + 4 * start, stop - start, params, levels,
           v_out.data_ptr() + 4 * start, out.data_ptr() + 4 * start, stats)

    return out, v_out, _chunked(run, x.numel(), 1, 3)


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="sjmbe-kernel")


def _chunked(run: Callable[[int, int, ctypes.Array], None], items: int, item_size: int, stat_count: int) -> List[int]:
    """``run(start, stop, stats)`` over ``[0, items)`` in up to ``torch.get_num_threads()`` chunks of
    at least :data:`MIN_CHUNK` elements (``item_size`` elements per item), each with its own
    ``int64[stat_count]`` stats; returns their sums."""
    chunks = max(1, min(torch.get_num_threads(), items, items * item_size // MIN_CHUNK))
    if chunks == 1:
        stats = (ctypes.c_int64 * stat_count)()
        run(0, items, stats)
        return stats[:]
    bounds = [items * i // chunks for i in range(chunks + 1)]
    parts = [(ctypes.c_int64 * stat_count)() for _ in range(chunks)]
    list(_pool(chunks).map(run, bounds[:-1], bounds[1:], parts))
    return [sum(s[k] for s in parts) for k in range(stat_count)]


def triton_usable(*tensors: torch.Tensor, row: int = 0) -> bool:
    """Whether the Triton kernels (:mod:`.triton_ops`, the ``triton`` backend) take these tensors
    (rows of length ``row``)."""
    return backend.select(*tensors) == "triton" and load_triton().usable(*tensors, row=row)


def load_triton():
    """:mod:`.triton_ops`, imported on first use (it imports Triton)."""
    from . import triton_ops as module
    return module
