"""The ``triton`` backend on CPU tensors in the Triton interpreter: each kernel returns the bits and
statistics of the eager fast path (itself proven equal to the step-by-step simulation), and the
backend switch chooses, refuses and aliases as documented."""
import importlib.util
import logging
import os

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                                reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it)")

from spikingjelly_mbe import kernels  # noqa: E402
from spikingjelly_mbe.kernels import backend  # noqa: E402
from spikingjelly_mbe.neurons.lookup import neuron_table  # noqa: E402
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct,  # noqa: E402
                                  SpikingReLU, SpikingRMSNorm, SpikingSoftmax, SpikingWeightInput)
from spikingjelly_mbe.ops.coding import IdentityCoder  # noqa: E402


def run(op, *inputs, name):
    functional.reset_net(op)
    with torch.no_grad(), backend.use(name):
        return op(*inputs), op.op_stats()


def assert_triton_equals_torch(op, *inputs, calls=None):
    """Bit for bit: outputs and every statistic, with the kernels reached (``calls``: exactly that many)."""
    (fused, fused_stats), reached = count_custom_ops(lambda: run(op, *inputs, name="triton"))
    eager, eager_stats = run(op, *inputs, name="torch")
    assert reached if calls is None else reached == calls, f"{reached} Triton kernels ran"
    assert fused.dtype == eager.dtype
    assert torch.equal(fused, eager), float((fused.float() - eager.float()).abs().max())
    assert fused_stats == eager_stats
    return fused


