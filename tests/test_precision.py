"""Per-layer precision under an error budget, and weight layers driven by MBE_Id-coded input spikes:
the budget's rounding noise against a plain-PyTorch uniform quantiser, fast == step by step for the
spike-driven weight layers, their outputs against the float layer on the rounded input, their
synaptic events against spikes x fan-out, and the budget's spikes against full precision."""
import contextlib
import math

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.conversion.zoo import agreement, build, main_output, make_batch
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.energy.report import E_AC, E_MAC
from spikingjelly_mbe.ops import PiecewiseLinear, SpikingMatmul, SpikingProduct, SpikingWeightInput
from spikingjelly_mbe.ops.coding import CODES
from spikingjelly_mbe.mbe import OpSettings
from spikingjelly_mbe.ops.precision import AUTO, budget_step, check_budget, covering_range, resolve_budget

BASE_2_CODES = [name for name, c in CODES.items() if c.base == 2]  # ternary: test_ternary_code.py

torch.set_num_threads(1)


def rounded(x: torch.Tensor, A, T: int) -> torch.Tensor:
    """Sign-magnitude rounding of ``x`` to the nearest of ``2^T`` levels of ``[0, A]`` (clamped; ``A`` a
    number or a tensor broadcasting against ``x``), in float64."""
    levels = 2.0 ** T - 1
    A = torch.as_tensor(A, dtype=torch.float64)
    q = torch.floor(torch.minimum(x.double().abs(), A) * levels / A + 0.5)
    return torch.sign(x.double()) * q * A / levels


def rounded_shifted(x: torch.Tensor, A, T: int) -> torch.Tensor:
    """:func:`rounded` at ``2^e A``, ``e >= 0`` the smallest exponent with ``|x| <= 2^e A`` (no clamp)."""
    A = torch.as_tensor(A, dtype=torch.float64)
    e = torch.ceil(torch.log2(x.double().abs() / A)).clamp(min=0)
    return rounded(x, A * 2 ** e, T)


def heavy_tailed(shape, seed: int) -> torch.Tensor:
    """Student-t-like operands: most values small, a few far out (the shape of Transformer activations)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) / (torch.rand(shape, generator=g) + 0.05).sqrt()


def test_budget_step_and_covering_range_closed_forms():
    assert budget_step(2.0, 2 ** -10) == pytest.approx(math.sqrt(12) * 2.0 / 1024)
    assert covering_range(3.0, None, 2 ** 16 - 1) == 3.0
    assert covering_range(3.0, 1e-3, 2 ** 16 - 1) == pytest.approx(65.535)
    assert covering_range(3.0, 1e-3, 2 ** 8 - 1) == 3.0  # 8 digits cannot reach the step over [0, 3]: full precision
    for bad in (0, 1.0, -0.1, True, "0.01", float("nan")):
        with pytest.raises(ValueError, match="budget must be None"):
            check_budget(bad)
    with pytest.raises(ValueError, match="budget must be None"):
        SpikingProduct(budget=2.0)
    with pytest.raises(ValueError, match="'auto'"):
        OpSettings(budget="Auto").validate()


@pytest.mark.parametrize("T", [2, 8, 12, 16, 32])
def test_the_auto_budget_resolves_per_code_and_T(T):
    """``'auto'``: a weight layer's input ``2^-(3.5 + 5T/16)``, a product's operands ``2^-9``; explicit
    budgets pass through unchanged, whatever the code."""
    assert resolve_budget(AUTO, T, "weight_input") == 2.0 ** -(3.5 + 5 * T / 16)
    assert resolve_budget(AUTO, T, "operand") == 2.0 ** -9
    assert SpikingWeightInput(nn.Linear(3, 2), T=T).budget == 2.0 ** -(3.5 + 5 * T / 16)
    assert SpikingProduct(T=T).budget == SpikingMatmul(T=T).budget == 2.0 ** -9
    assert SpikingWeightInput(nn.Linear(3, 2), T=T, budget=2 ** -7).budget == SpikingProduct(T=T, budget=2 ** -7).budget
    assert resolve_budget(None, T, "weight_input") is None and OpSettings(T=T).budget == AUTO


def test_the_auto_budget_passes_through_its_two_measured_settings():
    """The schedule was measured at T=8 (2^-6) and T=16 (2^-8.5) on the real models."""
    assert resolve_budget(AUTO, 8, "weight_input") == 2.0 ** -6
    assert resolve_budget(AUTO, 16, "weight_input") == 2.0 ** -8.5


def test_the_weight_input_budget_reads_the_typical_channel_not_the_outliers():
    """Two outlier channels 100x the others set the whole input's RMS; the budget's step follows the
    median channel's RMS (plain PyTorch), so the quiet channels keep their precision."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 32, generator=g)
    x[:, :2] *= 100.0
    op = SpikingWeightInput(nn.Linear(32, 4), T=16, budget=2 ** -8, centered=False)
    op(x)
    op.finish_calibration()
    typical = float(x.double().square().mean(0).sqrt().median())
    assert op.step == pytest.approx(math.sqrt(12) * 2 ** -8 * typical, rel=1e-9)
    assert op.step < 0.1 * math.sqrt(12) * 2 ** -8 * float(x.double().square().mean().sqrt())


