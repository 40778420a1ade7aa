"""The balanced-ternary code (``code='ternary'``, ``operand_code='ternary'``): the base-3 identity neuron
against Python's integer arithmetic, the coder's closed form and step-by-step simulation, every
operator in fast and simulate mode and on the C kernels, and conversions that code only the weight
layers' inputs, products and matmuls in it, or every operator."""
import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.conversion.api import set_mode
from spikingjelly_mbe.conversion.zoo import build, make_batch
from spikingjelly_mbe.energy import SynapseCounter
from spikingjelly_mbe.neurons import SignedDigitNode
from spikingjelly_mbe.ops import (IdentityCoder, SpikingEinsum, SpikingLayerNorm, SpikingMatmul, SpikingProduct,
                                  SpikingReLU, SpikingRMSNorm, SpikingRoot, SpikingSoftmax, SpikingWeightInput,
                                  SplitFunction)
from spikingjelly_mbe.ops.coding import CODES

torch.set_num_threads(1)


def balanced_ternary(q: int, T: int) -> list:
    """The digits of ``q`` in ``{-1, 0, 1}``, weights ``3^(T-1) .. 1``, by Python integer division."""
    digits = []
    for _ in range(T):
        r = q % 3
        digits.append(-1 if r == 2 else r)
        q = (q - digits[-1]) // 3
    assert q == 0
    return digits[::-1]


@pytest.mark.parametrize("T", [1, 3, 5])
def test_the_base_3_neuron_fires_the_balanced_ternary_digits_of_every_integer(T):
    top = (3 ** T - 1) // 2
    q = torch.arange(-top, top + 1, dtype=torch.float64)
    spikes, out, count = SignedDigitNode(T, base=3).run(q, keep_spikes=True)
    reference = torch.tensor([balanced_ternary(int(v), T) for v in q.tolist()], dtype=torch.float64)
    assert torch.equal(spikes.T, reference) and torch.equal(out, q)
    assert torch.equal(count, reference.abs().sum(1))
    assert torch.equal(CODES["ternary"].count(q.abs().float(), T), count.float())
    multi = SignedDigitNode(T, base=3, step_mode="m")(torch.stack([q] + [torch.zeros_like(q)] * (T - 1)))
    assert torch.equal(multi.sum(0), q)


def test_the_base_3_neuron_refuses_thresholds_and_inputs_it_cannot_code_exactly():
    with pytest.raises(ValueError, match=r"\(w_k - 1\)/2 < theta_k"):
        SignedDigitNode(3, thresholds=[9.0, 1.5, 0.5], base=3)  # 9 > (9 + 1) / 2
    with pytest.raises(ValueError, match="base must be one of"):
        SignedDigitNode(3, base=4)
    with pytest.raises(ValueError, match=r"\|q\| <= 13"):
        SignedDigitNode(3, base=3).run(torch.tensor([14.0]), keep_spikes=False)


@pytest.mark.parametrize("T, dtype", [(2, torch.float32), (4, torch.float32), (10, torch.float32),
                                      (13, torch.float64), (20, torch.float64)])
def test_the_ternary_coder_rounds_to_the_nearest_of_3_to_the_T_levels_fast_and_step_by_step(T, dtype):
    g = torch.Generator().manual_seed(T)
    A = 3.0
    x = torch.cat([(torch.randn(4000, generator=g) * 1.5).clamp(-2.99, 2.99), torch.tensor([0.0, -0.0, 3.0, -3.0])])
    x = x.to(dtype)
    coder = IdentityCoder(T, A, "ternary")
    fast, clamped = coder.encode(x, simulate=False)
    simulated, _ = coder.encode(x, simulate=True)
    levels = (3 ** T - 1) // 2
    # the closed form: the input gain and output step are float32 numbers, the arithmetic in x's dtype
    gain, step = (torch.tensor(v, dtype=torch.float32).to(dtype) for v in (levels / A, A / levels))
    q = torch.floor(x.abs() * gain + 0.5).clamp(max=levels)
    assert torch.equal(fast.value, torch.sign(x) * q * step) and torch.equal(fast.value, simulated.value)
    assert torch.equal(fast.counts, simulated.counts) and torch.equal(simulated.spikes.abs().sum(-1), fast.counts)
    torch.testing.assert_close(simulated.spikes @ simulated.weights, simulated.value,
                               rtol=T * torch.finfo(dtype).eps, atol=0)  # sums of T float digit weights
    # half a step, and the float32 rounding of the gain and step (each 2^-24 relative, over the range A)
    assert clamped == 0 and float((fast.value - x).abs().max()) <= A / (2 * levels) * (1 + 1e-5) + 2 * A * 2.0 ** -24
    with kernels.disabled():
        eager, _ = coder.encode(x, simulate=False)  # the torch path (above: the C kernel's, on float32)
    assert torch.equal(eager.value, fast.value) and torch.equal(eager.counts, fast.counts.to(eager.counts.dtype))
    if dtype == torch.float64:  # beyond the kernels' float32 codes
        with pytest.raises(ValueError, match="beyond the compiled kernels"):
            coder.fused(x)