def count_custom_ops(fn):
    """``fn()`` and how many ``sjmbe::`` custom ops it dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func.namespace == "sjmbe"
            return func(*args, **(kwargs or {}))

    with Count():
        result = fn()
    return result, Count.calls


@pytest.mark.parametrize("code, T", [(c, T) for c in ("binary", "signed") for T in (1, 5, 16)] + [("ternary", 4), ("ternary", 10)])
def test_code_kernel_is_the_eager_code_bit_for_bit(code, T):
    g = torch.Generator().manual_seed(T)
    coder = IdentityCoder(T, 0.7, code, shift_overflow=True)
    x = torch.randn(2000, generator=g) * 0.6
    x[:6] = torch.tensor([0.0, -0.0, 0.7, -0.7, 3e38, -5.0])  # range ends, beyond every shift, shifted
    params = list(coder.kernel_params(torch.float32, True))
    with backend.use("torch"):
        within, clamped = coder.code_within(x, False, (-1.0, 1.0))
        shifted, beyond = coder.encode(x, False)
    for shift, reference, clamps in ((False, within, clamped), (True, shifted, beyond)):
        value, counts, stats, sums = kernels.load_triton().code(x, None, None, 1, params, coder.A, shift, True,
                                                                fanout=3)
        assert torch.equal(value[1:], reference.value[1:]) and value[1].item() == 0  # the C kernels' signed zero
        assert torch.equal(counts, reference.counts) and sums.numel() == 0
        assert stats.tolist() == [int(reference.counts.sum()), clamps, 0, 3 * int(reference.counts.sum())]


def calibrated_weight_input(layer, x, T=6):
    op = SpikingWeightInput(layer, T=T)
    with torch.no_grad():
        op(x)
    op.finish_calibration()
    return op


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weight_input_kernel_is_the_eager_path_bit_for_bit(dtype):
    """Centres, per-channel ranges, overflow shifts (inputs far beyond calibration), half precision."""
    g = torch.Generator().manual_seed(1)
    layer = nn.Linear(12, 5).to(dtype)
    x = (torch.randn(4, 7, 12, generator=g) + torch.linspace(-2, 2, 12)).to(dtype)
    op = calibrated_weight_input(layer, x)
    x2 = x.clone()
    x2[0, 0, :3] = torch.tensor([40.0, -300.0, 1e4]).to(dtype)
    y = assert_triton_equals_torch(op, x2)
    assert y.dtype == dtype
    assert assert_triton_equals_torch(op, x2[..., :4, :].reshape(-1, 12)) is not None
    other = nn.Linear(9, 5)
    op9 = calibrated_weight_input(nn.Linear(12, 5), x.float())
    op9.layer = other  # another channel count than calibration saw: the largest range, no centres
    assert_triton_equals_torch(op9, torch.randn(3, 9, generator=g))


def test_weight_input_kernel_subtracts_the_rounding_bias_as_the_eager_path():
    from spikingjelly_mbe.conversion.calibration import Calibration, calibrate
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 7, 12, generator=g).square() + torch.linspace(-2, 2, 12) for _ in range(2)]
    op = SpikingWeightInput(nn.Linear(12, 5), T=4, bias_correction=True)
    calibrate(op, Calibration(data=batches))
    assert op.rounding_bias is not None and float(op.rounding_bias.abs().max()) > 0
    assert_triton_equals_torch(op, batches[0] * 3)


def test_weight_input_kernel_on_a_convolution():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 5, generator=g) * torch.tensor([1.0, 5.0, 0.1])[:, None, None]
    op = calibrated_weight_input(nn.Conv2d(3, 4, 3), x)
    assert_triton_equals_torch(op, x * 3)


@pytest.mark.parametrize("make", [lambda: SpikingProduct(8, ranges=(2.0, 0.5)), lambda: SpikingMatmul(6, ranges=(1.5, 3.0)),
                                  lambda: SpikingMatmul(4, ranges=(1.5, 3.0), element_exponents=(True, False))])
def test_operand_codes_of_products_are_the_eager_path_bit_for_bit(make):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 6, generator=g) * 2, torch.randn(2, 6, 5, generator=g)
    logging.disable(logging.WARNING)
    try:
        assert_triton_equals_torch(make(), a, b.transpose(-1, -2) if isinstance(make(), SpikingProduct) else b)
    finally:
        logging.disable(logging.NOTSET)


def calibrated(op, *batches):
    with torch.no_grad():
        for batch in batches:
            op(*batch)
    op.finish_calibration()
    return op


def test_a_per_channel_product_is_one_kernel_and_the_eager_path_bit_for_bit():
    """Codes of ``a / A_k`` and ``b / B_k`` (operands beyond calibration: shifted) times ``A_k B_k``,
    their coincidences; a broadcast operand takes the codes one by one, with the same numbers."""
    g = torch.Generator().manual_seed(9)
    scales = torch.logspace(-2, 1, 6)
    op = calibrated(SpikingProduct(T=8), *[(torch.randn(5, 6, generator=g) * scales, torch.randn(5, 6, generator=g))
                                           for _ in range(2)])
    assert op.channel_ranges_a is not None
    a, b = torch.randn(3, 5, 6, generator=g) * scales * 3, torch.randn(3, 5, 6, generator=g)
    assert_triton_equals_torch(op, a, b, calls=1)
    assert_triton_equals_torch(op, a, b[:1])
    assert_triton_equals_torch(op, a.to(torch.bfloat16), b.to(torch.bfloat16))


@pytest.mark.parametrize("batch_b", [(2, 3), (3,), ()])
def test_matmul_codes_count_the_coincidences_in_the_kernels(batch_b):
    """Equal batch shapes: two kernels, ``a``'s column spikes weighting ``b``'s; broadcast batches: the
    coincidences counted in PyTorch; both the eager numbers."""
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(2, 3, 4, 7, generator=g), torch.randn(*batch_b, 7, 5, generator=g) * 2
    a[0, 0, 0, 0] = 9.0  # beyond its range: shifted
    op = SpikingMatmul(T=6, ranges=(1.5, 3.0))
    assert_triton_equals_torch(op, a, b, calls=2)


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_rectifier_is_one_kernel_and_the_simulation_bit_for_bit(per_channel):
    """``relu(x)`` at each channel's range and overflow shift, negative inputs and zeros silent."""
    g = torch.Generator().manual_seed(11)
    scales = torch.logspace(-2, 1, 8)
    op = calibrated(SpikingReLU(T=8, per_channel=per_channel), *[(torch.randn(6, 8, generator=g) * scales,)
                                                                   for _ in range(2)])
    x = torch.randn(4, 6, 8, generator=g) * scales * 2
    x[0, 0, :3] = torch.tensor([0.0, -0.0, -5.0])
    (fused, fused_stats), calls = count_custom_ops(lambda: run(op, x, name="triton"))
    assert calls == 1
    op.mode = "simulate"
    simulated, simulated_stats = run(op, x, name="torch")
    op.mode = "fast"
    assert torch.equal(fused, simulated) and fused_stats == simulated_stats and fused_stats.spikes > 0
    assert_triton_equals_torch(op, x)


