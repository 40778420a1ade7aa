"""The exact fast path of a multi-basis neuron: its output as a table over input intervals.

For a fixed input ``x`` every basis runs the deterministic recursion of Eqs. 5-7, so its spike
pattern ``s_n[0..T-1]`` is a function of ``x``. Read as a binary number with ``s_n[0]`` most
significant, the pattern is monotone in ``u_n[0] = a_n x + c_n``: at the first step where two
inputs' patterns differ, both have subtracted the same resets, and only the larger potential can
spike. Floating-point rounding is monotone too, so the same holds for the simulation in float32 or
float64. Hence ``f_hat`` and the spike count (Eq. 8) are constant between consecutive
*breakpoints* (inputs where some basis' pattern changes), and a table over those intervals
reproduces the step-by-step simulation bit for bit, with no loop over ``T``.

:func:`breakpoints` finds them exactly in the working dtype by bisection on the simulation itself
(no analytic threshold algebra that rounding could contradict); :class:`NeuronTable` stores the
simulated value and spike count of every interval and locates inputs with a uniform bucket grid
plus a few comparisons.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Dict, Optional, Tuple

import torch

from .multibasis import MultiBasisNode

GRID = 1 << 15  # first-pass sampling of the domain
CHUNK = 1 << 13  # simulation batch while sampling
MAX_ROUNDS = 4096
MAX_TABLE_T = 62  # spike patterns are read as T-bit numbers in int64
# most buckets of a table's uniform grid: 2^17 first candidates are 512 KiB, within a CPU core's L2; a larger
# grid saves a gather per lookup but misses the cache on its first one (GELU's table, 2^20 buckets: 15-20 %
# slower per lookup on 6.3 M inputs)
MAX_LOG2_BUCKETS = 17


def order_key(x: torch.Tensor) -> torch.Tensor:
    """Integers ordered like the floats ``x`` (float32 -> int32, float64 -> int64); ``-0.0`` maps to 0."""
    bits = x.view(torch.int64 if x.dtype == torch.float64 else torch.int32)
    magnitude = bits & torch.iinfo(bits.dtype).max
    return torch.where(bits < 0, -magnitude, magnitude)


def from_order_key(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float of ``dtype`` whose :func:`order_key` is ``key``."""
    bits = torch.where(key < 0, (-key) | torch.iinfo(key.dtype).min, key)
    return bits.view(dtype)


