"""Spiking products and matrix products (Eqs. 9-12): accuracy, fast == simulate, SOPs, calibration."""
import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional

from spikingjelly_mbe.fitting import load_fitted
from spikingjelly_mbe.ops import (IdentityCoder, OpStats, SpikingMatmul, SpikingProduct, collect_stats,
                                  identity_node)

torch.set_num_threads(1)
SETTINGS = settings(max_examples=15, deadline=None)


def both_modes(op, *inputs):
    op.mode = "fast"
    functional.reset_net(op)
    fast, fast_stats = op(*inputs), op.op_stats()
    op.mode = "simulate"
    functional.reset_net(op)
    return fast, fast_stats, op(*inputs), op.op_stats()


def test_identity_neuron_rounds_to_its_grid_and_fires_the_binary_digits():
    T, A = 8, 3.0
    coder = IdentityCoder(T, A, code="binary")
    x = torch.tensor([0.0, 1e-4, 0.71, -0.71, 2.999, -3.0], dtype=torch.float64)  # no ties
    code, clamped = coder.encode(x, simulate=True)
    step = A / (2 ** T - 1)
    expected = torch.sign(x) * torch.floor(x.abs() / step + 0.5) * step
    torch.testing.assert_close(code.value, expected, rtol=1e-7, atol=0)  # float32 parameters
    assert clamped == 0 and code.counts[0] == 0 and code.counts[1] == 0  # zero (and below half a step) is silent
    digits = code.spikes.abs() @ (2.0 ** torch.arange(T - 1, -1, -1, dtype=torch.float64))
    torch.testing.assert_close(digits * step, code.value.abs())
    torch.testing.assert_close((code.spikes @ code.weights), code.value)
    fast, _ = coder.encode(x, simulate=False)
    torch.testing.assert_close(fast.value, code.value, rtol=0, atol=0)
    torch.testing.assert_close(fast.counts, code.counts, rtol=0, atol=0)


@pytest.mark.parametrize("T", [8, 10, 12, 16])
def test_identity_neuron_is_the_library_identity_fit_up_to_a_step(T):
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    fitted = load_fitted("identity", "mbe", N=1, T=T)
    ours = identity_node(T, 1.0).to(torch.float64)(x)
    step = 1.0 / (2 ** T - 1)
    assert float((fitted.node().to(torch.float64)(x) - ours).abs().max()) <= 1.5 * step
    assert float((ours - x).abs().max()) <= step / 2 + 1e-7 <= fitted.errors["max_abs"] + 1e-7  # float32 parameters


@pytest.mark.parametrize("T", [8, 16])
def test_product_error_is_below_the_quantisation_bound(T):
    g = torch.Generator().manual_seed(0)
    A1, A2 = 2.5, 0.75
    a = (torch.rand(4000, generator=g) * 2 - 1) * A1
    b = (torch.rand(4000, generator=g) * 2 - 1) * A2
    out = SpikingProduct(T=T, ranges=(A1, A2))(a, b)
    bound = (A1 * A2) * (1.0 / (2 ** T - 1)) * 1.01  # |a db| + |b da| + |da db| with |da| <= A / (2 (2^T - 1))
    assert float((out - a * b).abs().max()) <= bound
    if T == 16:
        assert float((out - a * b).abs().max()) / (A1 * A2) <= 1e-3


def test_matmul_matches_float_and_counts_coincidences_by_brute_force():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 5, generator=g), torch.randn(5, 4, generator=g)
    op = SpikingMatmul(T=6, mode="simulate", ranges=(3.0, 3.0))
    out = op(a, b)
    codes = [coder.encode(x, simulate=True)[0] for coder, x in zip(op.coders, (a, b))]
    expected = torch.einsum("bmki,ij,knj->bmn", codes[0].spikes, torch.outer(codes[0].weights, codes[1].weights),
                            codes[1].spikes)
    torch.testing.assert_close(out, expected)
    pairs = (codes[0].spikes.abs()[:, :, :, None, :, None] * codes[1].spikes.abs()[None, None, :, :, None, :]).sum()
    assert op.op_stats().sops == int(pairs)
    assert float((out - a @ b).abs().max()) <= 5 * 9 * 2.0 ** -6


