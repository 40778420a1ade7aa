"""ECMT (Huang et al., ACM MM 2024): MT neuron, Expectation Compensation (Theorems 1-2), threshold
calibration, the time-stepped runner, counts, and tiny end-to-end models against the float ANN."""
import contextlib
import copy
import logging
import math

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import base
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from transformers.modeling_outputs import BaseModelOutput

from spikingjelly_mbe import kernels
from spikingjelly_mbe.energy.synapses import SynapseCounter
from spikingjelly_mbe.activations import ACTIVATIONS
from spikingjelly_mbe.ecmt import ECMTSettings, MTLinearInput, MTNode, ProductCompensation, run_steps

torch.set_num_threads(1)


# ---------------------------------------------------------------- MT neuron


def paper_mt_neuron(inputs, n, lam_p, lam_n):
    """Direct reading of the MT neuron (Fig. 3) for one scalar input stream: integrate, fire the
    largest threshold theta (positive lam_p 2^k, negative -lam_n 2^k) that the potential reaches
    within half a base step, at most one spike per step, reset by subtraction."""
    v, outputs = 0.0, []
    positive = [lam_p * 2 ** k for k in reversed(range(n))]
    negative = [lam_n * 2 ** k for k in reversed(range(n))]
    for x in inputs:
        v += x
        out = 0.0
        for theta_p, theta_n in zip(positive, negative):
            if v >= theta_p - lam_p / 2:
                out = theta_p
                break
            if -v >= theta_n - lam_n / 2:
                out = -theta_n
                break
        v -= out
        outputs.append(out)
    return outputs


def test_mt_neuron_matches_a_transcription_of_the_paper():
    g = torch.Generator().manual_seed(0)
    n, lam_p, lam_n, T = 4, 0.5, 0.3, 6
    x = (torch.randn(T, 50, generator=g, dtype=torch.float64) * 2.0)
    x[:, :5] = torch.tensor([0.24, 0.26, -0.16, 3.6, -9.0], dtype=torch.float64)[:, None].T  # near/over thresholds
    node = MTNode(n, lam_p, lam_n).to(torch.float64)
    ours = torch.stack([node(x[t]) for t in range(T)])
    expected = torch.tensor([paper_mt_neuron(x[:, i].tolist(), n, lam_p, lam_n) for i in range(x.shape[1])],
                            dtype=torch.float64).T
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert node.spike_count == int((expected != 0).sum()) and node.num_inputs == x.numel()
    # reset by subtraction: the potential is what has not been emitted yet
    torch.testing.assert_close(node.v, x.sum(0) - expected.sum(0))
    # multi-step mode runs the same steps
    functional.reset_net(node)
    node.step_mode = "m"
    torch.testing.assert_close(node(x), expected, rtol=0, atol=0)


def test_mt_neuron_fires_one_power_of_two_and_saturation_is_counted():
    node = MTNode(3, 1.0, 1.0)
    assert node(torch.tensor([0.4, 0.6, 1.6, -2.9, 3.4, 100.0])).tolist() == [0.0, 1.0, 2.0, -2.0, 2.0, 4.0]
    assert node.last_spike_count == 5 and node.last_saturated == 1  # 100 - 4 still reaches the top threshold
    functional.reset_net(node)
    assert node.spike_count == 0 and node.saturated == 0 and node.v == 0.0


