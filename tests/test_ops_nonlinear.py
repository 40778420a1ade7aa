"""Spiking activation, Softmax, LayerNorm and RMSNorm: accuracy against float PyTorch, fast == simulate,
exact zeros under masks, and errors on bad input."""
import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional

from spikingjelly_mbe.fitting import fit_neuron
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingRMSNorm, SpikingSoftmax, SplitFunction,
                                  collect_stats)

torch.set_num_threads(1)
SETTINGS = settings(max_examples=12, deadline=None)


@pytest.fixture(scope="module")
def gelu_fit():
    return fit_neuron("gelu", kind="mbe", N=4, T=12, budget=300)


@pytest.fixture(scope="module")
def softmax():
    return SpikingSoftmax(dim=-1, T=16)


def assert_modes_agree(op, x, atol):
    op.mode = "fast"
    functional.reset_net(op)
    fast, fast_stats = op(x), op.op_stats()
    op.mode = "simulate"
    functional.reset_net(op)
    sim = op(x)
    torch.testing.assert_close(fast, sim, rtol=1e-5, atol=atol)
    assert fast_stats == op.op_stats()
    return fast


def test_activation_is_its_fitted_neuron(gelu_fit):
    x = torch.linspace(-8, 8, 3001, dtype=torch.float64)
    y = SpikingActivation(gelu_fit)(x)
    torch.testing.assert_close(y, gelu_fit.node().to(torch.float64)(x), rtol=0, atol=1e-12)
    assert float((y - F.gelu(x)).abs().max()) <= gelu_fit.errors["max_abs"] * 1.05 + 1e-6


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), scale=st.floats(0.1, 30.0),
       seed=st.integers(0, 2 ** 16), double=st.booleans())
def test_activation_fast_equals_simulate(gelu_fit, shape, scale, seed, double):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64 if double else torch.float32) * scale
    assert_modes_agree(SpikingActivation(gelu_fit), x, atol=1e-5)


def test_activation_clamps_to_its_domain_and_warns_once(gelu_fit, caplog):
    act = SpikingActivation(gelu_fit)
    with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.ops"):
        y = act(torch.tensor([-40.0, 0.5, 40.0]))
    assert act.op_stats().clamped == 2 and len(caplog.records) == 1
    assert "2 inputs outside [-16, 16] to the fitted neuron's domain" in caplog.text
    torch.testing.assert_close(y[2], F.gelu(torch.tensor(16.0)), atol=5e-2, rtol=0)


def test_split_functions_are_accurate_and_modes_agree():
    for name, lo, hi, fn in [("exp2", 0.0, 1.0, torch.exp2), ("reciprocal", 1.0, 2.0, torch.reciprocal),
                             ("rsqrt", 1.0, 4.0, torch.rsqrt)]:
        split = SplitFunction(name, T=16, N=4, split_bits=3)
        v = torch.linspace(lo, hi, 5001, dtype=torch.float64)[:-1]
        fast, fast_spikes = split.evaluate(v, simulate=False)
        sim, sim_spikes = split.evaluate(v, simulate=True)
        torch.testing.assert_close(fast, sim, rtol=1e-9, atol=1e-12)
        assert torch.equal(fast_spikes, sim_spikes)
        assert float(((fast - fn(v)) / fn(v)).abs().max()) <= 5e-4, name


@pytest.mark.parametrize("T", [3, 4, 6, 8])
@pytest.mark.parametrize("name", ["exp2", "reciprocal", "rsqrt"])
def test_split_functions_round_their_input_to_the_pathways_grid(name, T):
    """The pathways and the remainder neuron read the ``T`` digits ``q`` as ``lo + q width 2^-T``: the
    coder must round ``v`` to that grid (error at most half a step, none on average), not to a grid of
    ``width / (2^T - 1)`` read as ``2^-T`` steps (an error of up to one step, all of one sign: exp2 at
    ``T=4`` was 2 % low on average)."""
    split = SplitFunction(name, T=T, N=4, split_bits=min(3, T - 1))
    lo, width = split.target.lo, split.target.width
    step = width * 2.0 ** -T
    v = lo + torch.linspace(0, width - step, 20001, dtype=torch.float64)  # half a cell at each end: no bias
    read = lo + split.coder.quantize(v - lo) * step
    assert float((read - v).abs().max()) <= step / 2 * (1 + 1e-9)
    assert abs(float((read - v).mean())) <= step / 200
    y, _ = split.evaluate(v, simulate=False)
    reference = split.target.reference(v)
    bias = float(((y - reference) / reference).mean())  # what is left: the remainder neuron's own fit
    assert abs(bias) <= 0.004 * 2.0 ** (4 - T), (name, T, bias)


