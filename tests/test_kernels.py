"""The fused CPU kernels of fast mode: the same bits and spike counts as the eager PyTorch fast path,
agreement with the step-by-step simulation, NaN/Inf errors, the packed table format, threads and
the fallback when no C compiler is found."""
import ctypes
import logging
import math
import os
import platform
import shutil
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional

from spikingjelly_mbe import kernels
from spikingjelly_mbe.fitting.library import load_fitted
from spikingjelly_mbe.neurons.lookup import neuron_table
from spikingjelly_mbe.ops import (RectifiedActivation, SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct,
                                  SpikingReLU, SpikingRMSNorm, SpikingSoftmax)
from spikingjelly_mbe.ops.coding import CODES, IdentityCoder
from spikingjelly_mbe.ops.weight_input import LAST_CODE, SpikingWeightInput

BASE_2_CODES = [name for name, c in CODES.items() if c.base == 2]  # ternary: test_ternary_code.py

torch.set_num_threads(1)
SETTINGS = settings(max_examples=25, deadline=None)
pytestmark = pytest.mark.skipif(kernels.library() is None, reason="no C compiler: the kernels are not built")


def run(op, *inputs, mode="fast"):
    op.mode = mode
    functional.reset_net(op)
    with torch.no_grad():
        return op(*inputs), op.op_stats()


def assert_kernel_equals_eager(op, *inputs):
    """Bit for bit: outputs and every statistic."""
    fused, fused_stats = run(op, *inputs)
    with kernels.disabled():
        eager, eager_stats = run(op, *inputs)
    assert torch.equal(fused, eager), float((fused - eager).abs().max())
    assert fused_stats == eager_stats
    return fused, fused_stats


def used_kernel(op, x, monkeypatch):
    """Whether ``op(x)`` in fast mode reached the compiled library."""
    calls = []
    real = kernels.rowwise
    monkeypatch.setattr(kernels, "rowwise", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    run(op, x)
    monkeypatch.setattr(kernels, "rowwise", real)
    return bool(calls)


@pytest.fixture(scope="module")
def softmax():
    return SpikingSoftmax(dim=-1, T=16)


@SETTINGS
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), data=st.data(),
       scale=st.sampled_from([1e-3, 1.0, 8.0, 60.0, 1e3, 1e30]), masked=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_softmax_kernel_is_the_eager_fast_path_bit_for_bit(shape, data, scale, masked, seed):
    op = SpikingSoftmax(dim=data.draw(st.integers(-len(shape), len(shape) - 1)), T=16)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * scale
    x = x.masked_fill(torch.rand(*shape, generator=g) < masked, float("-inf"))  # up to whole rows
    y, _ = assert_kernel_equals_eager(op, x)
    assert torch.all(y[x == float("-inf")] == 0)


def test_softmax_kernel_covers_subnormal_and_vanishing_terms(softmax, monkeypatch):
    """Row spreads that put 2^n in the subnormal range, at 2^-149, just below it, and past -2048."""
    steps = torch.tensor([0.0, -87.0, -100.0, -103.2, -103.3, -103.97, -104.0, -150.0, -1500.0, -1e6])
    x = torch.stack([steps, steps * 0.5, steps.flip(0)])
    assert used_kernel(softmax, x, monkeypatch)
    y, _ = assert_kernel_equals_eager(softmax, x)
    torch.testing.assert_close(y, torch.softmax(x, -1), atol=1e-3, rtol=0)


norm_kinds = st.sampled_from(["layer", "rms"])


@SETTINGS
@given(kind=norm_kinds, rows=st.lists(st.integers(1, 5), max_size=2), width=st.integers(1, 300),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]), offset=st.floats(-50, 50),
       affine=st.booleans(), eps=st.sampled_from([1e-5, 1e-2]), seed=st.integers(0, 2 ** 16),
       exponents=st.booleans(), centered=st.booleans(), T=st.sampled_from([6, 16]))
def test_norm_kernels_are_the_eager_fast_path_bit_for_bit(kind, rows, width, scale, offset, affine, eps, seed,
                                                          exponents, centered, T):
    g = torch.Generator().manual_seed(seed)
    weight, bias = (torch.randn(width, generator=g), torch.randn(width, generator=g)) if affine else (None, None)
    options = dict(eps=eps, T=T, element_exponents=exponents, centered_codes=centered)
    op = SpikingLayerNorm(width, weight, bias, **options) if kind == "layer" else \
        SpikingRMSNorm(width, weight, **options)
    x = torch.randn(*rows, width, generator=g) * scale + offset * min(scale, 1.0)
    x[..., 0] = x[..., 0] * 40  # an outlier channel
    x[..., 1::7] = x[..., 1::7] * 2.0 ** -12  # elements below the exponent span of T=6 (coded at 2^-T)
    x[..., 2::11] = 0.0  # exact zeros fire nothing
    x[..., 3::13] = x[..., 3::13] * 2.0 ** -7  # near the bottom of a centred code's band at T=6
    assert_kernel_equals_eager(op, x)