@pytest.mark.skipif(kernels.library() is None, reason="no C compiler")
def test_mt_kernel_returns_the_pytorch_steps_bits_and_counts():
    g = torch.Generator().manual_seed(0)
    n, lam_p, lam_n = 6, 0.37, 0.81
    bounds = torch.tensor([lam * (2.0 ** k - 0.5) for lam in (lam_p, -lam_n) for k in range(n)], dtype=torch.float32)
    edges = torch.cat([bounds, torch.nextafter(bounds, bounds + 1), torch.nextafter(bounds, bounds - 1),
                       torch.tensor([0.0, -0.0, 1e-40, 1e4, -1e4])])  # thresholds to the ulp, subnormal, saturation
    steps = [torch.cat([edges, torch.randn(5000, generator=g) * 3]) for _ in range(3)]
    steps[1][: edges.numel()] = 0.0  # the membrane stays on a boundary for one step
    results = []
    for use_kernel in (True, False):
        node = MTNode(n, lam_p, lam_n)
        with (contextlib.nullcontext() if use_kernel else kernels.disabled()):
            outs = [node(x) for x in steps]
        results.append((torch.stack(outs), node.v, node.spike_count, node.saturated))
    (o1, v1, s1, sat1), (o2, v2, s2, sat2) = results
    assert torch.equal(o1, o2) and torch.equal(v1, v2) and (s1, sat1) == (s2, sat2) and sat1 > 0
    node = MTNode(n, lam_p, lam_n)
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        node(torch.tensor([1.0, float("inf")]))
    assert node.spike_count == 0 and node.v == 0.0  # the failed step left no trace