@pytest.mark.parametrize("make, reference", [
    (lambda: SpikingActivation.gelu(T=16), F.gelu),
    (lambda: SpikingActivation.gelu(T=8, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    (lambda: SpikingActivation.silu(T=12), F.silu),
    (lambda: SpikingActivation.tanh(T=10, N=2), torch.tanh)])
def test_named_activations_use_the_shipped_fits(make, reference):
    act = make()
    x = torch.linspace(*act.fitted.domain, 4001, dtype=torch.float64)
    assert float((act(x) - reference(x)).abs().max()) <= act.fitted.errors["max_abs"] * 1.05 + 1e-6
    with pytest.raises(ValueError, match="approximate"):
        SpikingActivation.gelu(approximate="sigmoid")


def test_paper_form_without_range_reduction_runs_in_both_modes():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 24, generator=g) * 5
    softmax = SpikingSoftmax(T=16, split_bits=0)
    assert float((assert_modes_agree(softmax, x, atol=1e-6) - torch.softmax(x, -1)).abs().max()) <= 1e-2
    norm = SpikingLayerNorm(24, T=16, split_bits=0)
    assert float((assert_modes_agree(norm, x, atol=1e-5) - F.layer_norm(x, (24,))).abs().max()) <= 2e-2


@pytest.mark.parametrize("scale", [3.0, 30.0])
def test_softmax_matches_torch(softmax, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 48, 64, generator=g) * scale
    assert float((softmax(x) - torch.softmax(x, -1)).abs().max()) <= 1e-3


def test_softmax_masked_entries_are_exact_zeros(softmax):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 16, generator=g) * 4
    mask = torch.rand(3, 5, 16, generator=g) < 0.3
    x = x.masked_fill(mask, float("-inf"))
    x[0, 1] = float("-inf")  # a fully masked row gives zeros
    x[1, 2, :4] = torch.finfo(torch.float32).min  # the HF 'eager' mask value
    y = softmax(x)
    assert torch.all(y[mask] == 0) and torch.all(y[0, 1] == 0) and torch.all(y[1, 2, :4] == 0)
    ref = torch.softmax(x, -1).nan_to_num(0.0)
    assert float((y - ref).abs().max()) <= 1e-3


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data(), scale=st.floats(0.01, 60.0),
       masked=st.floats(0.0, 0.5), seed=st.integers(0, 2 ** 16), double=st.booleans())