def test_norm_kernel_with_a_multi_dimensional_shape_and_constant_rows(monkeypatch):
    g = torch.Generator().manual_seed(3)
    op = SpikingLayerNorm((4, 6), torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g))
    x = torch.randn(5, 4, 6, generator=g)
    x[1] = 2.5  # zero variance: c = 0, the output is the bias
    assert used_kernel(op, x, monkeypatch)
    y, _ = assert_kernel_equals_eager(op, x)
    torch.testing.assert_close(y[1], op.bias.detach(), atol=0, rtol=0)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (4, 6), op.weight, op.bias), atol=2e-3, rtol=0)


@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("T", [4, 16])
def test_norm_kernels_at_the_ends_of_the_row_and_element_exponents(code, T):
    """The kernel scales an element by 2^(-k - e) at once (row exponent k, its own e): rows whose largest
    element is near the float32 maximum (k = 128) beside tiny and subnormal ones (z below 2^-126), rows of
    subnormals only (k held at -40), powers of two and signed zeros, both norms, bit for bit."""
    g = torch.Generator().manual_seed(T)
    x = torch.randn(6, 40, generator=g)
    x[0] = x[0] * 1e-30
    x[0, 0] = 3e38  # k = 128: z of the small ones is subnormal
    x[1, :20] = torch.randn(20, generator=g) * 1e-42  # subnormals beside normal values
    x[2] = torch.randn(40, generator=g) * 1e-41  # subnormals only: k = -40
    x[3] = 2.0 ** torch.arange(-20, 20, dtype=torch.float32)  # powers of two: exponents at their fields' edges
    x[4, ::2], x[4, 1::2] = -0.0, 2.0 ** -149  # signed zeros and the smallest subnormal
    x[5] = -x[5] * 2.0 ** 100
    for op in (SpikingRMSNorm(40, T=T, code=code), SpikingLayerNorm(40, T=T, code=code)):
        assert_kernel_equals_eager(op, x)


@pytest.mark.parametrize("code", BASE_2_CODES)
def test_product_kernel_at_its_ranges(code):
    """The product kernel finds an operand beyond its range from ``|x g| >= fl(A g)``: operands at, just below
    and just above ``A`` (counted as clamped only above), alone in a block or in every one, bit for bit."""
    A = 2.75  # a float32 (a range between floats compares differently in the eager path's float64 shift)
    near = torch.tensor([A, -A, math.nextafter(A, 0.0), math.nextafter(A, 9.0), 0.5], dtype=torch.float32)
    for a in (near.repeat(1000), torch.cat([torch.zeros(5000), near[:1], torch.zeros(4100)])):
        b = a.flip(0) * 0.5
        _, stats = assert_kernel_equals_eager(SpikingProduct(8, ranges=(A, A / 2), code=code), a, b)
        assert stats.clamped == 2 * int((a.abs() > torch.tensor(A, dtype=torch.float32)).sum())


@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("T", [4, 8, 16])
@pytest.mark.parametrize("rows", [1, 16, 17, 37])
def test_row_kernels_in_blocks_of_rows_are_the_eager_path_bit_for_bit(code, T, rows, monkeypatch):
    """Softmax and the norms take their rows in blocks (a block's table reads fetched together): rows
    across block boundaries, fully masked and constant rows at the edges, signed zeros and subnormals."""
    g = torch.Generator().manual_seed(rows * T)
    x = torch.randn(rows, 48, generator=g) * 4
    x[:, 5], x[:, 6], x[:, 7] = -0.0, 0.0, 1e-40  # signed zeros, a subnormal
    for row in (0, 15, 16, rows - 1):
        if row < rows and row % 2 == 0:
            x[row] = 1.5  # a constant row: zero variance, a flat softmax
    masked = x.clone()
    masked[15 % rows] = float("-inf")  # a fully masked row
    masked[rows - 1, ::3] = float("-inf")
    weight, bias = torch.rand(48, generator=g) + 0.5, torch.randn(48, generator=g)
    for op, inputs in ((SpikingSoftmax(dim=-1, T=T, code=code), masked),
                       (SpikingSoftmax(dim=-1, T=T, code=code, centered_codes=False), masked),
                       (SpikingLayerNorm(48, weight, bias, T=T, code=code), x),
                       (SpikingRMSNorm(48, weight, T=T, code=code), x),
                       (SpikingLayerNorm(48, T=T, code=code, element_exponents=False), x)):
        assert used_kernel(op, inputs, monkeypatch)
        assert_kernel_equals_eager(op, inputs)