def test_mt_neuron_rejects_bad_input_and_missing_thresholds():
    with pytest.raises(RuntimeError, match="set_thresholds"):
        MTNode(4)(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN/Inf"):
        MTNode(4, 1.0, 1.0)(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="lambda_neg"):
        MTNode(4, 1.0, -1.0)
    node = MTNode(4, 1.0, 1.0)
    node(torch.zeros(3))
    with pytest.raises(ValueError, match="reset_net"):
        node(torch.zeros(4))


# ---------------------------------------------------------------- Expectation Compensation (Theorem 1)


def layer_norm():
    torch.manual_seed(1)
    ln = nn.LayerNorm(8).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_(0, 0.3)
    return ln


def rms_norm():
    torch.manual_seed(2)
    rms = nn.RMSNorm(8, eps=1e-6).double()
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
    return rms


FUNCTIONS = {  # builder, float reference
    **{name: (lambda s, name=name, params=params: s.activation(name, params), fn) for name, params, fn in [
        ("gelu", {}, lambda x: F.gelu(x)), ("gelu_tanh", {}, lambda x: F.gelu(x, approximate="tanh")),
        ("silu", {}, F.silu), ("tanh", {}, torch.tanh), ("sigmoid", {}, torch.sigmoid), ("relu", {}, F.relu),
        ("abs", {}, torch.abs),
        ("quick_gelu", {}, lambda x: x * torch.sigmoid(1.702 * x)),
        ("leaky_relu", {"slope": 0.1}, lambda x: torch.where(x > 0, x, 0.1 * x)),
        ("clamp", {"lo": -1.0, "hi": 2.0}, lambda x: torch.minimum(torch.maximum(x, torch.tensor(-1.0)), torch.tensor(2.0)))]},
    "softmax": (lambda s: s.softmax(-1), lambda x: torch.softmax(x, -1)),
    "layer_norm": (lambda s: s.layer_norm(layer_norm()), lambda x: F.layer_norm(
        x, (8,), layer_norm().weight, layer_norm().bias)),
    "rms_norm": (lambda s: s.rms_norm(rms_norm()), lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
                 * rms_norm().weight),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_expectation_compensation_mean_output_is_f_of_mean_input_at_every_step(name):
    build, reference = FUNCTIONS[name]
    assert set(ACTIVATIONS) <= set(FUNCTIONS)
    op = build(ECMTSettings())
    g = torch.Generator().manual_seed(0)
    steps = torch.randn(12, 5, 8, generator=g, dtype=torch.float64) * 3.0  # arbitrary, not repeated, inputs
    outputs = torch.stack([op(x) for x in steps])
    for t in range(1, len(steps) + 1):
        torch.testing.assert_close(outputs[:t].mean(0), reference(steps[:t].mean(0)), rtol=1e-10, atol=1e-10)


def test_masked_softmax_over_many_steps_stays_finite():
    op = ECMTSettings().softmax(-1)
    scores = torch.randn(3, 6)
    for mask in (torch.finfo(torch.float32).min, float("-inf")):
        functional.reset_net(op)
        x = scores.clone()
        x[:, 4:] = mask
        x[2, :] = torch.finfo(torch.float32).min if mask != float("-inf") else x[2, :]  # a fully masked row
        outs = torch.stack([op(x) for _ in range(24)])
        assert torch.isfinite(outs).all()
        torch.testing.assert_close(outs.mean(0), torch.softmax(x, -1), rtol=1e-5, atol=1e-6)


def test_expectation_compensation_errors_are_loud():
    op = ECMTSettings().activation("gelu")
    with pytest.raises(ValueError, match="NaN/Inf"):
        op(torch.tensor([1.0, float("nan")]))
    op(torch.zeros(3))
    with pytest.raises(ValueError, match="reset_net"):
        op(torch.zeros(4))
    with pytest.raises(ValueError, match="quick_gelu"):
        ECMTSettings().activation("swish")


# ---------------------------------------------------------------- products (Theorem 2)


def mt_stream(x_steps, lam_p, lam_n, n):
    node = MTNode(n, lam_p, lam_n).to(x_steps.dtype)
    return torch.stack([node(x) for x in x_steps])


@pytest.mark.parametrize("kind", ["product", "matmul"])
def test_product_compensation_mean_output_is_the_product_of_the_mean_coded_operands(kind):
    g = torch.Generator().manual_seed(0)
    T, n = 10, 4
    shape_a, shape_b = ((2, 5, 3), (2, 3, 4)) if kind == "matmul" else ((2, 5, 3), (5, 1))
    a = torch.randn(T, *shape_a, generator=g, dtype=torch.float64)
    b = torch.randn(T, *shape_b, generator=g, dtype=torch.float64)
    ranges = (0.4, 0.3, 0.5, 0.6)
    A, B = mt_stream(a, *ranges[:2], n), mt_stream(b, *ranges[2:], n)
    op_fn = torch.matmul if kind == "matmul" else torch.mul
    results = {}
    for mode in ("simulate", "fast"):
        op = ProductCompensation(kind, n=n, thresholds=ranges, mode=mode)
        outs = torch.stack([op(a[t], b[t]) for t in range(T)])
        for t in range(1, T + 1):
            torch.testing.assert_close(outs[:t].mean(0), op_fn(A[:t].mean(0), B[:t].mean(0)), rtol=1e-10, atol=1e-10)
        results[mode] = outs, op.op_stats()
    torch.testing.assert_close(results["fast"][0], results["simulate"][0], rtol=1e-12, atol=1e-12)
    assert results["fast"][1] == results["simulate"][1]  # the same spike, SOP and FLOP counts


def brute_force_matmul_sops(A, B):
    """Nonzero pairs of A(t) S_B(t-1), S_A(t-1) B(t) and A(t) B(t), counted one by one."""
    count = 0
    SA, SB = torch.zeros_like(A[0]), torch.zeros_like(B[0])
    for t in range(len(A)):
        for x, y in ((A[t], SB), (SA, B[t]), (A[t], B[t])):
            M, K = x.shape
            N = y.shape[1]
            count += sum(1 for m in range(M) for k in range(K) for j in range(N) if x[m, k] != 0 and y[k, j] != 0)
        SA, SB = SA + A[t], SB + B[t]
    return count


def test_product_compensation_counts():
    g = torch.Generator().manual_seed(3)
    T, n, M, K, N = 4, 3, 3, 4, 2
    a = torch.randn(T, M, K, generator=g, dtype=torch.float64)
    b = torch.randn(T, K, N, generator=g, dtype=torch.float64)
    ranges = (0.5, 0.5, 0.7, 0.7)
    A, B = mt_stream(a, *ranges[:2], n), mt_stream(b, *ranges[2:], n)
    op = ProductCompensation("matmul", n=n, thresholds=ranges)
    for t in range(T):
        op(a[t], b[t])
    stats = op.op_stats()
    assert stats.spikes == int((A != 0).sum() + (B != 0).sum()) and stats.neurons == T * (M * K + K * N)
    assert stats.sops == brute_force_matmul_sops(A, B)
    assert stats.ann_flops == M * K * N  # once per run, not per step
    assert stats.float_flops == T * 6 * M * N
    functional.reset_net(op)
    assert op.op_stats().sops == 0 and op.sum_a is None


# ---------------------------------------------------------------- threshold calibration


def test_mt_thresholds_are_the_batch_averaged_signed_percentiles():
    layer = nn.Linear(6, 3)
    op = MTLinearInput(layer, n=8, percentile=95.0)
    assert op.calibrating and op.ranges is None
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(40, 6, generator=g) * s + 0.2 for s in (1.0, 2.0, 0.5)]
    for x in batches:
        torch.testing.assert_close(op(x), layer(x), rtol=0, atol=0)  # calibration forwards are the float layer
    ranges = op.finish_calibration()
    values = [x.double().flatten().numpy() for x in batches]
    expected_p = np.mean([np.percentile(v, 95.0) for v in values])
    expected_n = -np.mean([np.percentile(v, 5.0) for v in values])
    assert ranges == pytest.approx((expected_p, expected_n), rel=1e-6)
    assert not op.calibrating and op.neurons[0].thresholds == pytest.approx(ranges)
    op.set_ranges(tuple(2 * v for v in ranges))  # the conversion's headroom idiom
    assert op.ranges == pytest.approx(tuple(2 * v for v in ranges))


def test_mt_thresholds_explicit_percentile_and_one_sided_data(caplog):
    op = ProductCompensation("product", percentile=99.0)
    probabilities = torch.rand(1000).double() ** 4  # never negative, like Softmax outputs
    op(torch.randn(1000), probabilities)
    with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.ops"):
        ranges = op.finish_calibration(percentile=90.0)
    p90 = float(np.percentile(probabilities.numpy(), 90.0))
    assert ranges[2] == pytest.approx(p90, rel=1e-6) and ranges[3] == ranges[2]  # borrowed from the positive side
    assert "do not straddle zero" in caplog.text


def test_calibration_protocol_errors():
    op = MTLinearInput(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="finish_calibration"):
        op.finish_calibration()
    op.calibrating = False
    with pytest.raises(RuntimeError, match="set_ranges"):
        op(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="positive finite"):
        op.set_ranges((1.0,))
    with pytest.raises(ValueError, match="percentile"):
        ECMTSettings(percentile=100.0)
    with pytest.raises(TypeError, match="weight layer"):
        MTLinearInput(nn.GELU())


# ---------------------------------------------------------------- runner


class Outputs(base.MemoryModule):
    """A stateful toy whose step outputs are known: step t returns t * x in several containers."""

    def __init__(self):
        super().__init__()
        self.register_memory("t", 0)

    def forward(self, x, as_="tuple", **kwargs):
        self.t += 1
        y = self.t * x
        ids = torch.arange(3)
        if as_ == "tuple":
            return y, ids, None
        if as_ == "dict":
            return {"logits": y, "ids": ids}
        if as_ == "model_output":
            return BaseModelOutput(last_hidden_state=y, hidden_states=(y, 2 * y))
        if as_ == "changing_ids":
            return y, ids + self.t
        return object()


def test_run_steps_averages_every_container():
    m = Outputs()
    x = torch.randn(2, 3, dtype=torch.float16)
    mean_t = (1 + 4) / 2  # steps 1..4
    y, ids, none = run_steps(m, x, T=4)
    torch.testing.assert_close(y, (x.float() * mean_t).half())
    assert y.dtype == torch.float16 and torch.equal(ids, torch.arange(3)) and none is None
    d = run_steps(m, x, as_="dict", T=4)  # a second call resets the state first
    torch.testing.assert_close(d["logits"], (x.float() * mean_t).half())
    out = run_steps(m, x, as_="model_output", T=4)
    assert isinstance(out, BaseModelOutput)
    torch.testing.assert_close(out.hidden_states[1], (2 * x.float() * mean_t).half())


def test_run_steps_refuses_what_it_cannot_average():
    m = Outputs()
    with pytest.raises(ValueError, match="differs between steps"):
        run_steps(m, torch.zeros(2), as_="changing_ids", T=2)
    with pytest.raises(TypeError, match="only tensors"):
        run_steps(m, torch.zeros(2), as_="other", T=2)
    with pytest.raises(ValueError, match="positive integer"):
        run_steps(m, torch.zeros(2), T=0)


# ---------------------------------------------------------------- tiny models end to end


def calibrate(model, batches):
    """Calibration forwards through the runner at T=1 (it resets the step state between batches)."""
    with torch.no_grad():
        for x in batches:
            run_steps(model, x, T=1)
    for op in model.modules():
        if getattr(op, "calibrating", False):
            op.finish_calibration()


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), 0))