def pattern_keys(node: MultiBasisNode, x: torch.Tensor, basis: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each basis' spike pattern as a ``T``-bit number (``s[0]`` most significant), negated for
    bases with a negative input gain, so that every column is non-decreasing in ``x``: ``[len(x), N]``;
    with ``basis`` (one index per input) only that basis is simulated: ``[len(x)]``."""
    spikes, _, _ = node.simulate_bases(x, keep_spikes=True, basis=basis)
    bits = torch.tensor([1 << (node.T - 1 - t) for t in range(node.T)], dtype=torch.int64, device=x.device)
    codes = (spikes.to(torch.int64) * bits.view(-1, 1, 1)).sum(0)
    gain = node.gain if basis is None else node.gain[basis].unsqueeze(1)
    keys = torch.where(gain.to(x.device) < 0, -codes, codes)
    return keys if basis is None else keys[:, 0]


def _sampled_keys(node: MultiBasisNode, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([pattern_keys(node, chunk) for chunk in x.split(CHUNK)])


def _first_reaching(node: MultiBasisNode, low: torch.Tensor, high: torch.Tensor, basis: torch.Tensor,
                    target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per row, the smallest ``x`` in ``(low, high]`` with ``key_basis(x) >= target``, by bisection
    over the floats in between (``key(low) < target <= key(high)`` holds on entry)."""
    below, above = order_key(low), order_key(high)
    while bool((above - below > 1).any()):
        middle = (below >> 1) + (above >> 1) + (below & above & 1)  # no overflow for 64-bit keys
        reached = pattern_keys(node, from_order_key(middle, dtype), basis) >= target
        above = torch.where(reached, middle, above)
        below = torch.where(reached, below, middle)
    return from_order_key(above, dtype)


def breakpoints(node: MultiBasisNode, lo: float, hi: float, dtype: torch.dtype) -> torch.Tensor:
    """The sorted inputs in ``[lo, hi]`` (of ``dtype``) where some basis' spike pattern changes,
    with ``lo`` first: the exact interval boundaries of the simulated neuron on that domain."""
    grid = torch.linspace(lo, hi, GRID, dtype=torch.float64).to(dtype)
    grid[0], grid[-1] = lo, hi
    keys = _sampled_keys(node, grid)
    cell, basis = torch.nonzero(keys[1:] != keys[:-1], as_tuple=True)
    low, high = grid[cell], grid[cell + 1]
    low_key = keys[cell, basis]
    found = [grid[:1]]
    for _ in range(MAX_ROUNDS):
        if not len(basis):
            return torch.unique(torch.cat(found))  # sorted
        high_key = pattern_keys(node, high, basis)
        edge = _first_reaching(node, low, high, basis, high_key, dtype)
        found.append(edge)
        # more than one change inside (low, edge): go on with the part below the edge found
        before = from_order_key(order_key(edge) - 1, dtype)
        more = pattern_keys(node, before, basis) != low_key
        low, high, basis, low_key = low[more], before[more], basis[more], low_key[more]
    raise RuntimeError(f"breakpoint search did not finish in {MAX_ROUNDS} rounds")


class NeuronTable:
    """``(f_hat(x), spikes fired)`` of a neuron for ``x`` in ``[lo, hi]``, equal to its step-by-step
    simulation (Eqs. 5-8) in ``dtype``: one entry per interval between :func:`breakpoints`,
    computed by simulating the interval's left end.

    Lookup: a uniform grid of buckets over ``[lo, hi]`` gives each input a first candidate
    interval, a lower bound of the true one whatever the rounding of the bucket index, at most
    ``span`` intervals below it; binary lifting over that window finishes the search in
    ``span.bit_length()`` gathers. The bucket count is the smallest that minimises that number, at
    most ``2^MAX_LOG2_BUCKETS``.
    """

    def __init__(self, node: MultiBasisNode, domain: Tuple[float, float], dtype: torch.dtype) -> None:
        lo, hi = (float(torch.tensor(v, dtype=dtype)) for v in domain)
        with torch.no_grad():
            edges = breakpoints(node, lo, hi, dtype)
            _, value, count = node.simulate(edges, keep_spikes=False)
            self._check_constant(node, edges, hi, dtype)
        self.lo, self.hi, self.dtype = lo, hi, dtype
        self.edges = edges
        self.entries = torch.complex(value, count.to(dtype))
        self.scale, self.first, span, self.settled = self._buckets(edges.double(), lo, hi, torch.finfo(dtype).eps)
        self.jumps = [1 << j for j in reversed(range(span.bit_length()))]
        self.padded_edges = torch.cat([edges, edges.new_full((max(self.jumps, default=0),), math.inf)])
        self._kernel_tensors: Optional[Tuple[torch.Tensor, ...]] = None

    @staticmethod
    def _check_constant(node: MultiBasisNode, edges: torch.Tensor, hi: float, dtype: torch.dtype) -> None:
        """Every interval's patterns at its two ends agree (so they agree inside: keys are monotone)."""
        last = torch.cat([from_order_key(order_key(edges[1:]) - 1, dtype), edges.new_full((1,), hi)])
        if not torch.equal(pattern_keys(node, edges), pattern_keys(node, last)):
            raise RuntimeError("a basis' spike pattern is not monotone in its input; the table would be inexact")

    @staticmethod
    def _buckets(edges: torch.Tensor, lo: float, hi: float, eps: float,
                 ) -> Tuple[float, torch.Tensor, int, torch.Tensor]:
        """``(buckets per unit input, first candidate interval per bucket, span, settled)``: ``settled``
        marks the buckets whose inputs all lie in their first candidate (no breakpoint in reach).

        A bucket is at least 8 rounding units of ``x - lo`` wide, so the computed bucket index is
        off by less than one; candidates cover the neighbouring buckets."""
        most = (hi - lo) / (8 * eps * max(abs(lo), abs(hi), hi - lo))
        best = None
        for log2_buckets in range(8, MAX_LOG2_BUCKETS + 1):
            count = 1 << log2_buckets
            if count > most and best is not None:
                break
            scale = count / (hi - lo)
            bounds = lo + torch.arange(-1, count + 2, dtype=torch.float64) / scale
            index = (torch.searchsorted(edges, bounds, right=True) - 1).clamp_(min=0)
            first, last = index[:-3], index[3:]  # a bucket's input lies in (bound[b-1], bound[b+2])
            span = int((last - first).max())
            if best is None or span.bit_length() < best[2].bit_length():
                best = (scale, first.to(torch.int32), span, last == first)
        return best

    def to(self, device: torch.device) -> "NeuronTable":
        """A copy whose tensors live on ``device``."""
        table = object.__new__(NeuronTable)
        table.__dict__.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()})
        return table

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The interval of every ``x`` in ``[lo, hi]``, flattened (int32)."""
        flat = x.flatten()
        bucket = (flat - self.lo).mul_(self.scale).floor_().to(torch.int32).clamp_(0, len(self.first) - 1)  # NaN: 0
        position = self.first.index_select(0, bucket)
        for jump in self.jumps:
            candidate = position + jump
            position = torch.where(self.padded_edges.index_select(0, candidate) <= flat, candidate, position)
        return position

    def kernel_args(self) -> Tuple[float, ...]:
        """The table for the fused lookup kernel (float32 on the CPU), as its arguments: ``lo, hi,
        scale``, the first candidates and their count, the padded edges, the jumps and their count,
        the entries as interleaved ``(value, spikes)``; the table keeps the tensors alive. A first
        candidate has bit 31 set where its bucket is not ``settled`` (the kernel searches those only)."""
        if self._kernel_tensors is None:
            unsettled = torch.where(self.settled, 0, torch.iinfo(torch.int32).min).to(torch.int32)
            self._kernel_tensors = ((self.first | unsettled).contiguous(), self.padded_edges.contiguous(),
                                    torch.tensor(self.jumps, dtype=torch.int32), torch.view_as_real(self.entries).contiguous())
        first, edges, jumps, entries = self._kernel_tensors
        return (self.lo, self.hi, self.scale, first.data_ptr(), len(first), edges.data_ptr(), jumps.data_ptr(),
                len(self.jumps), entries.data_ptr())

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(f_hat(x), spikes per element)`` for ``x`` of the table's dtype within ``[lo, hi]``."""
        both = torch.view_as_real(self.entries.index_select(0, self.index(x)))
        return both[:, 0].view(x.shape), both[:, 1].view(x.shape)