@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("n", [511, 512, 513, 1100])
def test_softmax_kernel_on_rows_longer_than_a_lookup_block(code, n, monkeypatch):
    """A row's 2^frac words are gathered 512 at a time: rows across that length, masked tails."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g) * 6
    x[1, n // 2:] = float("-inf")
    op = SpikingSoftmax(dim=-1, T=16, code=code)
    assert used_kernel(op, x, monkeypatch)
    assert_kernel_equals_eager(op, x)


OPERANDS = {  # (a, b) from a [3, 7, 9] and b [3, 9, 7] draw
    "product": lambda a, b: (a, b.transpose(-1, -2)),  # same shape (one fused pass), b not contiguous
    "product, broadcast": lambda a, b: (a, b[:1, :, :1].transpose(-1, -2)),  # codes fused, product in PyTorch
    "matmul": lambda a, b: (a, b),
    "matmul, transposed views": lambda a, b: (b.transpose(-1, -2), a.transpose(-1, -2)),  # coded in place
    "matmul, a slice": lambda a, b: (torch.cat([a, a], -1)[..., 3:12], b),  # not dense: coded from a copy
}


@SETTINGS
@given(kind=st.sampled_from(sorted(OPERANDS)), T=st.sampled_from([4, 8, 16, 24]),
       ranges=st.tuples(st.floats(0.1, 10.0), st.floats(0.1, 10.0)), scale=st.floats(0.01, 20.0),
       seed=st.integers(0, 2 ** 16))
def test_operand_coding_kernels_are_the_eager_fast_path_bit_for_bit(kind, T, ranges, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = OPERANDS[kind](torch.randn(3, 7, 9, generator=g) * scale, torch.randn(3, 9, 7, generator=g) * scale)
    a[0, 0, 0] = -0.0 * a[0, 0, 0]  # a signed zero
    op = SpikingMatmul(T, ranges=ranges) if kind.startswith("matmul") else SpikingProduct(T, ranges=ranges)
    logging.disable(logging.WARNING)  # large scales clamp (counted in the stats compared here)
    try:
        assert_kernel_equals_eager(op, a, b)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("T", range(1, 17))
def test_kernel_spike_count_of_every_digit_pattern_is_the_codes_count(code, T):
    """The kernels' closed-form count (binary, signed) on every pattern q < 2^T, against ops.coding's."""
    coder = IdentityCoder(T, 1.0, code)
    x = torch.arange(2 ** T, dtype=torch.float64).div(2 ** T - 1).float()
    q = coder.quantize(x)
    value, counts, stats = kernels.encode(x, coder.kernel_params(torch.float32, True), 1.0)
    assert torch.equal(q, torch.arange(2 ** T, dtype=torch.float32))  # every pattern once
    assert torch.equal(counts, CODES[code].count(q, T)) and stats[0] == int(counts.sum())


ATTENTION_OPERANDS = {  # from q [2, 37, 3, 8] (batch, sequence, heads, width) and k alike, as attention forms them
    "scores, heads of a permuted projection": lambda q, k: (q.transpose(1, 2), k.transpose(1, 2).transpose(-1, -2)),
    "context, contiguous weights": lambda q, k: (torch.softmax(q.transpose(1, 2) @ q.transpose(1, 2).transpose(-1, -2), -1),
                                                 k.transpose(1, 2)),
    "unbatched": lambda q, k: (q[0, :, 0], k[0, :, 0].T),
    "one row, transposed": lambda q, k: (q[:, :1].transpose(1, 2), k.transpose(1, 2).transpose(-1, -2)),
    "strided": lambda q, k: (q[..., ::2].transpose(1, 2), k[..., ::2].transpose(1, 2).transpose(-1, -2)),
    "k^T v (linear attention), transposed on the left": lambda q, k: (k.transpose(1, 2).transpose(-1, -2), q.transpose(1, 2)),
}


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(sorted(ATTENTION_OPERANDS)), code=st.sampled_from(["signed", "binary"]),
       A=st.sampled_from([1.0, 0.3, 2.5, 2.0 ** -100]), scale=st.sampled_from([0.5, 2.0, 1e3, 1e30]),
       seed=st.integers(0, 2 ** 16), exponents=st.sampled_from([(False, False), (True, True)]))
def test_matmul_operand_kernel_is_the_eager_fast_path_bit_for_bit(kind, code, A, scale, seed, exponents):
    """Attention's operands in the layouts attention makes (heads of a projection, transposed keys,
    contiguous weights, strided views), within the ranges and beyond them (overflow shifts up to the
    largest, values at and just above a shift's boundary), both digit codes: codes, spikes,
    coincidences and product as the eager path's; the kernel runs. 37 positions: a transposed key's
    runs are written 16 at a time (twice per matrix) and one by one (the last 5). With element exponents
    (the attention probabilities' code, span 10 - T) each element is first coded at its own exponent."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 37, 3, 8, generator=g) for _ in range(2))
    q[0, 0, 0, 0], k[0, 0, 0, 0] = -0.0, -0.0  # signed zeros
    edges = torch.tensor([A, 2 * A, 8 * A], dtype=torch.float32) / scale  # at shift boundaries once scaled
    k[0, 1, 0, :6] = torch.cat([edges, torch.nextafter(edges, edges + 1)])
    a, b = ATTENTION_OPERANDS[kind](q, k)
    b = b * scale
    op = SpikingMatmul(16 if exponents == (False, False) else 6, ranges=(A, A), code=code,
                       element_exponents=exponents)  # T=6: span 4
    calls = []
    logging.disable(logging.WARNING)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "matmul_operand", lambda *x, real=kernels.matmul_operand: calls.append(1) or real(*x))
            assert_kernel_equals_eager(op, a, b)
    finally:
        logging.disable(logging.NOTSET)
    assert len(calls) >= 2


def calibrated_channel_op(kind, T, code, g):
    """A calibrated SpikingWeightInput (Linear or Conv1d: channels last or in dim 1) or per-channel
    SpikingReLU on 12 channels whose spreads span 30x and whose centres span [-2, 2]."""
    spread, offset = torch.linspace(0.1, 3.0, 12), torch.linspace(-2.0, 2.0, 12)
    if kind == "relu":
        op, dim = SpikingReLU(T, code=code, per_channel=True), -1
    elif kind == "conv":
        op, dim = SpikingWeightInput(torch.nn.Conv1d(12, 5, 3), T, code=code), 1
    else:
        op, dim = SpikingWeightInput(torch.nn.Linear(12, 5), T, code=code, centered=kind == "linear, centred"), -1
    shape = (2, 12, 9) if dim == 1 else (2, 9, 12)
    view = (1, 12, 1) if dim == 1 else (12,)
    with torch.no_grad():
        for _ in range(2):
            op(torch.randn(*shape, generator=g) * spread.view(view) + offset.view(view))
    op.finish_calibration()
    return op, shape, view


CHANNEL_KINDS = ["linear, centred", "linear", "conv", "relu"]


@SETTINGS
@given(kind=st.sampled_from(CHANNEL_KINDS), T=st.sampled_from([4, 8, 16]), code=st.sampled_from(["signed", "binary"]),
       scale=st.sampled_from([0.0, 0.5, 1.0, 4.0, 1e3]), seed=st.integers(0, 2 ** 16))
def test_channel_code_kernel_is_the_eager_path_bit_for_bit(kind, T, code, scale, seed):
    """Weight-layer inputs and rectifiers: per-channel ranges, centred or not, within the ranges and
    beyond them (the overflow shift), zeros and negatives, in both digit codes; the kernel runs."""
    g = torch.Generator().manual_seed(seed)
    op, shape, view = calibrated_channel_op(kind, T, code, g)
    x = torch.randn(*shape, generator=g) * scale + torch.linspace(-2.0, 2.0, 12).view(view)
    x.view(-1)[:5] = torch.tensor([0.0, -0.0, 1e30, -1e30, 3.0])
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "channel_code", lambda *a, real=kernels.channel_code: calls.append(1) or real(*a))
        assert_kernel_equals_eager(op, x)
    assert calls


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_channel_code_kernel_clamps_and_counts_like_the_eager_path(kind):
    """Inputs whose quotient by a tiny range overflows float32 and inputs beyond even the largest
    shift (a range calibrated on zeros): clamped and counted alike; and, for a rectifier on 7 channels
    or an unbatched convolution input, another channel count than calibration saw (one range for all)."""
    g = torch.Generator().manual_seed(3)
    op, shape, view = calibrated_channel_op(kind, 8, "signed", g)
    ranges = op.channel_ranges
    op.channel_ranges = torch.full_like(ranges, 2.0 ** -126)
    x = torch.randn(*shape, generator=g)
    x.view(-1)[:4] = torch.tensor([3e38, -3e38, 1e-38, 2.0 ** -100])
    logging.disable(logging.WARNING)
    try:
        _, stats = assert_kernel_equals_eager(op, x)
    finally:
        logging.disable(logging.NOTSET)
    assert stats.clamped > 0
    op.channel_ranges = ranges
    other = {"relu": (3, 7), "conv": (12, 9)}.get(kind)
    if other is not None:
        assert_kernel_equals_eager(op, torch.randn(*other, generator=g) * 5)