@pytest.mark.parametrize("budget", [2 ** -6, 2 ** -10])
def test_a_calibrated_operand_rounds_with_the_budgets_noise(budget):
    """A uniform quantiser of step ``delta`` adds noise of RMS ``delta / sqrt(12)``: the budget's step
    gives ``budget`` of the operand's RMS, measured on fresh data against the float operand."""
    T = 16
    op = SpikingMatmul(T=T, budget=budget)  # one range per operand
    for seed in range(3):
        a = heavy_tailed((64, 256), seed)
        op(a, torch.ones(256, 1))
    op.finish_calibration()
    a = heavy_tailed((64, 256), 7)
    A = op.ranges[0]
    error = op.coders[0].encode(a, False)[0].value.double() - a.double()
    relative = float(error.square().mean().sqrt() / a.double().square().mean().sqrt())
    assert relative == pytest.approx(budget, rel=0.15)
    assert torch.allclose(op.coders[0].encode(a, False)[0].value.double(), rounded(a, A, T), atol=1e-6 * A)


def test_the_budget_saves_spikes_over_full_precision_and_keeps_the_product():
    T = 16
    a, b = heavy_tailed((8, 32, 48), 1), heavy_tailed((8, 48, 40), 2)
    results = {}
    for budget in (None, 2 ** -10):
        op = SpikingMatmul(T=T, budget=budget)
        op(a, b)
        observed = op.finish_calibration()
        assert observed == pytest.approx((float(a.abs().max()), float(b.abs().max())))
        op.reset()
        out = op(a, b)
        reference = rounded(a, op.ranges[0], T) @ rounded(b, op.ranges[1], T)
        # float32 rounding may flip one digit of a near-tie: at most one step of each operand times the other
        one_digit = (op.ranges[0] * float(b.abs().max()) + op.ranges[1] * float(a.abs().max())) / (2 ** T - 1)
        assert torch.allclose(out.double(), reference, rtol=1e-5, atol=one_digit)
        results[budget] = (out, op.op_stats())
    full, budgeted = results[None][1], results[2 ** -10][1]
    assert budgeted.spikes < 0.75 * full.spikes and budgeted.sops < 0.6 * full.sops
    exact = a.double() @ b.double()
    error = float((results[2 ** -10][0].double() - exact).square().mean().sqrt() / exact.square().mean().sqrt())
    assert error < 2 * math.sqrt(2) * 2 ** -10  # two operands' noise, each the budget's


def layers():
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(24, 16)
    conv1d = Conv1D(16, 24)  # GPT-2's: weight [in, out]
    conv1d.weight.data = torch.randn(24, 16, generator=g) * 0.2
    conv2d = nn.Conv2d(3, 8, 4, stride=4)
    return {"linear": (linear, (5, 7, 24)), "conv1d": (conv1d, (5, 7, 24)), "conv2d": (conv2d, (2, 3, 16, 16))}


def channel_view(x: torch.Tensor, channel: int, values: torch.Tensor) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[channel] = -1
    return values.view(shape)