def test_ternary_holds_at_most_20_steps_named_when_refused():
    with pytest.raises(ValueError, match="at most T=20"):
        IdentityCoder(21, 1.0, "ternary")
    with pytest.raises(ValueError, match="code='ternary' holds at most T=20"):
        SpikingSoftmax(T=21, code="ternary")
    with pytest.raises(ValueError, match=r"code='ternary' holds at most T=20 steps exactly, got T=24"):
        convert(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], T={"default": 8, "norm": 24}, code="ternary")
    with pytest.raises(ValueError, match=r"operand_code='ternary' holds at most T=20 steps exactly, got T=24"):
        convert(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], T=24, operand_code="ternary")
    with pytest.raises(ValueError, match="code must be one of"):
        convert(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], T=6, operand_code="quaternary")
    with pytest.raises(ValueError, match="code='ternary' holds at most T=20"):
        SynapseCounter(nn.Linear(4, 4), 24, "ternary")


def operand_ops(code: str, mode: str):
    """Fixed ranges, and calibrated ones (per-channel products, centred weight inputs) that the test
    inputs exceed, so the overflow shift codes them."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 32, generator=g), torch.randn(32, 5, generator=g)
    layer = nn.Linear(32, 7)
    for p in layer.parameters():
        torch.nn.init.normal_(p, generator=g)
    calibrated = [SpikingProduct(5, mode, code=code), SpikingEinsum("ik,kj->ij", 5, mode, code=code),
                  SpikingWeightInput(layer, T=5, mode=mode, code=code, budget=None),
                  SpikingWeightInput(layer, T=5, mode=mode, code=code)]  # 'auto': the budget's step
    for op, inputs in zip(calibrated, ((a, a.flip(0)), (a, b), (a + 0.5,), (a + 0.5,))):
        op(*(x * 0.25 for x in inputs))  # calibration sees a quarter of the test inputs: beyond its 2x room
        op.finish_calibration()
    return [(SpikingProduct(5, mode, (4.0, 4.0), code=code), (a, a.flip(0))),
            (SpikingMatmul(5, mode, (4.0, 4.0), code=code), (a, b)),
            (SpikingWeightInput(layer, T=5, mode=mode, A=4.0, code=code, budget=None), (a,)),
            (calibrated[0], (a, a.flip(0))), (calibrated[1], (a, b)), (calibrated[2], (a + 0.5,)),
            (calibrated[3], (a + 0.5,))]


def test_operators_in_ternary_are_the_same_fast_and_step_by_step_and_finer_than_signed_at_equal_T():
    for (fast, inputs), (simulated, _), (signed, _) in zip(operand_ops("ternary", "fast"), operand_ops("ternary", "simulate"),
                                                           operand_ops("signed", "fast")):
        name = type(fast).__name__
        with torch.no_grad():
            out, reference = fast(*inputs), simulated(*inputs)
            exact = fast.float_reference(*inputs)
            signed_out = signed(*inputs)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        assert fast.op_stats() == simulated.op_stats() and fast.op_stats().spikes > 0, name
        # 121 levels per sign against 31: the error of every operator at full precision shrinks by more than 2x
        if getattr(fast, "budget", None) in (None, 2.0 ** -9):
            assert (out - exact).norm() < 0.5 * (signed_out - exact).norm(), name


@pytest.fixture(scope="module")
def llama():
    """A 1-layer Llama, two calibration batches, a test batch and its float logits."""
    ann = build("llama_lm", layers=1)
    batch = make_batch("llama_lm", 2, seed=3)
    with torch.no_grad():
        reference = ann(**batch).logits
    return ann, [make_batch("llama_lm", 2, seed=s) for s in (1, 2)], batch, reference


def test_a_conversion_codes_only_the_operands_in_ternary_and_counts_their_spikes(llama):
    ann, calib, batch, reference = llama
    errors = {}
    for operand_code in (None, "ternary"):
        snn = convert(ann, calib, T=4, operand_code=operand_code)
        with torch.no_grad():
            errors[operand_code] = float((snn(**batch).logits - reference).norm() / reference.norm())
        coders = {type(m).__name__: m.code for m in snn.modules() if hasattr(m, "code") and hasattr(m, "T")}
        expected = operand_code or "signed"
        assert coders["SpikingWeightInput"] == coders["SpikingMatmul"] == coders["SpikingProduct"] == expected
        assert coders["SpikingSoftmax"] == coders["SpikingRMSNorm"] == "signed"
        assert SynapseCounter(snn, 4).code == expected
    assert errors["ternary"] < 0.8 * errors[None]
    with torch.no_grad():  # the same model step by step (the ternary codes simulated digit by digit)
        fast = snn(**batch).logits
        torch.testing.assert_close(set_mode(snn, "simulate")(**batch).logits, fast, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(kernels.library() is None, reason="no C compiler: the kernels are not built")
@pytest.mark.parametrize("T", [1, 4, 7, 10])
def test_the_c_kernels_count_every_ternary_level_as_the_torch_path(T):
    levels = (3 ** T - 1) // 2
    coder = IdentityCoder(T, 1.0, "ternary")
    x = torch.cat([torch.linspace(-1.0, 1.0, 4 * levels + 1), torch.tensor([1.5, -7.0])])  # every level, beyond A
    value, counts, stats = kernels.encode(x, coder.kernel_params(torch.float32, True), coder.A)
    with kernels.disabled():
        eager, clamped = coder.code_within(x, simulate=False)
    assert torch.equal(value, eager.value) and torch.equal(counts.to(eager.counts.dtype), eager.counts)
    assert int(stats[0]) == int(eager.counts.sum()) and int(stats[1]) == int(clamped) == 2
    assert set(coder.quantize(x).tolist()) == set(range(levels + 1))


@pytest.mark.skipif(kernels.library() is None, reason="no C compiler: the kernels are not built")
def test_operators_in_ternary_give_the_same_bits_and_counts_on_the_c_kernels_and_the_torch_path():
    for (c_op, inputs), (torch_op, _) in zip(operand_ops("ternary", "fast"), operand_ops("ternary", "fast")):
        with torch.no_grad():
            out = c_op(*inputs)
            with kernels.disabled():
                reference = torch_op(*inputs)
        assert torch.equal(out, reference) and c_op.op_stats() == torch_op.op_stats(), type(c_op).__name__


def split_ops(code: str, mode: str, T: int):
    """The operators whose split functions (``2^f``, ``1/M``, ``1/sqrt(M)``) read the code's digits, and a
    rectifier: masked and outlier rows, positive inputs over many binades."""
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(4, 32, generator=g) * 3
    rows[0, 5] = 60.0
    masked = rows.clone()
    masked[1] = float("-inf")
    masked[2, :9] = float("-inf")
    positive = torch.rand(4, 32, generator=g).pow(4) * 300 + 1e-3
    weight, bias = torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g)
    return [(SpikingSoftmax(T=T, mode=mode, code=code), masked),
            (SpikingLayerNorm(32, weight, bias, T=T, mode=mode, code=code), rows),
            (SpikingRMSNorm(32, weight, T=T, mode=mode, code=code), rows),
            (SpikingRoot(-1.0, T, mode, code=code), positive), (SpikingRoot(0.5, T, mode, code=code), positive),
            (SpikingReLU(T, mode, A=5.0, code=code), rows)]


@pytest.mark.parametrize("T", [4, 7, 12])
def test_softmax_norms_roots_in_ternary_are_the_same_fast_on_c_and_step_by_step_and_finer_than_signed(T):
    """T=4 and 7 tabulate every ternary pattern (the C kernels); T=12 (19 binary digits) runs the torch
    path in float64 and the remainder neuron's exact table."""
    for (fast, x), (simulated, _), (eager, _), (signed, _) in zip(
            split_ops("ternary", "fast", T), split_ops("ternary", "simulate", T), split_ops("ternary", "fast", T),
            split_ops("signed", "fast", T)):
        name = f"{type(fast).__name__}, T={T}"
        with torch.no_grad():
            out, reference, exact, signed_out = fast(x), simulated(x), fast.float_reference(x), signed(x)
            with kernels.disabled():
                torch_path = eager(x)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert fast.op_stats() == simulated.op_stats() == eager.op_stats() and fast.op_stats().spikes > 0, name
        assert torch.equal(out, torch_path), name
        finite = exact.isfinite()
        error, signed_error = ((y - exact)[finite].norm() for y in (out, signed_out))
        assert error < signed_error, (name, float(error), float(signed_error))