@pytest.mark.parametrize("code", ["signed", "binary"])
@pytest.mark.parametrize("T", [4, 8, 16])
@pytest.mark.parametrize("layer", ["linear", "conv", "relu"])
def test_channel_code_blocks_within_their_ranges_skip_the_shift_bit_for_bit(layer, T, code):
    """The kernel codes blocks of 4096 elements without overflow shifts when every quotient lies within
    ``[-1, 1]``: long rows of channels (Linear, ReLU) and long runs of one channel (Conv1d) wholly within
    their ranges, their exact ends ``c +- A_k`` and ``-0.0`` included, next to blocks holding one input just
    beyond (``c + A_k`` one float up) or far beyond: the eager path's bits and statistics, and the
    step-by-step simulation's."""
    g = torch.Generator().manual_seed(T)
    channels = 3 if layer == "conv" else 5000
    if layer == "relu":
        op = SpikingReLU(T, code=code, per_channel=True, A=2.0)
    else:
        module = torch.nn.Conv1d(channels, 2, 1) if layer == "conv" else torch.nn.Linear(channels, 2)
        op = SpikingWeightInput(module, T, code=code, A=2.0)
        op.channel_centers = torch.rand(channels, generator=g) - 0.5
    op.channel_ranges = torch.rand(channels, generator=g) + 0.5
    shape = (2, channels, 9000) if layer == "conv" else (3, channels)
    view = (1, channels, 1) if layer == "conv" else (channels,)
    ranges = op.channel_ranges.view(view)
    centres = op.channel_centers.view(view) if layer != "relu" else torch.zeros(view)
    x = (torch.rand(*shape, generator=g) * 2 - 1) * ranges + centres
    top, bottom = ((centres + ranges).expand(shape).flatten(), (centres - ranges).expand(shape).flatten())
    flat = x.view(-1)
    flat[:3] = torch.stack([top[0], bottom[1], torch.tensor(-0.0)])
    flat[5000] = torch.nextafter(top[5000], torch.tensor(math.inf))
    flat[12000] = 1e6
    fast, fast_stats = assert_kernel_equals_eager(op, x)
    sim, sim_stats = run(op, x, mode="simulate")
    torch.testing.assert_close(fast, sim, rtol=1e-5, atol=1e-5)
    assert fast_stats == sim_stats