def per_channel(x: torch.Tensor, channel: int) -> torch.Tensor:
    """``x`` as rows ``[elements / channels, channels]``, in float64."""
    return x.double().movedim(channel % x.dim(), -1).reshape(-1, x.shape[channel])


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("code", BASE_2_CODES)
def test_weight_input_fast_equals_step_by_step_and_the_float_layer_on_the_rounded_input(name, code, centered):
    layer, shape = layers()[name]
    x = heavy_tailed(shape, 3) + 0.7  # every channel off zero: the centers carry it
    T = 8
    op = SpikingWeightInput(layer, T=T, code=code, centered=centered)
    op(x)
    op.finish_calibration()
    channel = 1 if name == "conv2d" else -1
    rows = per_channel(x, channel)
    # each channel's center: its median; its range: twice its own max |x - c|, at most the layer's,
    # at least T digits of the 'auto' budget's step 2^-6 sqrt(12) (median channel RMS of x - c)
    c = rows.median(0).values if centered else torch.zeros(rows.shape[1], dtype=torch.float64)
    peaks = (rows - c).abs().amax(0)
    typical = float((rows - c).square().mean(0).sqrt().median())
    floor = math.sqrt(12) * 2.0 ** -6 * typical * (2 ** T - 1)
    A = channel_view(x, channel, (2 * peaks).clamp(max=float(peaks.max())).clamp(min=floor))
    assert floor > float((2 * peaks).clamp(max=float(peaks.max())).min())  # the floor binds on some channel
    c = channel_view(x, channel, c)
    assert torch.allclose(op.channel_ranges.double().view(A.shape), A, rtol=1e-6)
    assert (op.channel_centers is not None) == centered
    with torch.no_grad():
        reference = layer((c + rounded(x.double() - c, A, T)).float())
        op.mode = "simulate"
        op.reset()
        simulated, simulated_stats = op(x), op.op_stats()
        op.mode = "fast"
        op.reset()
        fast, fast_stats = op(x), op.op_stats()
    assert torch.allclose(fast, reference, atol=2e-5) and torch.allclose(simulated, fast, atol=2e-5)
    assert simulated_stats == fast_stats and fast_stats.clamped == 0
    q = torch.floor((x.double() - c).abs() * (2 ** T - 1) / A + 0.5)
    spikes = int(CODES[code].count(q, T).sum())
    macs = fast.numel() * layer.weight.numel() // (getattr(layer, "out_channels", None) or fast.shape[-1])
    assert fast_stats.spikes == spikes and fast_stats.neurons == x.numel()
    assert fast_stats.sops == spikes * (macs // x.numel()) and fast_stats.ann_flops == macs


def test_centered_weight_input_carries_channel_offsets_in_the_bias():
    """Channels that sit at an offset (a LayerNorm's beta) with a heavy-tailed spread: the centered
    code fires fewer spikes than the uncentered one at a quarter of its error or less (the float layer
    is the reference), at T=8 and under the budget at T=16; a row at exactly the centers fires
    nothing and gives ``layer(c)``; a padded convolution is never centered (its border sees zeros)."""
    g = torch.Generator().manual_seed(5)
    layer = nn.Linear(32, 8)
    beta = torch.randn(32, generator=g) * 3
    x = beta + 0.1 * heavy_tailed((64, 32), 7)
    with torch.no_grad():
        exact = layer(x).double()
    for T in (8, 16):
        results = {}
        for centered in (True, False):
            op = SpikingWeightInput(layer, T=T, centered=centered)
            op(x)
            op.finish_calibration()
            with torch.no_grad():
                error = float((op(x).double() - exact).square().mean().sqrt())
            results[centered] = (op.op_stats().spikes, error)
        assert results[True][0] < results[False][0] and results[True][1] < results[False][1] / 4
    op = SpikingWeightInput(layer, T=8)
    op(x)
    op.finish_calibration()
    at_centers = op.channel_centers.expand(3, 32)
    with torch.no_grad():
        assert torch.equal(op(at_centers), layer(at_centers)) and op.op_stats().spikes == 0
    padded = SpikingWeightInput(nn.Conv2d(3, 4, 3, padding=1))
    padded(torch.randn(2, 3, 8, 8, generator=g) + 5)
    padded.finish_calibration()
    assert padded.channel_centers is None


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_weight_input_beyond_its_ranges_scales_by_a_power_of_two_instead_of_clamping(mode):
    """A Linear input e.g. 100x what calibration saw is coded at ``2^e`` times its channel's range
    (``e`` the smallest exponent that holds it): no clamp, and the output is the float layer on that
    rounding (plain PyTorch); every other input is coded as before."""
    layer, shape = layers()["linear"]
    x = heavy_tailed(shape, 6)
    T = 8
    op = SpikingWeightInput(layer, T=T, mode=mode)
    op(x)
    op.finish_calibration()
    c = op.channel_centers.double()
    A = op.channel_ranges.double()
    big = x.clone()
    big[0, 0, 3] = c[3] + 100.0 * A[3]
    big[1, 2, 5] = c[5] + 3.5 * A[5]  # needs exactly e = 2
    with torch.no_grad():
        out = op(big)
    fit = ((big - op.channel_centers).abs() / op.channel_ranges).double()  # as the op, in float32
    e = torch.ceil(torch.log2(fit)).clamp(min=0)
    assert float(e[1, 2, 5]) == 2 and float(e[0, 0, 3]) == 7 and int((e > 0).sum()) == 2
    reference = layer((c + rounded(big.double() - c, A * 2 ** e, T)).float())
    assert op.op_stats().clamped == 0
    assert torch.allclose(out, reference, atol=2e-5)


def test_centered_weight_input_of_a_non_negative_input_keeps_the_sign_of_x_minus_c():
    """A ReLU's output (x >= 0) centered at its channel medians is signed: step by step, the eager
    fast path and the kernel all code ``x - c`` with its sign, and agree with plain-PyTorch rounding."""
    layer, shape = layers()["linear"]
    x = heavy_tailed(shape, 8).clamp(min=0) + 0.5
    outs = {}
    for mode, fused in (("fast", True), ("fast", False), ("simulate", False)):
        op = SpikingWeightInput(layer, T=8, mode=mode)
        op(x)
        op.finish_calibration()
        big = x.clone()
        big[0, 0, 2] = float(op.channel_centers[2] + 5 * op.channel_ranges[2])  # beyond its range: shifted
        with torch.no_grad(), (contextlib.nullcontext() if fused else kernels.disabled()):
            outs[(mode, fused)] = op(big).double()
    c, A = op.channel_centers.double(), op.channel_ranges.double()
    assert float((big.double() - c).min()) < 0
    reference = layer((c + rounded_shifted(big.double() - c, A, 8)).float()).double()
    for out in outs.values():
        assert torch.allclose(out, reference, atol=2e-5)


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_ranges_calibrated_on_zeros_shift_as_far_as_float32_allows_then_clamp_and_count(mode, caplog):
    """A range that calibration saw only zeros for is 2^-126: a later input of 3 or 5 is over 2^127
    times beyond it, more than any float32 power of two. The code shifts as far as it can (2^127 of
    the range: 2), clamps the rest and counts it, with a finite output (no NaN, no endless re-coding),
    while 0.5 and 1 (2^125, 2^126 times beyond) are still coded exactly; fast == step by step."""
    linear = nn.Linear(4, 2)
    op = SpikingWeightInput(linear, T=8, mode=mode)
    op(torch.zeros(3, 4))
    op.finish_calibration()
    relu6 = PiecewiseLinear([(0.0, 1.0), (6.0, -1.0)], T=8, mode=mode)
    relu6(torch.linspace(-3, 5, 50))
    for rectifier in relu6.rectifiers:
        rectifier.finish_calibration()
    product = SpikingProduct(T=8, ranges=(2.0 ** -126, 1.0), mode=mode)
    with caplog.at_level("WARNING", logger="spikingjelly_mbe.ops"), torch.no_grad():
        out = op(torch.tensor([[0.5, 3.0, 0.0, 0.0]]))
        capped = relu6(torch.tensor([1.0, 6.5, 7.0, 8.5, 9.0, 12.0]))
        times = product(torch.tensor([5.0, 1.0]), torch.ones(2))
    assert torch.isfinite(out).all() and op.op_stats().clamped == 1
    cap = 2.0 ** 127 * 2.0 ** -126  # the largest shift of the smallest range: 2
    assert torch.allclose(out, linear(torch.tensor([[0.5, cap, 0.0, 0.0]])), atol=1e-2)
    # ReLU6's second knot never saw a positive input: 0.5, 1 shift exactly, 2.5, 3, 6 clamp to 2 (counted)
    assert torch.allclose(capped, torch.tensor([1.0, 6.0, 6.0, 6.5, 7.0, 10.0]), atol=0.05)
    assert [r.op_stats().clamped for r in relu6.rectifiers] == [0, 3]
    assert torch.allclose(times, torch.tensor([cap, 1.0]), atol=1e-2) and product.op_stats().clamped == 1
    assert "calibrated on zeros" in caplog.text and "fitted neuron" not in caplog.text  # no neuron domain here


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_weight_input_of_a_convolution_shifts_too_and_refuses_bad_input(mode):
    layer = nn.Conv2d(4, 3, 1)  # a per-element exponent is exact for any layer: each spike adds its column
    op = SpikingWeightInput(layer, T=8, A=1.0, mode=mode)
    x = torch.tensor([[0.5, -3.0, 2.0, 0.0]])[..., None, None]
    with torch.no_grad():
        out = op(x)
    assert op.op_stats().clamped == 0
    # 0.5 at 255 levels of [0, 1]; -3 at 2^2 A, 2 at 2^1 A (exactly 2^1: e = 1), 0 fires nothing
    expected = rounded(x.double(), torch.tensor([1.0, 4.0, 2.0, 1.0], dtype=torch.float64)[:, None, None], 8)
    assert torch.allclose(out, layer(expected.float()), atol=1e-5)
    with pytest.raises(ValueError, match="NaN/Inf"):
        op(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])[..., None, None])
    with pytest.raises(ValueError, match="NaN/Inf"):
        SpikingWeightInput(nn.Linear(4, 3), T=8, A=1.0)(torch.tensor([[float("inf"), 0.0, 0.0, 0.0]]))
    with pytest.raises(TypeError, match="wraps a weight layer"):
        SpikingWeightInput(nn.ReLU())
    with pytest.raises(ValueError, match="ranges must be one positive finite number"):
        SpikingWeightInput(layer, A=0.0)
    with pytest.raises(RuntimeError, match="before any calibration forward"):
        SpikingWeightInput(layer).finish_calibration()