@pytest.mark.parametrize("make", [lambda: SpikingActivation.gelu(T=8, N=4), lambda: SpikingActivation.silu(T=8, N=8)])
def test_lookup_kernel_is_the_eager_table_bit_for_bit(make):
    """Inside the domain, at its ends, beyond them (clamped and counted alike), at breakpoints and
    the floats just below them."""
    op = make()
    lo, hi = op.fitted.domain
    edges = neuron_table(op.node, op.fitted.domain, torch.float32, torch.device("cpu")).edges
    g = torch.Generator().manual_seed(4)
    picked = edges[torch.randint(len(edges), (64,), generator=g)]
    x = torch.cat([torch.randn(500, generator=g) * 4, torch.tensor([lo, hi, lo - 1, hi + 1]), picked,
                   torch.nextafter(picked, picked - 1)])
    logging.disable(logging.WARNING)
    try:
        assert_triton_equals_torch(op, x)
        assert_triton_equals_torch(op, x.to(torch.bfloat16))
    finally:
        logging.disable(logging.NOTSET)


def test_kernels_report_nan_and_inf_as_errors():
    op = calibrated_weight_input(nn.Linear(4, 3), torch.randn(5, 4))
    x = torch.randn(2, 4)
    x[1, 2] = float("nan")
    with backend.use("triton"), pytest.raises(ValueError, match="1 NaN/Inf"):
        op(x)