@pytest.mark.parametrize("code", ["signed", "binary"])
@pytest.mark.parametrize("T", [4, 8, 16])
def test_sibling_weight_layers_code_their_shared_input_once(T, code):
    """Three projections calibrated on the same input (an attention's query, key and value) code one
    input tensor once: each layer's output and statistics are the eager path's (inputs beyond the ranges
    too); an input changed in place, another input, other ranges or a pre-hook's new input are coded
    again, and a forward hook on a sibling still runs."""
    g = torch.Generator().manual_seed(T)
    spread = torch.linspace(0.1, 3.0, 12)
    layers = [SpikingWeightInput(torch.nn.Linear(12, 5), T, code=code) for _ in range(4)]
    with torch.no_grad():
        for _ in range(2):
            batch = torch.randn(4, 9, 12, generator=g) * spread
            for op in layers[:3]:
                op(batch)
            layers[3](batch * 2)
    for op in layers:
        op.finish_calibration()
    x = torch.randn(2, 9, 12, generator=g) * spread * 2

    def forward(ops, inputs, between=lambda: None):
        """Each op on its input (``between`` runs between two calls): the kernel calls it took."""
        calls, fused, eager = [], [], []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "channel_code", lambda *a, real=kernels.channel_code: calls.append(1) or real(*a))
            for op, v in zip(ops, inputs):
                fused.append(run(op, v))
                with kernels.disabled():
                    eager.append(run(op, v))
                between()
        for (out, stats), (reference, reference_stats) in zip(fused, eager):
            assert torch.equal(out, reference) and stats == reference_stats
        return len(calls)

    assert forward(layers[:3], [x] * 3) == 1
    assert forward(layers[:3], [x] * 3) == 0  # the same tensor again: its code is still the last one
    hooked = []
    layers[1].register_forward_hook(lambda *a: hooked.append(1))
    y = x.clone()
    assert forward(layers[:3], [y] * 3) == 1 and hooked == [1, 1]
    z = x.clone()
    assert forward([layers[0], layers[1]], [z, z], lambda: z.mul_(2)) == 2  # changed in place between the calls
    assert forward([layers[0], layers[3], layers[2]], [x.clone()] * 3) == 3  # other ranges between: coded again
    layers[2].register_forward_pre_hook(lambda op, args: (args[0] + 1,))
    assert forward(layers[:3], [x.clone()] * 3) == 2
    kept = x.clone()
    run(layers[0], kept)
    assert LAST_CODE.entry is not None
    del kept  # its code is released with it
    assert LAST_CODE.entry is None


ACTIVATIONS = {"gelu N=8 T=16": lambda: SpikingActivation.gelu(T=16, N=8),
               "gelu_tanh N=4 T=10": lambda: SpikingActivation.gelu(T=10, N=4, approximate="tanh"),
               "silu N=8 T=8": lambda: SpikingActivation.silu(T=8, N=8), "tanh N=4 T=12": lambda: SpikingActivation.tanh(T=12, N=4)}


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(sorted(ACTIVATIONS)), shape=st.lists(st.integers(0, 30), min_size=1, max_size=3),
       scale=st.sampled_from([1e-3, 1.0, 4.0, 30.0]), seed=st.integers(0, 2 ** 16))