def test_softmax_fast_equals_simulate(softmax, shape, data, scale, masked, seed, double):
    softmax.dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    x = torch.randn(*shape, generator=g, dtype=dtype) * scale
    x = x.masked_fill(torch.rand(*shape, generator=g) < masked, float("-inf"))
    y = assert_modes_agree(softmax, x, atol=1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    softmax.dim = -1


def test_softmax_bad_input(softmax):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN/Inf"):
            softmax(torch.tensor([[0.0, bad]]))
    with pytest.raises(ValueError, match=r"dimension -1; got shape \(\)"):
        softmax(torch.tensor(1.0))


def outlier_input(g, shape, channels=(3, 17)):
    h = torch.randn(*shape, generator=g)
    for c in channels:
        h[..., c] = h[..., c] * 40 + 25  # outlier channels, as in trained transformers
    return h


def test_layernorm_matches_torch_with_outlier_channels():
    g = torch.Generator().manual_seed(5)
    ln = torch.nn.LayerNorm(96)
    with torch.no_grad():
        ln.weight.normal_(generator=g)
        ln.bias.normal_(generator=g)
    before = [p.detach().clone() for p in ln.parameters()]
    spiking = SpikingLayerNorm.from_float(ln, T=16)
    assert spiking.weight is ln.weight and spiking.bias is ln.bias
    for h in (torch.randn(4, 20, 96, generator=g) * 3 + 1, outlier_input(g, (4, 20, 96))):
        with torch.no_grad():
            ref, out = ln(h), spiking(h)
        assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-3
    assert all(torch.equal(b, p) for b, p in zip(before, ln.parameters()))


class HFRMSNorm(torch.nn.Module):
    """The shape of transformers' LlamaRMSNorm: ``weight`` and ``variance_epsilon``."""

    def __init__(self, hidden, eps):
        super().__init__()
        self.weight, self.variance_epsilon = torch.nn.Parameter(torch.rand(hidden) + 0.5), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


@pytest.mark.parametrize("source", [HFRMSNorm(64, 1e-6), torch.nn.RMSNorm(64, eps=1e-5)])
def test_rmsnorm_matches_its_source(source):
    g = torch.Generator().manual_seed(6)
    spiking = SpikingRMSNorm.from_float(source, T=16)
    assert spiking.weight is source.weight
    h = outlier_input(g, (3, 10, 64))
    with torch.no_grad():
        ref, out = source(h), spiking(h)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-3


norm_cases = st.sampled_from(["layer", "rms"])


@SETTINGS
@given(kind=norm_cases, rows=st.lists(st.integers(1, 4), min_size=0, max_size=2), width=st.integers(1, 40),
       scale=st.floats(1e-3, 1e3), offset=st.floats(-50, 50), eps=st.sampled_from([1e-5, 1e-2]),
       seed=st.integers(0, 2 ** 16), exponents=st.booleans(), centered=st.booleans())
def test_norm_fast_equals_simulate(kind, rows, width, scale, offset, eps, seed, exponents, centered):
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(width, generator=g), torch.randn(width, generator=g)
    options = dict(eps=eps, element_exponents=exponents, centered_codes=centered)
    op = SpikingLayerNorm(width, weight, bias, **options) if kind == "layer" else \
        SpikingRMSNorm(width, weight, **options)
    x = torch.randn(*rows, width, generator=g, dtype=torch.float64) * scale + offset
    if width > 2:
        x[..., 1] = x[..., 1] * 1e-7  # far below the row's largest: beyond the exponent span
    assert_modes_agree(op, x, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_element_exponents_keep_small_elements_significant_digits(kind):
    """At T=8, rows with two outlier channels (max/RMS about 13): each element's own exponent codes
    the bulk's mantissa ``u`` in [1/2, 1) to half a step (noise RMS ``(1/255)/sqrt(12)`` of ``|u|``
    about 3/4, 0.15 %), and the row's ``1/sqrt`` code adds about as much; the row's exponent alone
    codes the bulk to ``T`` digits of the outliers, ``max/|z|`` times coarser."""
    g = torch.Generator().manual_seed(11)
    h = outlier_input(g, (6, 40, 256))
    ref = F.layer_norm(h, (256,)) if kind == "layer" else F.rms_norm(h, (256,))
    bulk = torch.ones(256, dtype=torch.bool)
    bulk[[3, 17]] = False
    noise, spikes = {}, {}
    for exponents in (True, False):
        # the plain codes (the centred ones: tests/test_centred_codes.py)
        options = dict(T=8, element_exponents=exponents, centered_codes=False)
        op = SpikingLayerNorm(256, **options) if kind == "layer" else SpikingRMSNorm(256, **options)
        error = (op(h) - ref)[..., bulk]
        noise[exponents] = float(error.square().mean().sqrt() / ref[..., bulk].square().mean().sqrt())
        spikes[exponents] = op.op_stats().spikes / h.numel()
    assert noise[True] <= 2.0 ** -8
    assert noise[False] >= 10 * noise[True]
    assert spikes[False] < spikes[True] <= spikes[False] + 3  # about T/3 digits per element, not T
    with pytest.raises(ValueError, match="element_exponents must be True or False"):
        SpikingRMSNorm(8, element_exponents=1)


def test_norm_shape_and_value_errors():
    ln = SpikingLayerNorm((4, 6))
    with pytest.raises(ValueError, match=r"expects input of shape \[\.\.\., 4, 6\], got \(2, 6, 4\)"):
        ln(torch.ones(2, 6, 4))
    with pytest.raises(ValueError, match="NaN/Inf"):
        ln(torch.full((4, 6), float("nan")))
    with pytest.raises(ValueError, match="eps must be positive"):
        SpikingRMSNorm(8, eps=0.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        SpikingRMSNorm(8, weight=torch.ones(7))
    constant = ln(torch.full((2, 4, 6), 3.0))  # zero variance: eps keeps it finite, the output is 0
    assert torch.all(constant == 0)
    tiny = torch.randn(3, 4, 6) * 1e-30  # variance far below eps: the output is ~0, never inf/NaN
    torch.testing.assert_close(ln(tiny), F.layer_norm(tiny, (4, 6)), atol=1e-6, rtol=0)


def test_composite_operators_report_their_stats():
    block = torch.nn.ModuleDict({"norm": SpikingLayerNorm(32), "softmax": SpikingSoftmax(T=16)})
    x = torch.randn(2, 8, 32)
    block["norm"](x)
    block["softmax"](x)
    stats = collect_stats(block)
    assert set(stats) == {"norm", "softmax"}
    assert stats["softmax"].ann_flops == 5 * x.numel() and stats["norm"].ann_flops == 7 * x.numel() + 4 * 16
    assert all(s.spikes > 0 and s.sops >= s.spikes and s.neurons >= x.numel() for s in stats.values())
    functional.reset_net(block)
    assert all(s.spikes == 0 for s in collect_stats(block).values())


def test_named_activations_default_to_the_bases_conversion_uses():
    from spikingjelly_mbe.conversion import OpSettings
    assert SpikingActivation.gelu().fitted.N == OpSettings().activation_bases == 8
    assert SpikingActivation.silu(T=8).fitted.N == SpikingActivation.tanh(T=8).fitted.N == 8