def mlp_pair(T):
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
    ann = nn.Sequential(fc1, nn.GELU(), fc2)
    s = ECMTSettings(T=T)
    snn = nn.Sequential(s.linear_input(copy.deepcopy(fc1)), s.activation("gelu", None),
                        s.linear_input(copy.deepcopy(fc2)))
    g = torch.Generator().manual_seed(1)
    calibrate(snn, [torch.randn(64, 16, generator=g) for _ in range(3)])
    return ann, snn, torch.randn(64, 16, generator=g)


class TinyAttention(nn.Module):
    """Pre-norm self-attention block; ``convert(settings)`` swaps in the ECMT operators."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        torch.manual_seed(0)
        self.dim, self.heads = dim, heads
        self.ln, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.normal_(0, 0.1)
        self.ops = None

    def convert(self, s):
        self.ops = nn.ModuleDict(dict(ln=s.layer_norm(self.ln), qkv=s.linear_input(self.qkv), scores=s.matmul(),
                                      softmax=s.softmax(-1), context=s.matmul(), proj=s.linear_input(self.proj)))
        return self

    def forward(self, x):
        B, L, D = x.shape
        ops = self.ops or dict(ln=self.ln, qkv=self.qkv, scores=torch.matmul, softmax=lambda z: z.softmax(-1),
                               context=torch.matmul, proj=self.proj)
        q, k, v = ops["qkv"](ops["ln"](x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = ops["softmax"](ops["scores"](q, k.transpose(-1, -2)) / math.sqrt(D // self.heads))
        return x + ops["proj"](ops["context"](attn, v).transpose(1, 2).reshape(B, L, D))


def attention_pair(T):
    ann = TinyAttention()
    snn = copy.deepcopy(ann).convert(ECMTSettings(T=T))
    g = torch.Generator().manual_seed(1)
    calibrate(snn, [torch.randn(8, 16, 32, generator=g) for _ in range(3)])
    return ann, snn, torch.randn(8, 16, 32, generator=g)


@pytest.mark.parametrize("pair", [mlp_pair, attention_pair])
def test_tiny_models_agree_with_the_float_model_at_T8_and_improve_with_T(pair):
    cosines = {}
    for T in (2, 8, 16):
        ann, snn, x = pair(T)
        with torch.no_grad():
            ref, out = ann(x), run_steps(snn, x, T=T)
        if pair is attention_pair:  # compare the attention branch, not the residual that carries x
            ref, out = ref - x, out - x
        cosines[T] = cosine(out, ref)
    assert cosines[8] >= 0.99, cosines
    assert cosines[2] < cosines[8] < cosines[16], cosines


def test_tiny_mlp_counts_spikes_and_float_flops():
    T = 8
    ann, snn, x = mlp_pair(T)
    with SynapseCounter(snn, T) as synapses, torch.no_grad():
        run_steps(snn, x, T=T)
    fc1, act, fc2 = snn
    B = x.shape[0]
    assert synapses.stats == {}  # the wrapped layers are charged by MTLinearInput, not a second time
    s1, s3 = fc1.op_stats(), fc2.op_stats()
    assert s1.spikes == fc1.neurons[0].spike_count > 0 and s1.neurons == T * x.numel()
    assert s1.sops == s1.spikes * 64 and s3.sops == s3.spikes * 16  # spikes x fan-out
    assert s1.ann_flops == B * 16 * 64 and s3.ann_flops == B * 64 * 16 and s1.float_flops == 0
    s2 = act.op_stats()
    assert s2.spikes == 0 and s2.sops == 0
    assert s2.ann_flops == 70 * B * 64 and s2.float_flops == T * (70 + 5) * B * 64