def test_activation_kernel_is_the_eager_table_bit_for_bit(name, shape, scale, seed):
    """Inside the domain, at its ends and beyond them (clamped and counted alike), at breakpoints
    of the table and at the floats just below them."""
    g = torch.Generator().manual_seed(seed)
    op = ACTIVATIONS[name]()
    lo, hi = op.fitted.domain
    edges = neuron_table(op.node, op.fitted.domain, torch.float32, torch.device("cpu")).edges
    picked = edges[torch.randint(len(edges), (16,), generator=g)]
    special = torch.cat([torch.tensor([lo, hi, lo - 1, hi + 1]), picked, torch.nextafter(picked, picked - 1)])
    x = torch.cat([(torch.randn(*shape, generator=g) * scale).flatten(), special])
    logging.disable(logging.WARNING)
    try:
        assert_kernel_equals_eager(op, x)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_kernel_reads_every_interval_in_full_lanes_and_tails(name):
    """Every breakpoint of the table and the float just below it, beyond both ends, in lengths that
    fill whole 16-lane gathers, leave a tail, or cross a 512-element block."""
    op = ACTIVATIONS[name]()
    lo, hi = op.fitted.domain
    edges = neuron_table(op.node, op.fitted.domain, torch.float32, torch.device("cpu")).edges
    x = torch.cat([torch.tensor([lo - 1, hi + 1, lo, hi]), edges, torch.nextafter(edges, edges - 1)])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    logging.disable(logging.WARNING)
    try:
        for n in (1, 15, 16, 17, 511, 513, len(x)):
            assert_kernel_equals_eager(op, x[:n])
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("unsettled", [0, 1, 17, 127, 128, 129, 300, 512])
def test_activation_kernel_searches_unsettled_buckets_whether_few_or_many(unsettled):
    """A 512-input block with ``unsettled`` inputs at breakpoints (and the floats just below them) among
    inputs of settled buckets: the kernel searches only those up to a quarter of the block, every lane
    beyond; both equal the eager table, and so does a second block of one 16-lane vector and a tail."""
    op = SpikingActivation(load_fitted("gelu_residual", "mbe", 8, 16))
    table = neuron_table(op.node, op.fitted.domain, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(unsettled)
    settled = torch.nonzero(table.settled).flatten()
    buckets = settled[torch.randint(len(settled), (536,), generator=g)].double()
    x = (table.lo + (buckets + 0.25 + 0.5 * torch.rand(536, generator=g, dtype=torch.float64)) / table.scale).float()
    edges = table.edges[torch.randint(1, len(table.edges), (unsettled,), generator=g)]
    x[torch.randperm(512, generator=g)[:unsettled]] = torch.where(torch.rand(unsettled, generator=g) < 0.5, edges,
                                                                  torch.nextafter(edges, edges - 1))
    assert_kernel_equals_eager(op, x)


def rectified_gelu(T, code, g):
    """GELU as a per-channel rectifier plus its fitted residual, calibrated on 12 channels."""
    op = RectifiedActivation(SpikingReLU(T, code=code, per_channel=True),
                             SpikingActivation(load_fitted("gelu_residual", "mbe", 8, T)))
    with torch.no_grad():
        op(torch.randn(4, 12, generator=g) * torch.linspace(0.1, 3.0, 12))
    op.rectifier.finish_calibration()
    return op


@settings(max_examples=12, deadline=None)
@given(T=st.sampled_from([8, 16]), code=st.sampled_from(["signed", "binary"]), scale=st.sampled_from([0.5, 4.0, 1e3]),
       seed=st.integers(0, 2 ** 16))
def test_rectified_activation_in_one_pass_is_its_parts_bit_for_bit(T, code, scale, seed):
    """relu code plus residual lookup in one kernel: the output and each part's statistics are those of the
    two parts run one after the other (kernels and eager), beyond the ranges and the residual's domain too."""
    g = torch.Generator().manual_seed(seed)
    op = rectified_gelu(T, code, g)
    x = torch.randn(3, 7, 12, generator=g) * scale
    x.view(-1)[:4] = torch.tensor([0.0, -0.0, 9.0, -9.0])

    def forward():
        functional.reset_net(op)
        with torch.no_grad():
            return op(x), op.rectifier.op_stats(), op.residual.op_stats()

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "rectified", lambda *a, real=kernels.rectified: calls.append(1) or real(*a))
        fused = forward()
        with kernels.disabled():
            eager = forward()
    op.rectifier.register_forward_hook(lambda *a: None)  # a hooked part runs its own forward
    parts = forward()
    assert calls == [1]
    for other in (eager, parts):
        assert torch.equal(fused[0], other[0]) and fused[1:] == other[1:]