@pytest.mark.parametrize("T", [3, 4, 6])
@pytest.mark.parametrize("name", ["exp2", "reciprocal", "rsqrt"])
def test_ternary_split_functions_round_to_their_grid_and_read_pathways_off_the_top_digits(name, T):
    """``v = lo + q width / S`` with ``S = (3^T + 1) / 2`` steps: the coder rounds to it (half a step), the
    pathway is ``floor(q / 3^(T-b))`` and the remainder neuron's input the rest, which the step-by-step
    run reads off the spikes in base 3 (the top ``b`` digits, less one when the lower digits are
    negative, as the module docstring says), and within the shipped fit's domain."""
    split = SplitFunction(name, T=T, N=4, split_bits=min(3, T - 1), code="ternary")
    levels = (3 ** T - 1) // 2
    assert split.unit == split.target.width / (levels + 1) and split.low == 3 ** (T - split.split_bits)
    v = split.target.lo + torch.linspace(0, levels * split.unit, 20001, dtype=torch.float64)
    q = split.coder.quantize(v - split.target.lo)
    assert float((split.target.lo + q * split.unit - v).abs().max()) <= split.unit / 2 * (1 + 1e-9)
    digits = IdentityCoder(T, split.coder.A, "ternary").simulate(v - split.target.lo)[0]
    top = digits[..., :split.split_bits] @ (3.0 ** torch.arange(T - 1, T - 1 - split.split_bits, -1, dtype=v.dtype))
    lower = digits[..., split.split_bits:] @ (3.0 ** torch.arange(T - 1 - split.split_bits, -1, -1, dtype=v.dtype))
    pathway = torch.div(top, split.low, rounding_mode="floor") - (lower < 0).to(v.dtype)
    assert torch.equal(pathway, torch.div(q, split.low, rounding_mode="floor"))
    x, _ = split._pathway(q)
    lo, hi = split.fitted.domain
    assert float(x.min()) >= lo and float(x.max()) <= hi * (1 + 1e-12)
    fast, fast_spikes = split.evaluate(v, simulate=False)
    sim, sim_spikes = split.evaluate(v, simulate=True)
    torch.testing.assert_close(fast, sim, rtol=1e-12, atol=0)
    assert torch.equal(fast_spikes, sim_spikes)
    signed = SplitFunction(name, T=T, N=4, split_bits=min(3, T - 1))
    reference = split.target.reference(v)
    assert (fast - reference).norm() < (signed.evaluate(v, simulate=False)[0] - reference).norm()