def test_the_switch_chooses_by_device_or_as_told(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv(backend.ENV, raising=False)
    assert backend.select(cpu) == "c"
    assert backend.default_for(torch.device("cuda")) == "triton"
    monkeypatch.setenv(backend.ENV, "torch")
    assert backend.select(cpu) == "torch"
    monkeypatch.setenv(backend.ENV, "triton")
    assert backend.select(cpu) == "triton"
    with backend.use("c"):
        assert backend.select(cpu) == "c"
    with kernels.disabled():
        assert backend.select(cpu) == "torch" and not kernels.usable(cpu)
    monkeypatch.setenv(backend.ENV, "cuda")
    with pytest.raises(ValueError, match="SPIKINGJELLY_MBE_BACKEND must be one of"):
        backend.select(cpu)
    monkeypatch.setenv(backend.ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.select(cpu)


@pytest.mark.parametrize("kind", ["mbe", "fs"])
def test_a_triton_node_runs_the_time_loop_in_one_kernel_as_the_simulation(kind):
    from spikingjelly_mbe.fitting import load_fitted
    fit = load_fitted("gelu", kind, 4, 8)
    fused, reference = fit.node("m", backend="triton"), fit.node("m")
    x = torch.randn(fit.T, 40, 3, generator=torch.Generator().manual_seed(5)) * 2
    logging.disable(logging.WARNING)
    try:
        with torch.no_grad():
            y, calls = count_custom_ops(lambda: fused(x))
            y_ref = reference(x)
    finally:
        logging.disable(logging.NOTSET)
    assert calls == 1
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-7)
    assert fused.last_spike_count == reference.last_spike_count > 0
    x.requires_grad_(True)
    fused(x).sum().backward()  # the fitted target's straight-through gradient, as the torch backend
    torch.testing.assert_close(x.grad, torch.autograd.functional.jacobian(
        lambda h: fit.node().surrogate_function(h.sum(0)).sum(), x.detach()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: SpikingSoftmax(T=16), lambda: SpikingSoftmax(dim=1, T=8, code="binary"),
                                  lambda: SpikingSoftmax(T=5, code="ternary"),
                                  lambda: SpikingSoftmax(T=6, centered_codes=False)])
def test_softmax_kernel_is_the_eager_path_bit_for_bit(make):
    """Masked positions, a fully masked row, subnormal and vanishing terms, a one-hot row (rows along
    the operator's ``dim``: one kernel program each)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 40, generator=g) * 6
    x[0, 0] = float("-inf")
    x[0, 1, :20] = float("-inf")
    x[1, 0] = torch.tensor([0.0, -87.0, -100.0, -103.3, -104.0, -150.0, -1e6, 50.0] * 5)
    x[1, 1] = torch.tensor([1e4] + [0.0] * 39)
    x = x.movedim(-1, make().dim)
    assert_triton_equals_torch(make(), x)
    assert_triton_equals_torch(make(), x.to(torch.bfloat16))


@pytest.mark.parametrize("make", [lambda: SpikingLayerNorm(24, torch.rand(24) + 0.5, torch.randn(24)),
                                  lambda: SpikingRMSNorm(24, torch.rand(24) + 0.5),
                                  lambda: SpikingLayerNorm((4, 6), T=8, code="binary"),
                                  lambda: SpikingRMSNorm(24, element_exponents=False),
                                  lambda: SpikingLayerNorm(24, torch.rand(24) + 0.5, T=4, code="ternary"),
                                  lambda: SpikingRMSNorm(24, T=6, centered_codes=False)])
def test_norm_kernels_are_the_eager_path_bit_for_bit(make):
    """Outlier channels, a constant row, a zero row, a tiny row, half precision."""
    g = torch.Generator().manual_seed(7)
    op = make()
    x = torch.randn(5, 24, generator=g) * 3 + 1
    x[0, 3] = 400.0
    x[1] = 2.5
    x[2] = 0.0
    x[3] *= 1e-20
    x = x.view(5, *op.normalized_shape)
    assert_triton_equals_torch(op, x)
    assert_triton_equals_torch(op, x.to(torch.float16))


def test_under_deferred_checks_the_kernels_never_read_the_device_and_nan_raises_when_read():
    """The Triton path keeps spikes, clamps and NaN/Inf counts on the device: no host sync in a
    forward; the counts arrive at op_stats(), and a NaN input raises at the flush."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Syncs(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Syncs.count += func.__name__ in ("_local_scalar_dense", "item", "is_nonzero")
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(8)
    ops = [calibrated_weight_input(nn.Linear(12, 5), torch.randn(4, 12, generator=g)), SpikingSoftmax(T=8),
           SpikingActivation.gelu(T=8, N=4), SpikingRMSNorm(12, T=8)]
    x = torch.randn(3, 12, generator=g) * 3
    for op in ops:
        op.checks = "deferred"
        with backend.use("triton"), torch.no_grad(), Syncs():
            op(x)
        with backend.use("torch"), torch.no_grad():
            reference = run(op, x, name="torch")[1]
        functional.reset_net(op)
        with backend.use("triton"), torch.no_grad():
            op(x)
        assert op.op_stats() == reference
        bad = x.clone()
        bad[1, 2] = float("nan")
        with backend.use("triton"), torch.no_grad():
            op(bad)
        with pytest.raises(ValueError, match="1 NaN/Inf"):
            op.flush()
    assert Syncs.count == 0


def test_ternary_operands_are_the_eager_path_bit_for_bit():
    """``operand_code='ternary'``: products, matmuls, einsums and weight inputs (fixed and calibrated
    per-channel ranges, centres, overflow shifts) count balanced-ternary digits in the kernels."""
    from test_ternary_code import operand_ops

    ops = operand_ops("ternary", "fast")
    for op, inputs in (ops[1], *ops[3:6]):  # the matmul's two kernels, the calibrated ones
        assert_triton_equals_torch(op, *inputs)