@pytest.mark.parametrize("code, T", [("signed", 3), ("signed", 4), ("signed", 6), ("ternary", 3), ("ternary", 4)])
def test_probabilities_at_element_exponents_keep_T_significant_digits(T, code):
    """Attention probabilities (rows of 197, logits of SD 2) coded at their own exponents: each within
    half a step of its exponent's grid, ``2^e / (2 L)`` (e the exponent of p, at least ``-span``, ``span +
    equivalent digits = 10``), so every row sums to 1 within the sum of those steps; on the grid of 1 the small
    ones round to 0 (``L = levels``)."""
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(8, 197, generator=g) * 2, -1)
    eye = torch.eye(197)  # 0 and 1 = A are exact in every code: the product returns the coded p
    spanned = SpikingMatmul(T=T, ranges=(1.0, 1.0), code=code, element_exponents=(True, False))
    coded = spanned(p, eye)
    levels, span = spanned.coders[0].levels, spanned.coders[0].element_span
    assert span == round(10 - math.log2(levels + 1)) and spanned.coders[1].element_span is None
    exponent = torch.frexp(p)[1].clamp(min=-span, max=0).double()
    half_step = torch.exp2(exponent) / (2 * levels)
    assert bool(((coded.double() - p.double()).abs() <= half_step * (1 + 1e-6)).all())
    assert float((coded.double().sum(-1) - 1).abs().max()) <= float(half_step.sum(-1).max())
    plain = SpikingMatmul(T=T, ranges=(1.0, 1.0), code=code)(p, eye)
    assert float((plain.sum(-1) - 1).abs().mean()) > 3 * float((coded.sum(-1) - 1).abs().mean())


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2)


@SETTINGS
@given(batch=shapes, m=st.integers(1, 5), k=st.integers(1, 6), n=st.integers(1, 5), T=st.sampled_from([4, 8, 16]),
       ranges=st.tuples(st.floats(0.01, 50), st.floats(0.01, 50)), seed=st.integers(0, 2 ** 16),
       broadcast=st.booleans(), exponents=st.sampled_from([(False, False), (True, False), (True, True)]))
def test_matmul_fast_equals_simulate(batch, m, k, n, T, ranges, seed, broadcast, exponents):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, m, k, generator=g) * ranges[0]  # some entries beyond the range: clamped
    b = torch.randn(*([] if broadcast else batch), k, n, generator=g) * ranges[1]
    fast, fast_stats, sim, sim_stats = both_modes(SpikingMatmul(T=T, ranges=ranges, element_exponents=exponents), a, b)
    torch.testing.assert_close(fast, sim, rtol=1e-5, atol=1e-5 * ranges[0] * ranges[1] * k)
    assert fast_stats == sim_stats


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), T=st.sampled_from([4, 8, 16]),
       ranges=st.tuples(st.floats(0.01, 50), st.floats(0.01, 50)), seed=st.integers(0, 2 ** 16),
       keep=st.lists(st.booleans(), min_size=3, max_size=3), double=st.booleans(),
       exponents=st.sampled_from([(False, False), (False, True), (True, True)]))
def test_product_fast_equals_simulate(shape, T, ranges, seed, keep, double, exponents):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    a = torch.randn(*shape, generator=g, dtype=dtype) * ranges[0]
    b_shape = [s if kept else 1 for s, kept in zip(shape, keep)]
    b = torch.randn(*b_shape, generator=g, dtype=dtype) * ranges[1]
    fast, fast_stats, sim, sim_stats = both_modes(SpikingProduct(T=T, ranges=ranges, element_exponents=exponents), a, b)
    assert fast.dtype == dtype and fast.shape == torch.broadcast_shapes(a.shape, b.shape)
    torch.testing.assert_close(fast, sim, rtol=1e-5, atol=1e-6 * ranges[0] * ranges[1])
    assert fast_stats == sim_stats


@pytest.mark.parametrize("a_shape, b_shape", [((2, 0), (0, 4)), ((2, 2, 0), (0, 0)), ((0, 3), (3, 4)), ((2, 3), (3, 0))])
@pytest.mark.parametrize("exponents", [(False, False), (True, True)])
def test_matmul_of_empty_operands_is_torch_matmul_in_both_modes(a_shape, b_shape, exponents):
    """An empty inner dimension gives zeros (torch.matmul's), an empty outer one an empty product, and no
    coincidence, in both modes (simulate mode's spike product took no K = 0)."""
    a, b = torch.rand(a_shape), torch.rand(b_shape)
    fast, fast_stats, sim, sim_stats = both_modes(SpikingMatmul(T=6, ranges=(1.0, 1.0), element_exponents=exponents), a, b)
    assert torch.equal(fast, a @ b) and torch.equal(sim, a @ b)
    assert fast_stats == sim_stats and fast_stats.sops == 0