@pytest.mark.parametrize("T,code", [(8, "binary"), (16, "signed")])
def test_rectified_activation_codes_its_output_for_the_weight_layer_that_reads_it(T, code):
    """GELU into a centred Linear: once the layer has coded the activation's output (the first forward),
    the activation codes the next outputs for it in its own pass and the layer takes that code; every
    output and each operator's statistics are the eager path's (inputs beyond the ranges too). An output
    changed in place before the layer reads it, or another tensor, is coded by the layer itself."""
    g = torch.Generator().manual_seed(T)
    spread = torch.linspace(0.1, 3.0, 12)
    act, layer = rectified_gelu(T, code, g), SpikingWeightInput(torch.nn.Linear(12, 5), T, code=code)
    with torch.no_grad():
        for _ in range(2):
            layer(act(torch.randn(4, 9, 12, generator=g) * spread))
    layer.finish_calibration()
    x = torch.randn(3, 7, 12, generator=g) * spread * 3

    def forward(between=lambda y: y):
        functional.reset_net(act)
        functional.reset_net(layer)
        with torch.no_grad():
            out = layer(between(act(x)))
        return out, act.rectifier.op_stats(), act.residual.op_stats(), layer.op_stats()

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "channel_code", lambda *a, real=kernels.channel_code: calls.append(1) or real(*a))
        first, second = forward(), forward()
        assert len(calls) == 1  # the second output was coded in the activation's pass
        changed, copied = forward(lambda y: y.mul_(2)), forward(lambda y: y.clone())
        assert len(calls) == 3
    with kernels.disabled():
        eager, eager_changed = forward(), forward(lambda y: y.mul_(2))
    for result, reference in ((first, eager), (second, eager), (changed, eager_changed), (copied, eager)):
        assert torch.equal(result[0], reference[0]) and result[1:] == reference[1:]


@pytest.mark.parametrize("make", [lambda: SpikingSoftmax(T=16), lambda: SpikingLayerNorm(32),
                                  lambda: SpikingActivation.gelu(T=16, N=8),
                                  lambda: SpikingRMSNorm(32, torch.rand(32) + 0.5),
                                  lambda: SpikingReLU(16, A=2.0), lambda: SpikingWeightInput(torch.nn.Linear(32, 4), 16, A=3.0)])
def test_kernels_agree_with_the_simulation(make):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 9, 32, generator=g) * 4
    x[0, 0, :5] = float("-inf") if isinstance(make(), SpikingSoftmax) else x[0, 0, :5]
    op = make()
    fast, fast_stats = run(op, x)
    sim, sim_stats = run(op, x, mode="simulate")
    torch.testing.assert_close(fast, sim, rtol=1e-5, atol=1e-6)
    assert fast_stats == sim_stats


BAD_INPUT_CASES = [(op, 0) for op in (SpikingSoftmax(T=16), SpikingLayerNorm(8), SpikingRMSNorm(8),
                                      SpikingActivation.gelu(T=16, N=8))]
BAD_INPUT_CASES += [(op, operand) for op in (SpikingProduct(16, ranges=(3.0, 3.0)), SpikingMatmul(16, ranges=(3.0, 3.0)))
                    for operand in (0, 1)]