_TABLES: Dict[Tuple[str, Tuple[float, float], torch.dtype, str], NeuronTable] = {}


def fingerprint(node: MultiBasisNode) -> str:
    """A digest of everything that determines the neuron's spikes and output."""
    digest = hashlib.sha256()
    for tensor in (node.vth, node.reset_value, node.intensity, node.gain, node.offset, node.weight, node.bias):
        digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def neuron_table(node: MultiBasisNode, domain: Tuple[float, float], dtype: torch.dtype, device: torch.device,
                 key: Optional[str] = None) -> NeuronTable:
    """The :class:`NeuronTable` of ``node`` on ``domain``, built once per process for every neuron
    with the same parameters (``key``: its :func:`fingerprint`, when the caller keeps it)."""
    if node.T > MAX_TABLE_T:
        raise ValueError(f"fast mode reads spike patterns as {MAX_TABLE_T}-bit integers, but this neuron has "
                         f"T={node.T}; use mode='simulate' for T > {MAX_TABLE_T}")
    cache_key = (key or fingerprint(node), (float(domain[0]), float(domain[1])), dtype, str(device))
    if cache_key not in _TABLES:
        cpu_key = cache_key[:3] + ("cpu",)
        if cpu_key not in _TABLES:
            on_cpu = node if node.vth.device.type == "cpu" else copy.deepcopy(node).cpu()
            _TABLES[cpu_key] = NeuronTable(on_cpu, domain, dtype)
        _TABLES[cache_key] = _TABLES[cpu_key].to(torch.device(device))
    return _TABLES[cache_key]