def test_conversion_drives_every_weight_layer_by_spikes_and_the_budget_lowers_its_energy():
    ann = build("bert", layers=2, hidden=32, heads=4, seed=0)
    batch = make_batch("bert", 4, 12, seed=1)
    calib = [make_batch("bert", 4, 12, seed=s) for s in (2, 3)]
    ratios = {}
    for budget in (None, 2 ** -10):
        snn = convert(ann, T=16, calib_data=calib, budget=budget)
        weight_layers = [p for p, m in ann.named_modules() if isinstance(m, nn.Linear)]
        assert all(isinstance(snn.get_submodule(p), SpikingWeightInput) for p in weight_layers)
        assert all(snn.get_submodule(p).weight is not None for p in weight_layers)
        with torch.no_grad(), EnergyMeter(snn, 16) as meter:
            out = snn(**batch)
        assert agreement(main_output(ann(**batch)), main_output(out))["cosine"] > 0.999
        total = meter.total()
        assert meter.ratio() == pytest.approx(total.sops * E_AC / (total.ann_flops * E_MAC))
        coded = [c for p, c in meter.counts.items() if meter.kinds[p] == "SpikingWeightInput"]
        assert len(coded) == len(weight_layers) and all(c.sops > 0 for c in coded)
        ratios[budget] = meter.ratio()
    assert ratios[2 ** -10] < 0.75 * ratios[None]