@pytest.mark.parametrize("op, operand", BAD_INPUT_CASES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_kernels_report_nan_and_inf_as_errors(op, operand, bad):
    two = hasattr(op, "coders")
    inputs = [torch.randn(4, 8), torch.randn(8 if isinstance(op, SpikingMatmul) else 4, 8)][:2 if two else 1]
    inputs[operand][2, 3] = bad
    if bad == float("-inf") and isinstance(op, SpikingSoftmax):
        assert run(op, *inputs)[0][2, 3] == 0  # -inf is a mask
        return
    with pytest.raises(ValueError, match=f"operand {'ab'[operand]} contains 1 NaN/Inf" if two else "1 NaN/Inf value"):
        run(op, *inputs)


def test_packed_table_round_trips_and_refuses_what_does_not_fit():
    values = torch.tensor([0.75, 0.9999, 1.0, 1.5, 1.9999999])
    spikes = torch.tensor([0.0, 3.0, 80.0, 255.0, 17.0])
    words, base = kernels.pack(values, spikes)
    w = words.long() & 0xFFFFFFFF
    decoded = (base + (w & 0xFFFFFF)).to(torch.int32).view(torch.float32)
    assert torch.equal(decoded, values) and torch.equal((w >> 24).float(), spikes)
    assert kernels.pack(torch.tensor([0.25, 1.0]), torch.zeros(2)) is None  # three binades
    assert kernels.pack(torch.tensor([-1.0, 1.0]), torch.zeros(2)) is None
    assert kernels.pack(values, spikes + 1) is None  # 256 spikes
    assert kernels.pack(values, spikes + 0.5) is None
    table = SpikingSoftmax(T=16).exp2.table(torch.float32, torch.device("cpu"))
    assert kernels.pack(table.real, table.imag) is not None  # the shipped exp2 fits


def test_threads_split_rows_without_changing_a_bit(softmax):
    g = torch.Generator().manual_seed(4)
    x, h = torch.randn(64, 512, generator=g) * 5, torch.randn(96, 384, generator=g)
    ln = SpikingLayerNorm(384, torch.randn(384, generator=g), torch.randn(384, generator=g))
    a, b = torch.randn(64, 512, generator=g), torch.randn(64, 512, generator=g)
    product, matmul = SpikingProduct(16, ranges=(5.0, 5.0)), SpikingMatmul(16, ranges=(5.0, 5.0))
    q, k = a.view(4, 16, 512).transpose(1, 2), b.view(4, 16, 512)
    single = [run(softmax, x), run(ln, h), run(product, a, b), run(matmul, q, k)]
    torch.set_num_threads(2)
    try:
        threaded = [run(softmax, x), run(ln, h), run(product, a, b), run(matmul, q, k)]
    finally:
        torch.set_num_threads(1)
    for (y1, s1), (y2, s2) in zip(single, threaded):
        assert torch.equal(y1, y2) and s1 == s2


def test_eager_path_runs_where_the_kernels_cannot(softmax):
    assert not kernels.usable(torch.zeros(2, dtype=torch.float64))
    assert not kernels.usable(torch.zeros(2, requires_grad=True))
    assert not kernels.usable(torch.zeros(2), row=kernels.MAX_ROW + 1)
    x = torch.randn(3, 5, requires_grad=True)
    y, _ = run(softmax, x)  # no_grad inside run: the kernel takes it
    torch.testing.assert_close(y, torch.softmax(x.detach(), -1), atol=1e-3, rtol=0)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 build without AVX-512")
def test_kernels_built_without_avx512_give_the_same_bits(monkeypatch, tmp_path):
    """The gather instructions (AVX-512) and the loops they stand for: the kernels built for x86-64-v3
    return the bits and statistics of this machine's build."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    flags = [f for f in kernels.FLAGS if not f.startswith(("-march", "-mprefer"))] + ["-march=x86-64-v3"]
    subprocess.run([compiler, *flags, str(kernels.SOURCE), "-o", str(tmp_path / "k.so"), "-lm"], check=True)
    portable = ctypes.CDLL(str(tmp_path / "k.so"))
    for name, argtypes in kernels.SIGNATURES.items():
        getattr(portable, name).argtypes, getattr(portable, name).restype = argtypes, None
    g = torch.Generator().manual_seed(0)
    cases = [(SpikingActivation.gelu(T=16), (torch.randn(7, 1001, generator=g) * 6,)),
             (SpikingSoftmax(T=16), (torch.randn(37, 700, generator=g) * 5,)),
             (SpikingLayerNorm(100, torch.rand(100, generator=g), torch.randn(100, generator=g), T=16),
              (torch.randn(37, 100, generator=g) * 3,)),
             (SpikingRMSNorm(100, T=8, code="binary"), (torch.randn(37, 100, generator=g),)),
             (SpikingProduct(16, ranges=(2.0, 2.0)), (torch.randn(3, 1001, generator=g), torch.randn(3, 1001, generator=g)))]
    logging.disable(logging.WARNING)  # GELU's inputs beyond its domain are clamped (and counted alike)
    try:
        for op, inputs in cases:
            native = run(op, *inputs)
            monkeypatch.setattr(kernels, "_library", portable)
            built = run(op, *inputs)
            monkeypatch.undo()
            assert torch.equal(native[0], built[0]) and native[1] == built[1], type(op).__name__
    finally:
        logging.disable(logging.NOTSET)


def test_without_a_compiler_fast_mode_falls_back_with_one_warning(monkeypatch, tmp_path, caplog, softmax):
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.kernels"):
        assert kernels.library() is None and kernels.library() is None
    assert len(caplog.records) == 1 and "eager PyTorch path" in caplog.text
    x = torch.randn(4, 16)
    y, stats = run(softmax, x)
    monkeypatch.undo()
    assert kernels.library() is not None
    fused, fused_stats = run(softmax, x)
    assert torch.equal(y, fused) and stats == fused_stats


@pytest.mark.parametrize("op_class", [SpikingProduct, SpikingMatmul])
def test_an_operand_between_a_range_and_its_float32_rounding_is_coded_alike_on_every_path(op_class):
    """``A = 2.7`` lies below ``float32(2.7)``: the coder keeps ``A`` as float32, so the kernels' float32
    range check and the torch path's float64 overflow shift agree on an operand of ``float32(2.7)``
    (before, the torch path shifted it by 2 and fired 8 spikes, the kernels coded it at ``A`` with 22)."""
    a = torch.tensor([[2.7, 1.0]])
    b = torch.tensor([[1.0, 2.7]]) if op_class is SpikingProduct else torch.tensor([[1.0], [2.7]])
    fast, eager = op_class(8, "fast", (2.7, 2.7)), op_class(8, "fast", (2.7, 2.7))
    out = fast(a, b)
    with kernels.disabled():
        reference = eager(a, b)
    assert torch.equal(out, reference) and fast.op_stats() == eager.op_stats()
    assert fast.coders[0].A == float(torch.tensor(2.7, dtype=torch.float32)) and fast.op_stats().clamped == 0