def test_calibration_records_max_or_percentile_then_spikes():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g) * 3) for _ in range(3)]
    op = SpikingProduct(T=16)
    assert op.calibrating and op.ranges is None
    for a, b in batches:
        torch.testing.assert_close(op(a, b), a * b, rtol=0, atol=0)  # calibration forwards are the float op
    assert op.op_stats() == OpStats()
    pct = SpikingProduct(T=16)
    for a, b in batches:
        pct(a, b)
    ranges = op.finish_calibration()
    assert not op.calibrating
    assert ranges == pytest.approx((max(float(a.abs().max()) for a, _ in batches),
                                    max(float(b.abs().max()) for _, b in batches)))
    assert all(p < r for p, r in zip(pct.finish_calibration(percentile=90.0), ranges))
    a, b = batches[0]
    assert float((op(a, b) - a * b).abs().max()) <= 1e-3 * ranges[0] * ranges[1]


def test_uncalibrated_forward_is_a_clear_error():
    op = SpikingMatmul(T=8)
    op.calibrating = False
    with pytest.raises(RuntimeError, match="no operand ranges"):
        op(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="before any calibration"):
        SpikingMatmul(T=8).finish_calibration()
    op.set_ranges((1.0, 2.0))
    assert op.ranges == (1.0, 2.0) and not op.calibrating
    with pytest.raises(ValueError, match="positive"):
        op.set_ranges((1.0, -2.0))


def test_bad_inputs_and_shapes_are_errors_naming_the_problem():
    op = SpikingMatmul(T=8, ranges=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"b must be \[\.\.\., K=3, N\]"):
        op(torch.ones(2, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="NaN/Inf"):
        op(torch.tensor([[float("nan")]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="NaN/Inf"):
        SpikingProduct(T=8, ranges=(1.0, 1.0))(torch.ones(3), torch.tensor([1.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="not broadcastable"):
        SpikingProduct(T=8, ranges=(1.0, 1.0))(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="floating point"):
        SpikingProduct(T=8, ranges=(1.0, 1.0))(torch.ones(3, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match="mode"):
        SpikingProduct(mode="exact")


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_out_of_range_operands_shift_by_a_power_of_two_instead_of_clamping(mode, caplog):
    """Operands beyond their ranges are coded at ``2^e A`` (``e`` the smallest that holds them): 3 at
    4A, -2 at exactly 2A; nothing is clamped or warned, and the products keep T=16's precision."""
    for op, a, b, reference in (
            (SpikingProduct(T=16, ranges=(1.0, 1.0), mode=mode), torch.tensor([0.5, 3.0, -2.0, 0.25]),
             torch.tensor([1.5, 1.0, 0.5, 0.5]), torch.tensor([0.75, 3.0, -1.0, 0.125])),
            (SpikingMatmul(T=16, ranges=(1.0, 1.0), mode=mode), torch.tensor([[0.5, 3.0], [-2.0, 0.25]]),
             torch.tensor([[1.5, 1.0], [0.5, 0.5]]), torch.tensor([[2.25, 2.0], [-2.875, -1.875]]))):
        with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.ops"):
            out = op(a, b)
        assert op.op_stats().clamped == 0 and not caplog.records
        torch.testing.assert_close(out, reference, atol=2e-4, rtol=0)
        # every element fires the digits of its shifted value (3/4, -2/2): the unit code's spikes
        unit = IdentityCoder(16, 1.0)
        shifted = [x / torch.exp2(torch.ceil(torch.log2(x.abs())).clamp(min=0)) for x in (a, b)]
        assert op.op_stats().spikes == sum(int(unit.encode(x, False)[0].counts.sum()) for x in shifted)


def test_stats_reset_step_mode_and_collection():
    model = torch.nn.ModuleDict({"scores": SpikingMatmul(T=8, ranges=(2.0, 2.0)),
                                 "gate": SpikingProduct(T=8, ranges=(2.0, 2.0))})
    functional.set_step_mode(model, "m")  # tolerated: the T steps are internal
    a = torch.randn(3, 4, 5)
    model["scores"](a, a.transpose(-1, -2))
    model["gate"](a, a)
    stats = collect_stats(model)
    assert set(stats) == {"scores", "gate"}
    assert stats["scores"].ann_flops == 3 * 4 * 5 * 4 and stats["gate"].ann_flops == a.numel()
    assert stats["scores"].neurons == 2 * a.numel() and stats["scores"].spikes > 0
    total = sum(stats.values())
    assert total.spikes == stats["scores"].spikes + stats["gate"].spikes
    assert 0 < total.firing_rate <= 8
    functional.reset_net(model)
    assert all(s == OpStats() for s in collect_stats(model).values())