def test_convert_centers_weight_inputs_by_default_and_center_inputs_false_codes_around_zero():
    ann = build("bert", layers=1, hidden=32, heads=4, seed=0)
    calib = [make_batch("bert", 4, 12, seed=s) for s in (2, 3)]
    for center_inputs in (True, False):
        kwargs = {} if center_inputs else {"center_inputs": False}
        snn = convert(ann, T=16, calib_data=calib, **kwargs)
        ops = [m for m in snn.modules() if isinstance(m, SpikingWeightInput)]
        assert ops and all((m.channel_centers is not None) == center_inputs for m in ops)
    with pytest.raises(ValueError, match="center_inputs must be True or False"):
        convert(ann, T=16, calib_data=calib, center_inputs="yes")


@pytest.mark.parametrize("code", BASE_2_CODES)
def test_product_codes_each_channel_in_its_own_range(code):
    """SpikingProduct: channel k of each operand coded in ``[0, min(2 max_k, max)]`` (Eq. 9 per
    neuron), against plain-PyTorch rounding per channel; fast == step by step; an outlier channel
    no longer coarsens the others (T=8, against the same product with one range per operand)."""
    T = 8
    g = torch.Generator().manual_seed(4)
    gain = torch.ones(64)
    gain[[3, 40]] = 100.0  # two outlier channels, as in LLM hidden states
    a, b = torch.randn(16, 64, generator=g) * gain, torch.randn(16, 64, generator=g)
    op = SpikingProduct(T=T, code=code, budget=None)
    op(a, b)
    op.finish_calibration()
    for x, ranges in ((a, op.channel_ranges_a), (b, op.channel_ranges_b)):
        peaks = x.abs().amax(0).double()
        assert torch.allclose(ranges.double(), (2 * peaks).clamp(max=float(peaks.max())), rtol=1e-6)
    with torch.no_grad():
        fast = op(a, b)
        op.mode = "simulate"
        simulated = op(a, b)
    reference = rounded(a, op.channel_ranges_a.double(), T) * rounded(b, op.channel_ranges_b.double(), T)
    assert torch.allclose(fast.double(), reference, rtol=1e-5, atol=1e-5)
    assert torch.allclose(simulated, fast, rtol=1e-5, atol=1e-5)
    per_tensor = rounded(a, float(a.abs().max()), T) * rounded(b, float(b.abs().max()), T)
    ordinary = torch.ones(64, dtype=torch.bool)
    ordinary[[3, 40]] = False
    exact = (a * b).double()[:, ordinary]
    error = lambda out: float((out[:, ordinary] - exact).square().mean().sqrt())  # noqa: E731
    assert error(fast.double()) < error(per_tensor) / 10