@pytest.mark.parametrize("T, split_bits", [(5, 4), (6, 4), (4, 1), (4, 0)])
def test_ternary_split_functions_use_the_shipped_binary_fit_of_their_split_bits(T, split_bits):
    """For ``b >= 2`` the binary interval of ``b`` split bits holds ``3^(T-b)`` ternary steps (``2^b <=
    (3^b + 1) / 2``), so the fit is the one binary ``b`` uses; below, the whole domain's (``b' = 0``). A
    finer fit than ``b``'s would be fitted on first use, or refused at ``b = T - 1``."""
    split = SplitFunction("reciprocal", T=T, N=4, split_bits=split_bits, code="ternary")
    binary = SplitFunction("reciprocal", T=T, N=4, split_bits=split_bits if split_bits >= 2 else 0)
    assert split.fitted.domain == binary.fitted.domain
    v = torch.linspace(1.0, 2.0, 1001, dtype=torch.float64)
    x, _ = split._pathway(split.coder.quantize(v - 1.0))
    assert float(x.max()) <= split.fitted.domain[1] * (1 + 1e-12)
    (fast, fast_spikes), (sim, sim_spikes) = (split.evaluate(v, simulate=s) for s in (False, True))
    torch.testing.assert_close(fast, sim, rtol=1e-12, atol=0)
    assert torch.equal(fast_spikes, sim_spikes)


def test_a_conversion_in_ternary_codes_every_operator_in_it_and_runs_the_same_step_by_step(llama):
    ann, calib, batch, reference = llama
    errors = {}
    for code, operand_code in (("signed", "ternary"), ("ternary", None)):
        snn = convert(ann, calib, T=4, code=code, operand_code=operand_code)
        with torch.no_grad():
            errors[code] = float((snn(**batch).logits - reference).norm() / reference.norm())
    coders = {m.code for m in snn.modules() if isinstance(m, IdentityCoder)}
    assert coders == {"ternary"} and SynapseCounter(snn, 4).code == "ternary"
    assert errors["ternary"] < errors["signed"]  # Softmax and RMSNorm in ternary too
    with torch.no_grad():
        fast = snn(**batch).logits
        torch.testing.assert_close(set_mode(snn, "simulate")(**batch).logits, fast, rtol=1e-4, atol=1e-4)
