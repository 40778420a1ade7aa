"""Rectified activations (a range reduction of GELU and SiLU): ``f = relu + (f - relu)``, the rectifier
on an identity neuron, the residual on a fitted MBE neuron. Checked against closed forms (the residual
targets), plain-PyTorch rounding (the rectifier, rows beyond its range), the float functions (fit
error at T=8 against the whole-function fit, straight-through gradients), fast == step by step, and
conversion's energy accounting."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.fitting import TARGETS, load_fitted
from spikingjelly_mbe.fitting.targets import RECTIFIED
from spikingjelly_mbe.ops import RectifiedActivation, SpikingActivation, SpikingReLU, flops

torch.set_num_threads(1)


def rounded_relu(x: torch.Tensor, A: torch.Tensor, T: int) -> torch.Tensor:
    levels = 2.0 ** T - 1
    return torch.floor(x.double().clamp(min=0) * levels / A + 0.5) * A / levels


def rectified(target: str, T: int, A: float, mode: str = "fast") -> RectifiedActivation:
    return RectifiedActivation(SpikingReLU(T, mode, A=A, per_channel=True),
                               SpikingActivation(load_fitted(RECTIFIED[target], "mbe", 8, T), mode))


@pytest.mark.parametrize("target", sorted(RECTIFIED))
def test_residual_targets_are_the_function_less_relu_and_flat_beyond_their_domain(target):
    residual = TARGETS[RECTIFIED[target]]
    x = torch.linspace(-40, 40, 4001, dtype=torch.float64)
    assert torch.allclose(residual.fn(x), TARGETS[target].fn(x) - F.relu(x), atol=1e-12)
    lo, hi = residual.domain
    beyond = (x <= lo) | (x >= hi)
    assert float(residual.fn(x[beyond]).abs().max()) < 2e-6


@pytest.mark.parametrize("target", sorted(RECTIFIED))
def test_rectified_activation_at_T8_beats_the_whole_function_fit(target):
    """On [-8, 8] at T=8 (rectifier range 8): the output is the plain-PyTorch rounding of relu plus
    the residual neuron; the residual's fit error is below the whole-function fit's at T=16 (and a
    tenth of its error at T=8), and the output's, rounding included, a quarter of the whole fit's or less."""
    T, A = 8, 8.0
    x = torch.linspace(-8, 8, 2001)
    op = rectified(target, T, A)
    whole = SpikingActivation(load_fitted(target, "mbe", 8, T))
    with torch.no_grad():
        out, residual, reference = op(x).double(), op.residual(x).double(), TARGETS[target].fn(x.double())
        whole_error = float((whole(x).double() - reference).square().mean())
        at_16 = float((SpikingActivation(load_fitted(target, "mbe", 8, 16))(x).double() - reference).square().mean())
    off = (out - residual - rounded_relu(x, torch.tensor(A, dtype=torch.float64), T)).abs()
    # float32 may round a near-tie (e.g. x = 7.2: 229.5 steps) the other way: one step, rarely
    assert float(off.max()) <= A / (2 ** T - 1) + 1e-5 and float((off > 1e-5).float().mean()) < 0.01
    residual_error = float((residual - TARGETS[RECTIFIED[target]].fn(x.double())).square().mean())
    assert residual_error < at_16 and residual_error < whole_error / 10  # the fit: T=16's quality at T=8
    assert float((out - reference).square().mean()) < whole_error / 4  # with the rectifier's rounding noise


def test_rectified_activation_fast_equals_step_by_step_and_elements_beyond_the_range_shift():
    T, A = 8, 2.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 16, generator=g) * 2
    x[2, 3] = 7.0 * A  # an element 7x beyond the rectifier's range: coded at 2^3 A, no clamp
    results = {}
    for mode in ("fast", "simulate"):
        op = rectified("gelu", T, A, mode)
        with torch.no_grad():
            results[mode] = (op(x), op.rectifier.op_stats(), op.residual.op_stats())
    (fast, *fast_stats), (simulated, *simulated_stats) = results["fast"], results["simulate"]
    assert torch.allclose(fast, simulated, atol=1e-5) and fast_stats == simulated_stats
    assert fast_stats[0].clamped == 0 and fast_stats[1].clamped == 0
    shift = torch.exp2(torch.ceil(torch.log2(x.clamp(min=0) / A)).clamp(min=0)).double()
    assert float(shift[2, 3]) == 8.0
    op = rectified("gelu", T, A)
    with torch.no_grad():
        linear = op(x).double() - op.residual(x.clamp(-8, 8)).double()
    off = (linear - rounded_relu(x, A * shift, T)).abs()
    assert float(off.max()) <= 8 * A / (2 ** T - 1) + 1e-5 and int((off > 1e-5).sum()) <= 2  # near-ties only
    assert fast_stats[0].ann_flops == 0 and fast_stats[1].ann_flops == flops.ACTIVATION * x.numel()


def test_calibrated_rectifier_codes_each_channel_at_its_own_range():
    """Channels 1e-3 to 1e2 apart: calibration gives channel ``k`` the range ``A min(1, 4 peak_k / A)``
    (plain-PyTorch peaks); every output is the rounding of ``relu(x)`` at ``2^e A_k`` with ``2^e`` the
    smallest power of two (at least 1) that holds it, so no input is clamped, and the coarse-channel
    error of one range for all is gone."""
    T = 8
    g = torch.Generator().manual_seed(4)
    scales = torch.logspace(-3, 2, 32)
    calibration = [torch.randn(16, 32, generator=g) * scales for _ in range(3)]
    x = torch.randn(64, 32, generator=g) * scales * 1.5  # beyond calibration, by up to 2^k
    results = {}
    for mode in ("fast", "simulate"):
        op = SpikingReLU(T, mode, per_channel=True)
        for batch in calibration:
            op(batch)
        op.finish_calibration()
        results[mode] = (op(x), op.op_stats())
    peaks = torch.stack([b.clamp(min=0) for b in calibration]).amax((0, 1)).double()
    A = float(peaks.max())
    ranges = A * (2 * peaks / A).clamp(2.0 ** -8, 1.0)
    assert torch.allclose(op.channel_ranges.double(), ranges, rtol=1e-6) and op.ranges == (pytest.approx(A),)
    (fast, stats), (simulated, simulated_stats) = results["fast"], results["simulate"]
    assert torch.equal(fast, simulated) and stats == simulated_stats and stats.clamped == 0
    shift = torch.exp2(torch.ceil(torch.log2(x.double().clamp(min=0) / ranges)).clamp(min=0))
    assert int((shift > 1).sum()) > 0  # some inputs lie beyond their channel's calibrated range
    off = (fast.double() - rounded_relu(x, ranges * shift, T)).abs() / (ranges * shift / (2 ** T - 1))
    assert float(off.max()) <= 1.0 + 1e-4 and float((off > 1e-3).float().mean()) < 0.01  # float32 near-ties
    one_range = (rounded_relu(x, torch.tensor(A, dtype=torch.float64), T) - F.relu(x.double())).abs()
    small = scales < A / 300  # channels below one step of the shared range
    assert float(one_range[:, small].max()) > 10 * float((fast.double() - F.relu(x.double()))[:, small].abs().max())


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_residual_saturates_beyond_its_domain_and_counts_no_clamp(mode):
    """The residual of a rectified activation takes its domain edge's value beyond the domain (what
    a plain activation gives for the clamped input), on the kernel and the PyTorch path alike, and
    counts no clamp; a plain activation counts each such input."""
    op = rectified("gelu", 8, 2.0, mode)
    lo, hi = op.residual.fitted.domain
    x = torch.cat([torch.tensor([lo - 50.0, lo - 0.5, lo, 0.0, hi, hi + 0.5, hi + 50.0]),
                   torch.randn(40, generator=torch.Generator().manual_seed(2)) * 8])
    outside = int(((x < lo) | (x > hi)).sum())
    plain = SpikingActivation(op.residual.fitted, mode)
    with torch.no_grad():
        expected = plain(x.clamp(lo, hi))
        assert plain.op_stats().clamped == 0
        plain(x)
        assert plain.op_stats().clamped == outside > 0
        with kernels.disabled():
            eager = op.residual(x)
        assert op.residual.op_stats().clamped == 0
        assert torch.equal(op.residual(x), expected) and torch.equal(eager, expected)
    assert op.residual.op_stats().clamped == 0


def test_rectified_activation_gradient_is_the_functions():
    op = rectified("silu", 8, 8.0)
    x = torch.linspace(-10, 10, 101, requires_grad=True)
    op(x).sum().backward()
    reference = torch.linspace(-10, 10, 101, requires_grad=True)
    F.silu(reference).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)


def test_conversion_rectifies_gelu_by_default_and_charges_the_activation_once():
    ann = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 8, generator=g) for _ in range(2)]
    x = torch.randn(64, 8, generator=g)
    errors = {}
    for rectified_activations in (True, False):
        snn = convert(ann, T=8, calib_data=calib, rectified_activations=rectified_activations)
        assert isinstance(snn[1], RectifiedActivation if rectified_activations else SpikingActivation)
        with torch.no_grad(), EnergyMeter(snn, 8) as meter:
            out, expected = snn(x), ann(x)
        activation = [s for p, s in meter.counts.items() if p.startswith("1")]
        assert sum(s.ann_flops for s in activation) == flops.ACTIVATION * 64 * 32
        errors[rectified_activations] = float((out - expected).square().mean())
    assert errors[True] < errors[False]