def test_weight_input_beyond_float32_digits_simulates_in_the_layers_dtype():
    """T=24 codes run in float64; the layer still sees its own dtype, step by step and fast alike."""
    layer, shape = layers()["linear"]
    x = heavy_tailed(shape, 5)
    op = SpikingWeightInput(layer, T=24, budget=None)
    op(x)
    op.finish_calibration()
    with torch.no_grad():
        fast = op(x)
        op.mode = "simulate"
        simulated = op(x)
        exact = layer(x)
    assert fast.dtype == simulated.dtype == torch.float32
    assert torch.allclose(simulated, fast, atol=1e-5) and torch.allclose(fast, exact, atol=1e-5)


def test_product_channels_that_change_between_batches_share_one_range():
    """A last dimension that is not a channel (its size changes between calibration batches, e.g. a
    sequence length) gets one range per operand; a scalar operand and an unseen size work too."""
    g = torch.Generator().manual_seed(6)
    op = SpikingProduct(T=8, budget=None)
    for n in (5, 7):
        op(torch.randn(3, n, generator=g), torch.randn(3, n, generator=g))
    observed = op.finish_calibration()
    assert op.channel_ranges_a.numel() == 1 and op.ranges == pytest.approx(observed)
    a, b = torch.randn(3, 9, generator=g), torch.randn(3, 9, generator=g)
    with torch.no_grad():
        out = op(a, b)
    reference = rounded_shifted(a, observed[0], 8) * rounded_shifted(b, observed[1], 8)
    assert torch.allclose(out.double(), reference, atol=1e-6)
    op = SpikingProduct(T=8, budget=None)
    op(torch.randn(4, 6, generator=g), torch.tensor(2.0))
    op.finish_calibration()
    with torch.no_grad():
        x = torch.randn(4, 6, generator=g)
        out = op(x, torch.tensor(1.5))
    reference = rounded_shifted(x, op.channel_ranges_a.double(), 8) * rounded(torch.tensor(1.5), 2.0, 8)
    assert torch.allclose(out.double(), reference, atol=1e-6) and op.op_stats().clamped == 0
