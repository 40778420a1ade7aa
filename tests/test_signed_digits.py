"""Signed-digit operand codes: the ternary identity neuron against exhaustive enumeration and the NAF
weight formula, fast == step by step for every code, the same values in every code, and no spike
spent on an exact zero."""
import functools
import itertools

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.conversion import OpSettings
from spikingjelly_mbe.conversion.zoo import build, make_batch
from spikingjelly_mbe.energy import EnergyMeter, SynapseCounter, input_spikes
from spikingjelly_mbe.neurons import SignedDigitNode
from spikingjelly_mbe.ops import (IdentityCoder, SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingReLU,
                                  SpikingRMSNorm, SpikingSoftmax)
from spikingjelly_mbe.ops.coding import CODES, signed_digit_count

BASE_2_CODES = [name for name, c in CODES.items() if c.base == 2]  # ternary: test_ternary_code.py

torch.set_num_threads(1)


def naf_weight(q: int) -> int:
    """Nonzero digits of the non-adjacent form of ``q``."""
    return bin(((3 * q) ^ q) >> 1).count("1")


@functools.lru_cache(maxsize=None)
def min_weight(q: int, T: int) -> int:
    """Fewest nonzero digits of ``q = sum_{k<T} d_k 2^k`` with ``d_k`` in ``{-1, 0, 1}``, by enumeration of
    the lowest digit (it must have ``q``'s parity) and recursion on the rest; ``10^9`` when impossible."""
    if T == 0:
        return 0 if q == 0 else 10 ** 9
    return min(abs(d) + min_weight((q - d) // 2, T - 1) for d in (-1, 0, 1) if (q - d) % 2 == 0)


@pytest.mark.parametrize("T", range(1, 13))
def test_default_thresholds_fire_the_fewest_signed_digits_of_every_integer(T):
    q = torch.arange(2 ** T, dtype=torch.float64)
    spikes, value, count = SignedDigitNode(T).run(q, keep_spikes=True)
    assert torch.equal(value, q) and torch.equal(spikes.abs().sum(0), count)
    assert set(spikes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    weights = [min_weight(i, T) for i in range(2 ** T)]
    assert count.tolist() == weights  # no representation in T signed digits has fewer nonzero digits
    naf = [naf_weight(i) for i in range(2 ** T)]
    fits = [3 * i < 2 ** (T + 1) for i in range(2 ** T)]  # the NAF of q has at most T digits
    assert all(w == n for w, n, f in zip(weights, naf, fits) if f)
    assert all(w >= n for w, n in zip(weights, naf))
    assert torch.equal(signed_digit_count(q, T), count)


@pytest.mark.parametrize("T", range(1, 6))
def test_every_threshold_in_the_open_digit_interval_codes_every_integer_exactly(T):
    q = torch.arange(2 ** T, dtype=torch.float64)
    weights = [2 ** (T - 1 - k) for k in range(T)]
    for ceilings in itertools.product(*(range(1, w + 1) for w in weights)):
        # theta in (c - 1, c] acts as the integer c on integer potentials; take the lower end's neighbour
        theta = [c - 0.999 for c in ceilings]
        _, value, _ = SignedDigitNode(T, theta).run(q, keep_spikes=False)
        assert torch.equal(value, q)
    _, value, _ = SignedDigitNode(T, weights).run(-q, keep_spikes=False)  # theta = w: the binary digits, signed
    assert torch.equal(value, -q)


def test_thresholds_and_inputs_outside_the_exact_range_are_refused():
    with pytest.raises(ValueError, match="0 < theta_k <= w_k"):
        SignedDigitNode(3, [4.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="0 < theta_k <= w_k"):
        SignedDigitNode(3, [4.0, 2.5, 1.0])
    with pytest.raises(ValueError, match="T must be an integer"):
        SignedDigitNode(0)
    with pytest.raises(ValueError, match="integers q with"):
        SignedDigitNode(4).run(torch.tensor([16.0]), keep_spikes=False)
    with pytest.raises(ValueError, match="integers q with"):
        SignedDigitNode(4).run(torch.tensor([2.5]), keep_spikes=False)


def test_multi_step_forward_emits_the_weighted_digits():
    node = SignedDigitNode(4, step_mode="m")
    out = node(torch.tensor([[7.0, 0.0], [0.0, 0.0], [0.0, 5.0], [0.0, 0.0]]))  # sums 7 and 5
    assert out.tolist() == [[8.0, 0.0], [0.0, 4.0], [0.0, 0.0], [-1.0, 1.0]]  # 7 = 8 - 1, 5 = 4 + 1
    assert node.spike_count == 4
    functional.reset_net(node)
    assert node.spike_count == 0


@pytest.mark.parametrize("T", [13, 16, 24, 32])
def test_the_closed_form_count_is_the_simulated_neuron_for_long_trains(T):
    g = torch.Generator().manual_seed(T)
    top = 2 ** T - 1
    edges = [0, 1, top, top - 1, (2 ** (T + 1)) // 3, (2 ** (T + 1)) // 3 + 1, 2 ** (T - 1), 2 ** (T - 1) - 1]
    q = torch.cat([torch.tensor(edges, dtype=torch.float64),
                   torch.randint(0, 2 ** T, (20000,), generator=g, dtype=torch.int64).double()])
    _, value, count = SignedDigitNode(T).run(q, keep_spikes=False)
    assert torch.equal(value, q) and torch.equal(signed_digit_count(q, T), count)
    sample = q[:200].long().tolist()
    assert count[:200].tolist() == [min_weight(i, T) for i in sample]


@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("T", [1, 4, 8, 16, 20])
def test_coder_fast_equals_step_by_step_and_every_code_gives_the_same_values(code, T):
    g = torch.Generator().manual_seed(T)
    x = torch.cat([(torch.randn(3000, generator=g) * 1.5).clamp(-2.9, 2.9),
                   torch.tensor([0.0, -0.0, 3.0, -3.0, 7.0, -1e-9])])
    dtype = torch.float64 if T > 16 else torch.float32
    x = x.to(dtype)
    coder, binary = IdentityCoder(T, 3.0, code), IdentityCoder(T, 3.0, "binary")
    simulated, clamped = coder.encode(x, simulate=True)
    fast, fast_clamped = coder.encode(x, simulate=False)
    with kernels.disabled():
        eager, _ = coder.encode(x, simulate=False)
    q = coder.quantize(x, clamp=True)
    for other in (fast, eager):
        assert torch.equal(other.value, simulated.value) and torch.equal(other.counts, simulated.counts)
    assert clamped == fast_clamped == 1
    assert torch.equal(simulated.value, binary.encode(x, simulate=False)[0].value)  # same bits in every code
    assert torch.equal(simulated.counts, CODES[code].count(q, T))
    assert torch.equal(simulated.spikes.abs().sum(-1), simulated.counts)
    torch.testing.assert_close(simulated.spikes @ simulated.weights, simulated.value)
    digits = simulated.spikes @ (2.0 ** torch.arange(T - 1, -1, -1, dtype=dtype))
    assert torch.equal(digits, torch.sign(x) * q)


def test_signed_digits_fire_about_a_third_fewer_spikes_on_uniform_operands():
    T = 16
    q = torch.arange(2 ** T, dtype=torch.float64)
    binary, signed = float(CODES["binary"].count(q, T).mean()), float(CODES["signed"].count(q, T).mean())
    assert binary == 8.0 and signed == pytest.approx(sum(min_weight(i, T) for i in range(2 ** T)) / 2 ** T)
    assert signed / binary < 0.77


def operators(code: str, mode: str):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 32, generator=g), torch.randn(32, 5, generator=g)
    rows = torch.randn(4, 32, generator=g) * 3
    masked = rows.clone()
    masked[1] = float("-inf")
    weight, bias = torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g)
    return [
        (SpikingProduct(16, mode, (4.0, 4.0), code=code), (a, a.flip(0))),
        (SpikingProduct(8, mode, (4.0, 4.0), code=code), (a, a[:1])),  # broadcast
        (SpikingMatmul(16, mode, (4.0, 4.0), code=code), (a, b)),
        (SpikingSoftmax(T=16, mode=mode, code=code), (masked,)),
        (SpikingLayerNorm(32, weight, bias, T=16, mode=mode, code=code), (rows,)),
        (SpikingRMSNorm(32, weight, T=12, mode=mode, code=code), (rows,)),
        (SpikingReLU(16, mode, A=5.0, code=code), (rows,)),
    ]


def test_every_operator_gives_the_same_values_in_every_code_and_fewer_spikes_signed():
    for (binary, inputs), (signed, _) in zip(operators("binary", "fast"), operators("signed", "fast")):
        assert torch.equal(binary(*inputs), signed(*inputs)), type(binary).__name__
        b, s = binary.op_stats(), signed.op_stats()
        assert s.spikes < b.spikes and s.sops < b.sops and (s.neurons, s.ann_flops) == (b.neurons, b.ann_flops)


@pytest.mark.parametrize("code", BASE_2_CODES)
def test_every_operator_is_the_same_fast_compiled_eager_and_step_by_step(code):
    for (fast, inputs), (simulated, _) in zip(operators(code, "fast"), operators(code, "simulate")):
        fast_out, simulated_out = fast(*inputs), simulated(*inputs)
        torch.testing.assert_close(fast_out, simulated_out, rtol=1e-5, atol=1e-6)
        assert fast.op_stats() == simulated.op_stats(), type(fast).__name__
        with kernels.disabled():
            functional.reset_net(fast)
            assert torch.equal(fast(*inputs), fast_out) and fast.op_stats() == simulated.op_stats()


def test_coincidences_are_the_nonzero_spike_pairs_of_the_signed_trains():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 12, generator=g), torch.randn(12, 7, generator=g)
    op = SpikingMatmul(8, "simulate", (3.0, 3.0), code="signed")
    op(a, b)
    sa, sb = (c.encode(x, simulate=True)[0].spikes for c, x in zip(op.coders, (a, b)))  # [5, 12, T], [12, 7, T]
    pairs = torch.einsum("mki,knj->", sa.abs(), sb.abs())
    assert op.op_stats().sops == int(pairs) > 0
    # SpikingJelly's SynOpCounter on the spike planes (binary: one plane per step and sign)
    planes_a = torch.cat([sa.clamp(min=0), (-sa).clamp(min=0)], -1).movedim(-1, 0)  # [2T, 5, 12]
    planes_b = torch.cat([sb.clamp(min=0), (-sb).clamp(min=0)], -1)  # [12, 7, 2T]
    counter = SynOpCounter()
    with DispatchCounterMode([counter]):
        torch.mm(planes_a.reshape(-1, 12), planes_b.reshape(12, -1))
    assert int(counter.get_total()) == op.op_stats().sops


@pytest.mark.parametrize("code", BASE_2_CODES)
def test_exact_zeros_fire_no_spike_in_any_operator(code):
    zeros = torch.zeros(3, 32)
    for op, inputs in [
        (SpikingProduct(16, "fast", (1.0, 1.0), code=code), (zeros, torch.randn(3, 32))),
        (SpikingMatmul(16, "fast", (1.0, 1.0), code=code), (zeros, torch.randn(32, 4))),
        (SpikingReLU(16, "fast", A=1.0, code=code), (-torch.rand(3, 32),)),
        (SpikingSoftmax(T=16, code=code), (torch.full((3, 32), float("-inf")),)),  # fully masked rows
        (SpikingLayerNorm(32, None, torch.randn(32), T=16, code=code), (torch.full((3, 32), 2.5),)),  # constant rows
        (SpikingRMSNorm(32, None, T=16, code=code), (zeros,)),
    ]:
        for mode in ("fast", "simulate"):
            op.mode = mode
            functional.reset_net(op)
            out = op(*inputs)
            name = f"{type(op).__name__} ({mode})"
            assert op.op_stats().spikes == 0 or isinstance(op, (SpikingProduct, SpikingMatmul)), name
            assert op.op_stats().sops == 0, name
            if isinstance(op, (SpikingProduct, SpikingMatmul)):  # only the nonzero operand fires
                code_b = op.coders[1].encode(inputs[1], simulate=False)[0]
                assert op.op_stats().spikes == int(code_b.counts.sum()) and not out.any(), name
    assert input_spikes(torch.zeros(4, 5), 16, code) == 0
    x = torch.tensor([0.0, 1.0, 0.0, -1.0])
    assert input_spikes(x, 16, code) == 2 * int(CODES[code].count(torch.tensor([2.0 ** 16 - 1]), 16))


def test_weight_layer_inputs_are_counted_in_the_model_code():
    torch.manual_seed(0)
    layer, x = nn.Linear(24, 10), torch.randn(6, 24)
    peak = float(x.abs().max())
    q = torch.floor(x.double().abs() * ((2 ** 8 - 1) / peak) + 0.5)
    for code in BASE_2_CODES:
        with torch.no_grad(), SynapseCounter(layer, 8, code) as counter:
            layer(x)
        assert counter.stats[""].spikes == int(CODES[code].count(q, 8).sum()) == input_spikes(x, 8, code)
    model = nn.Sequential(layer, SpikingReLU(8, A=1.0, code="signed"))
    assert SynapseCounter(model, 8).code == "signed" and SynapseCounter(layer, 8).code == OpSettings().code
    with pytest.raises(ValueError, match="code must be one of"):
        SynapseCounter(layer, 8, "quaternary")


def test_conversion_option_code_changes_spikes_only():
    ann = build("bert", layers=1, hidden=32, heads=4, seed=0)
    batch = make_batch("bert", 2, 10, seed=1)
    outputs, totals = {}, {}
    for code in BASE_2_CODES:
        snn = convert(ann, T=8, calib_data=[batch], code=code, fisher_ranges=False)  # (the codes' spikes would move them)
        with torch.no_grad(), EnergyMeter(snn, 8) as meter:
            outputs[code] = snn(**batch).logits
        totals[code] = meter.total()
        assert {m.code for m in snn.modules() if isinstance(m, IdentityCoder)} == {code}
    assert torch.equal(outputs["binary"], outputs["signed"])
    assert totals["signed"].sops < totals["binary"].sops and totals["signed"].spikes < totals["binary"].spikes
    with pytest.raises(ValueError, match=r"code must be one of \('binary', 'signed', 'ternary'\), got 'naf'"):
        convert(ann, T=8, calib_data=[batch], code="naf")
    with pytest.raises(ValueError, match="code must be one of"):
        IdentityCoder(8, 1.0, "quaternary")
    with pytest.raises(ValueError, match="code='ternary' holds at most T=20"):  # every operator's code, T <= 20
        convert(ann, T=24, calib_data=[batch], code="ternary")
