"""Hostile and careless inputs: every defect row of the reliability audit (issue 14), replayed per entry
point, plus property-based fuzzing of the public entry points.

Each case ends in a correct result (checked against plain PyTorch float ops or closed forms), a
documented counted clamp, or a typed error whose message names the argument and the fix. Row ids
(N3, F5, L24, ...) are those of ``reliability-audit.md``.
"""
import copy
import errno
import functools
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional

from spikingjelly_mbe import FSNode, MBENode, fit_neuron, kernels, load_fitted
from spikingjelly_mbe.data.assets import CacheDirError, cache_dir
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.fitting import FittedNeuron, FittedNeuronError
from spikingjelly_mbe.fitting import routine
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingRMSNorm,
                                  SpikingSoftmax)
from spikingjelly_mbe.ops.rectifier import SpikingReLU

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def gelu_node() -> MBENode:
    return load_fitted("gelu", "mbe", 4, 16).node()


def binary_identity_fit(T: int) -> FittedNeuron:
    """MBE_Id of Eq. 9 as a file: one basis, ``Vth = r = d = 2^-(t+1)`` (alpha 1/2, tau = dt / ln 2)."""
    tau = [1.0 / math.log(2.0)]
    return FittedNeuron(target="identity", kind="mbe", N=1, T=T, domain=(0.0, 1.0),
                        params={"gain": [1.0], "offset": [0.0], "bias": 0.0, "weight": [1.0], "alpha": 0.5,
                                "dt": 1.0, "decay": True, "tau_v": tau, "tau_r": tau, "tau_d": tau})


# ---------------------------------------------------------------- 1. neurons (MBENode / FSNode)
class TestNeurons:
    def test_float16_counts_exactly_like_float32_on_the_same_values(self):
        node = gelu_node()
        for size in (512, 2048, 4096):  # 4096 raised OverflowError, the others miscounted
            x = (torch.randn(size, generator=torch.Generator().manual_seed(size)) * 4).half()
            y = node(x)
            count = node.last_spike_count
            reference = node(x.float())
            assert y.dtype == torch.float16 and count == node.last_spike_count
            torch.testing.assert_close(y, reference.half(), rtol=0, atol=0)

    def test_bfloat16_output_within_bfloat16_rounding_of_float32(self):
        node = gelu_node()
        x = (torch.randn(2048, generator=torch.Generator().manual_seed(5)) * 4).bfloat16()
        y = node(x)
        count = node.last_spike_count
        reference = node(x.float())
        assert count == node.last_spike_count
        assert float((y.float() - reference).abs().max()) <= float(reference.abs().max()) * 2 ** -8

    def test_requires_grad_input_without_a_surrogate_is_a_clear_error_naming_the_fix(self):
        node = gelu_node()
        node.surrogate_function = None
        with pytest.raises(ValueError, match=r"requires grad.*surrogate_function=.*no_grad"):
            node(torch.randn(4, requires_grad=True))
        with torch.no_grad():
            node(torch.randn(4, requires_grad=True))
        x = torch.randn(4, requires_grad=True)  # a fitted node's default: the target's gradient (straight-through)
        gelu_node()(x).sum().backward()
        assert torch.allclose(x.grad, torch.func.grad(lambda v: torch.nn.functional.gelu(v).sum())(x.detach()))

    def test_multi_step_sum_overflow_is_named(self):
        node = gelu_node()
        node.step_mode = "m"
        with pytest.raises(ValueError, match="sum over T overflows"):
            node(torch.full((16, 2), 3e38))

    def test_state_dict_carries_domain_and_alpha(self):
        gelu, tanh = gelu_node(), load_fitted("tanh", "mbe", 4, 16).node()
        tanh.load_state_dict(gelu.state_dict())
        assert tanh.domain == (-16.0, 16.0) and tanh.alpha == gelu.alpha and "alpha=16" in repr(tanh)
        x = torch.tensor([12.0, -3.0, 0.5])
        torch.testing.assert_close(tanh(x), gelu(x), rtol=0, atol=0)
        assert tanh.clamp_count == 0

    def test_fractional_T_is_rejected(self):
        with pytest.raises(ValueError, match="T must be a whole number"):
            MBENode([1.0], [1.0], [1.0], weight=[1.0], T=2.5)
        with pytest.raises(TypeError, match="T must be an integer"):
            MBENode([1.0], [1.0], [1.0], weight=[1.0], T="4")

    @pytest.mark.parametrize("bias", [float("nan"), float("inf")])
    def test_non_finite_bias_is_rejected(self, bias):
        with pytest.raises(ValueError, match="bias must be finite"):
            MBENode([1.0], [1.0], [1.0], weight=[1.0], T=4, bias=bias)
        with pytest.raises(ValueError, match="bias must be finite"):
            FSNode([0.5], [0.5], [0.5], bias=bias)

    @pytest.mark.parametrize("kw", [{"out_scale": float("nan")}, {"out_scale": float("inf")},
                                    {"in_scale": float("inf")}])
    def test_non_finite_scales_are_rejected(self, kw):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be finite"):
            gelu_node().scaled(**kw)

    @pytest.mark.parametrize("domain", [(0.0,), (0.0, 1.0, 2.0), (1.0, float("nan")), "ab"])
    def test_domain_of_wrong_length_or_value(self, domain):
        with pytest.raises(ValueError, match="domain"):
            MBENode([1.0], [1.0], [1.0], weight=[1.0], T=4, domain=domain)

    @FUZZ
    @given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=40),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    def test_fuzz_node_output_is_finite_counted_or_a_clear_error(self, values, dtype):
        fitted = load_fitted("tanh", "mbe", 2, 8)
        node = fitted.node()
        x = torch.tensor(values, dtype=torch.float64).to(dtype)
        if not bool(torch.isfinite(x).all()):
            with pytest.raises(ValueError, match="NaN/Inf"):
                node(x)
            return
        y = node(x)
        count = node.last_spike_count
        assert y.dtype == dtype and bool(torch.isfinite(y).all())
        assert node.clamp_count == int(((x.double() < -8) | (x.double() > 8)).sum())
        if dtype in (torch.float16, torch.bfloat16):  # simulated in float32: the same spikes
            reference = node(x.float())
            assert count == node.last_spike_count
            torch.testing.assert_close(y, reference.to(dtype), rtol=0, atol=0)
        error = (y.double() - torch.tanh(x.double().clamp(-8, 8))).abs().max()
        assert float(error) <= fitted.errors["max_abs"] + 2 * torch.finfo(dtype).eps


# ---------------------------------------------------------------- 2a. fit_neuron arguments
class TestFitNeuron:
    @pytest.fixture(autouse=True)
    def no_search(self, monkeypatch):
        """Every case here must fail before the CMA-ES search starts."""
        def refuse(*args, **kwargs):
            raise AssertionError("the search started: the bad argument was not caught up front")
        monkeypatch.setattr(routine, "_Search", refuse)

    def test_nan_hitting_a_sample_but_not_the_probe_grid(self):
        hit = 100 / 299  # sample 100 of linspace(0, 1, 300)

        def spiky(x):
            return torch.where((x - hit).abs() < 1e-12, torch.full_like(x, float("nan")), x)
        with pytest.raises(ValueError, match=r"target 'spiky' is not finite at 1 of 300 points"):
            fit_neuron(spiky, domain=(0, 1), samples=300, budget=40)

    @pytest.mark.parametrize("fn", [lambda x: x.sum(), lambda x: x.sum() + 5, lambda x: x[:, None],
                                    lambda x: x[:10]], ids=["F3 scalar", "F4 scalar+5", "F5 [n,1]", "F6 x[:10]"])
    def test_wrong_output_shape(self, fn):
        with pytest.raises(ValueError, match="must be element-wise.*same shape"):
            fit_neuron(fn, domain=(0, 1), samples=300, budget=40)

    @pytest.mark.parametrize("fn", [lambda x: x.numpy(), lambda x: x.tolist()], ids=["numpy", "list"])
    def test_non_tensor_output(self, fn):
        with pytest.raises(TypeError, match="must return a torch.Tensor"):
            fit_neuron(fn, domain=(0, 1), samples=300, budget=40)

    @pytest.mark.parametrize("domain", [(0, 1, 2), (0,)])
    def test_domain_of_wrong_length(self, domain):
        with pytest.raises(ValueError, match="domain must be a pair"):
            fit_neuron(torch.sin, domain=domain, samples=300, budget=40)

    @pytest.mark.parametrize("name", ["N", "T", "budget", "restarts"])
    @pytest.mark.parametrize("value, error", [(2.5, ValueError), ("4", TypeError), (True, TypeError)])
    def test_counts_of_the_wrong_type(self, name, value, error):
        with pytest.raises(error, match=f"{name} must be"):
            fit_neuron("gelu", samples=300, **{"budget": 40, name: value})

    def test_fractional_samples(self):
        with pytest.raises(TypeError, match="samples must be an integer"):
            fit_neuron("gelu", samples=2.5, budget=40)

    @pytest.mark.parametrize("dt", [0.0, -1.0, float("nan"), float("inf")])
    def test_bad_dt(self, dt):
        with pytest.raises(ValueError, match="dt must be"):
            fit_neuron("gelu", samples=300, budget=40, dt=dt)

    @pytest.mark.parametrize("seed", [-1, 2.0, 10 ** 9])
    def test_bad_seed(self, seed):
        with pytest.raises(ValueError, match="seed must be an integer"):
            fit_neuron("gelu", kind="fs", samples=300, budget=40, seed=seed)

    @FUZZ
    @given(arg=st.sampled_from(["N", "T", "samples", "dt", "seed", "budget", "domain"]),
           value=st.one_of(st.none(), st.booleans(), st.integers(-5, 0), st.floats(allow_nan=True),
                           st.text(max_size=3), st.tuples(st.floats(), st.floats(), st.floats())))
    def test_fuzz_fit_arguments_fail_up_front_naming_the_argument(self, arg, value):
        if arg == "domain" and value is None:
            value = (1.0, 1.0)  # None means the target's own domain, which is valid
        if arg == "dt" and isinstance(value, float) and value > 0 and math.isfinite(value):
            value = -value
        if arg == "budget" and value is None:
            value = 0  # None means the default budget
        if arg == "seed" and value == 0 and not isinstance(value, bool):
            value = -1  # 0 is a valid seed (the library's)
        with pytest.raises((ValueError, TypeError)) as info:
            fit_neuron("gelu", **{"samples": 300, "budget": 40, arg: value})
        assert arg in str(info.value) or (arg == "domain" and "lo < hi" in str(info.value))


# ---------------------------------------------------------------- 2b. files: FittedNeuron.load/save, load_fitted
@pytest.fixture
def good_file(tmp_path) -> Path:
    return load_fitted("gelu", "mbe", 4, 16).save(tmp_path / "gelu.json")


def edited(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    out = path.with_name("edited.json")
    out.write_text(json.dumps(data))
    return out


class TestFiles:
    def test_deeply_nested_json(self, tmp_path):
        path = tmp_path / "deep.json"
        path.write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(FittedNeuronError, match="nested too deeply"):
            FittedNeuron.load(path)

    @pytest.mark.parametrize("edit", [
        lambda d: d.update(format_version=True), lambda d: d.update(N=True), lambda d: d.update(T=True),
        lambda d: d["domain"].__setitem__(0, True), lambda d: d["params"]["gain"].__setitem__(0, True),
        lambda d: d.update(N=4.0)], ids=["format_version", "N", "T", "bound", "gain", "N float"])
    def test_booleans_are_not_numbers(self, good_file, edit):
        with pytest.raises(FittedNeuronError):
            FittedNeuron.load(edited(good_file, edit))

    @pytest.mark.parametrize("key", ["alpha", "dt"])
    def test_infinite_constants_are_rejected_at_load_naming_the_file(self, good_file, key):
        path = good_file.with_name("inf.json")
        path.write_text(good_file.read_text().replace(f'"{key}": ', f'"{key}": Infinity, "x{key}": '))
        with pytest.raises(FittedNeuronError, match=rf"inf.json: .*params.{key} must be a positive finite"):
            FittedNeuron.load(path)

    def test_time_constants_of_the_wrong_type_without_decay(self, good_file):
        def edit(d):
            d["params"].update(decay=False, tau_v="abc")
        with pytest.raises(FittedNeuronError, match="params.tau_v must be a list of 4 finite numbers"):
            FittedNeuron.load(edited(good_file, edit))

    @pytest.mark.parametrize("key, value", [("fit", [1, 2]), ("errors", "abc"), ("errors", None),
                                            ("errors", {"mse": "x"})])
    def test_fit_and_errors_of_the_wrong_type(self, good_file, key, value):
        with pytest.raises(FittedNeuronError, match=rf"edited.json: .*{key} must map"):
            FittedNeuron.load(edited(good_file, lambda d: d.update({key: value})))

    def test_unknown_expect_key(self, good_file):
        with pytest.raises(FittedNeuronError, match="expect: unknown field 'color'"):
            FittedNeuron.load(good_file, expect={"color": 1})

    @pytest.mark.parametrize("target", ["../../../../x/evil", "gelu/../tanh", "..", "/etc/passwd"])
    def test_path_traversal(self, target):
        with pytest.raises(ValueError, match="target must be a plain name"):
            load_fitted(target)

    def test_load_fitted_returns_independent_copies(self):
        first = load_fitted("tanh", "mbe", 4, 16)
        first.params["bias"] += 1
        first.params["weight"][0] = 99.0
        again = load_fitted("tanh", "mbe", 4, 16)
        assert again.params != first.params
        y = float(SpikingActivation.tanh(N=4, mode="simulate")(torch.tensor([0.5])))
        assert abs(y - math.tanh(0.5)) <= again.errors["max_abs"]

    def test_save_revalidates_edited_fields(self, tmp_path):
        fitted = load_fitted("gelu", "mbe", 4, 16)
        fitted.N = 3
        with pytest.raises(FittedNeuronError, match="params.gain must be a list of 3"):
            fitted.save(tmp_path / "bad.json")
        assert not list(tmp_path.iterdir())

    def test_failed_write_keeps_the_old_file(self, good_file):
        before = good_file.read_bytes()
        fitted = load_fitted("gelu", "mbe", 8, 16)  # a larger file than the limit below
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, old_limit[1]))
        try:
            with pytest.raises(OSError) as info:
                fitted.save(good_file)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        assert info.value.errno == errno.EFBIG
        assert good_file.read_bytes() == before and [p.name for p in good_file.parent.iterdir()] == ["gelu.json"]
        assert FittedNeuron.load(good_file).N == 4

    @FUZZ
    @given(path=st.lists(st.sampled_from(["params", "gain", "weight", "bias", "alpha", "dt", "decay", "tau_v",
                                           "domain", "N", "T", "fit", "errors", "kind", "target", 0, 1, 3]),
                         min_size=1, max_size=3),
           value=st.recursive(st.none() | st.booleans() | st.integers(-3, 20) | st.floats(-1e6, 1e6)
                              | st.sampled_from([float("nan"), float("inf"), 1e300]) | st.text(max_size=4),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                                          max_size=3), max_leaves=8))
    def test_fuzz_mutated_files_load_correctly_or_raise_fitted_neuron_error(self, tmp_path, path, value):
        data = json.loads((REPO / "spikingjelly_mbe/fitting/library/tanh-mbe-N2-T8.json").read_text())
        node = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else (node[key] if isinstance(node, list) and
                                                                  isinstance(key, int) and key < len(node) else None)
        last = path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
        file = tmp_path / "mutated.json"
        file.write_text(json.dumps(data))
        try:
            fitted = FittedNeuron.load(file)
        except FittedNeuronError as err:
            assert "mutated.json" in str(err)
            return
        y = fitted.node()(torch.linspace(-10, 10, 21))  # whatever loads, builds and runs
        assert bool(torch.isfinite(y).all())


# ---------------------------------------------------------------- 3. operators
def grads(fn, *inputs):
    """``(fn(*inputs), gradients of <fn, sin(arange)>)``: a fixed, position-dependent output gradient."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out.backward(torch.arange(out.numel(), dtype=out.dtype).sin().view(out.shape))
    return out, [x.grad for x in leaves]


@functools.lru_cache(maxsize=None)
def shared_op(cls, mode: str, *args):
    """One operator per configuration for the fuzzers (building the tables is the slow part)."""
    return cls(*args, mode=mode)


class TestOperators:
    def test_activation_gradient_is_the_targets(self):
        x = torch.randn(6, 7, generator=torch.Generator().manual_seed(6)) * 3
        op = SpikingActivation.gelu(T=8, N=2)
        y, (g,) = grads(op, x)
        _, (reference,) = grads(F.gelu, x)
        torch.testing.assert_close(g, reference)
        assert torch.equal(y.detach(), op(x))  # forward values are the spiking ones

    def test_unregistered_target_needs_a_reference(self):
        fitted = copy.deepcopy(load_fitted("tanh", "mbe", 2, 8))
        fitted.target = "my_tanh"
        with pytest.raises(ValueError, match="pass reference="):
            SpikingActivation(fitted)(torch.zeros(3, requires_grad=True))
        _, (g,) = grads(SpikingActivation(fitted, reference=torch.tanh), torch.zeros(3))
        torch.testing.assert_close(g, torch.arange(3.0).sin())  # tanh'(0) = 1

    def test_very_large_T_in_fast_mode(self):
        fitted = binary_identity_fit(70)
        with pytest.raises(ValueError, match="T=70; use mode='simulate'"):
            SpikingActivation(fitted)(torch.tensor([0.25]))
        y = SpikingActivation(fitted, mode="simulate")(torch.tensor([0.25, 0.7]))
        torch.testing.assert_close(y, torch.tensor([0.25, 0.7]), rtol=0, atol=2 ** -23)

    def test_edited_neuron_is_not_served_from_a_stale_table(self):
        op = SpikingActivation.gelu(T=8, N=2)
        x = torch.linspace(-5, 5, 101)
        before = op(x)
        op.node.weight.mul_(2)
        fast = op(x)
        op.mode = "simulate"
        torch.testing.assert_close(fast, op(x), rtol=0, atol=3e-6)  # fast = simulate, as documented
        torch.testing.assert_close(fast - float(op.node.bias), 2 * (before - float(op.node.bias)), rtol=0, atol=1e-5)

    @pytest.mark.parametrize("mode", ["fast", "simulate"])
    def test_product_and_matmul_gradients_are_the_float_ops(self, mode):
        g = torch.Generator().manual_seed(15)
        a, b, m = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(4, 5, generator=g)
        for op, ref, args in ((SpikingProduct(mode=mode, ranges=(4, 4)), torch.mul, (a, b)),
                              (SpikingProduct(mode=mode, ranges=(4, 4)), torch.mul, (a, b[:1])),
                              (SpikingMatmul(mode=mode, ranges=(4, 4)), torch.matmul, (a, m)),
                              (SpikingReLU(mode=mode, A=4.0), F.relu, (a,))):
            y, got = grads(op, *args)
            _, want = grads(ref, *args)
            for g1, g2 in zip(got, want):
                torch.testing.assert_close(g1, g2)
            with torch.no_grad():
                assert torch.equal(y.detach(), op(*args))

    def test_norm_and_softmax_gradients_include_the_affine_parameters(self):
        g = torch.Generator().manual_seed(33)
        ln = nn.LayerNorm(8)
        with torch.no_grad():
            ln.weight.normal_(generator=g)
            ln.bias.normal_(generator=g)
        x = torch.randn(3, 8, generator=g) * 2
        spiking = SpikingLayerNorm.from_float(ln)
        _, (gx,) = grads(spiking, x)
        spiking_w = ln.weight.grad.clone()
        ln.zero_grad()
        _, (rx,) = grads(ln, x)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(spiking_w, ln.weight.grad)
        rms = SpikingRMSNorm(8, weight=torch.rand(8, generator=g) + 0.5)
        _, (gr,) = grads(rms, x)
        _, (rr,) = grads(lambda t: F.rms_norm(t, (8,), rms.weight, rms.eps), x)
        torch.testing.assert_close(gr, rr)
        masked = x.clone()
        masked[1] = float("-inf")  # a fully masked row: output 0, gradient 0 (never NaN)
        y, (gs,) = grads(SpikingSoftmax(), masked)
        _, (rs,) = grads(lambda t: torch.softmax(t, -1), x)
        assert torch.equal(y[1].detach(), torch.zeros(8)) and torch.equal(gs[1], torch.zeros(8))
        torch.testing.assert_close(gs[[0, 2]], rs[[0, 2]])

    @pytest.mark.parametrize("ranges", [(1e-45, 1.0), (1.0, 1e39), (1.0, 2.0 ** 127)])
    def test_ranges_outside_float32(self, ranges):
        with pytest.raises(ValueError, match=r"ranges .* must lie in \[2\^-126, 2\^126\]"):
            SpikingProduct(ranges=ranges)

    def test_calibrating_on_empty_batches_only(self):
        op = SpikingMatmul()
        op(torch.zeros(0, 3), torch.zeros(3, 2))
        with pytest.raises(RuntimeError, match="saw only empty operands, so no data was observed"):
            op.finish_calibration()

    @pytest.mark.parametrize("mode", ["fast", "simulate"])
    @pytest.mark.parametrize("shape", [(2, 0), (0, 5), (0,)])
    def test_empty_softmax_rows(self, mode, shape):
        op = shared_op(SpikingSoftmax, mode)
        functional.reset_net(op)
        y = op(torch.zeros(shape))
        assert y.shape == torch.softmax(torch.zeros(shape), -1).shape and op.op_stats().spikes == 0

    def test_softmax_never_exceeds_one(self):
        x = torch.full((4, 64), -30.0)
        x[:, 0] = 30.0  # one-hot rows gave 1.000039
        outputs = [shared_op(SpikingSoftmax, "fast")(x), shared_op(SpikingSoftmax, "simulate")(x)]
        with kernels.disabled():
            outputs.append(shared_op(SpikingSoftmax, "fast")(x))
        for y in outputs:
            assert float(y.max()) <= 1.0 and float(y[:, 0].min()) >= 1.0 - 1e-4
        assert torch.equal(outputs[0], outputs[2])  # kernel = eager, bit for bit
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=3e-6)
        context = SpikingMatmul(ranges=(1.0, 1.0))
        context(outputs[0], torch.rand(64, 3))
        assert context.op_stats().clamped == 0

    @settings(max_examples=10, deadline=None)
    @given(rows=st.integers(0, 3), n=st.sampled_from([0, 1, 2, 9]), scale=st.sampled_from([1e-30, 1e-3, 1.0, 30.0, 1e4]),
           seed=st.integers(0, 2 ** 16), mode=st.sampled_from(["fast", "simulate"]))
    def test_fuzz_operators_match_the_float_ops(self, rows, n, scale, seed, mode):
        x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed)) * scale
        y = shared_op(SpikingSoftmax, mode)(x)
        assert y.shape == x.shape and bool((y <= 1).all())
        if x.numel():
            torch.testing.assert_close(y, torch.softmax(x, -1), rtol=0, atol=2e-3)
        A = float(x.abs().max()) if x.numel() and float(x.abs().max()) > 0 else scale
        product = SpikingProduct(mode=mode, ranges=(A, A))
        out = product(x, x.flip(0))
        torch.testing.assert_close(out, x * x.flip(0), rtol=0, atol=1e-4 * A * A)
        assert product.op_stats().clamped == 0
        if n:
            torch.testing.assert_close(shared_op(SpikingLayerNorm, mode, n)(x), F.layer_norm(x, (n,)), rtol=0, atol=2e-2)


# ---------------------------------------------------------------- 4. fused C kernels: the cached library
KERNEL_RUN = textwrap.dedent("""
    import ctypes, logging, os, subprocess, types, torch
    from pathlib import Path
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from spikingjelly_mbe import kernels
    from spikingjelly_mbe.ops import SpikingProduct

    def reload():
        kernels._tried, kernels._library = False, None
        return kernels.library()

    def product_error():
        a = torch.linspace(-1, 1, 64)
        return float((SpikingProduct(ranges=(1, 1))(a, a.flip(0)) - a * a.flip(0)).abs().max())

    loader, ctypes.CDLL = ctypes.CDLL, lambda path: types.SimpleNamespace(**{n: types.SimpleNamespace()
                                                                            for n in kernels.SIGNATURES})
    assert kernels.library() is not None  # the seeded copy verified, not loaded (a file once mapped
    ctypes.CDLL = loader                  # must not be edited in place)
    built = next((Path(os.environ["SPIKINGJELLY_MBE_CACHE"]) / "kernels").glob("spike_kernels-*.so"))
    good = built.read_bytes()
    built.write_bytes(good[:1000])  # the audit's truncations: SIGBUS inside ctypes.CDLL
    compile_library = kernels._compile

    def broken_compiler(compiler, target):
        raise subprocess.CalledProcessError(1, compiler)
    kernels._compile = broken_compiler  # and the rebuild fails: warn, run the eager path
    print("fallback", reload() is None, product_error() < 1e-3, flush=True)
    kernels._compile = compile_library
    built.write_bytes(good[:-1000])  # missing its tail: now rebuilt and loaded
    print("rebuilt", reload() is not None and kernels.verified(built), product_error() < 1e-3, flush=True)
""")


@pytest.fixture
def seeded_cache(tmp_path) -> Path:
    """``tmp_path/kernels`` holding a copy of this process' built library and its recorded sha256 (the
    file a first build in an empty cache writes): a test of what happens to a cached library starts
    there instead of compiling the kernels once more."""
    assert kernels.library() is not None, "no working C compiler"  # as the first build these tests ran asserted
    built = Path(kernels.library()._name)
    folder = tmp_path / "kernels"
    folder.mkdir()
    for source in (built, kernels._checksum_file(built)):
        shutil.copyfile(source, folder / source.name)
    assert kernels.verified(folder / built.name)
    return folder / built.name


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """``kernels.library()`` against an empty cache in ``tmp_path``; the process' own state comes back after."""
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)

    def reload():
        kernels._tried, kernels._library = False, None
        return kernels.library()
    return reload


def replace_file(path: Path, content: bytes) -> None:
    """Replace ``path`` by a new file (a library that may be mapped is never edited in place)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(content)
    os.replace(fresh, path)


class TestKernelCache:
    @pytest.mark.slow  # rebuilds the kernels once in a fresh interpreter
    def test_truncated_library_is_rebuilt_or_skipped_never_loaded(self, seeded_cache, tmp_path):
        environment = {**os.environ, "SPIKINGJELLY_MBE_CACHE": str(tmp_path)}
        result = subprocess.run([sys.executable, "-c", KERNEL_RUN], cwd=REPO, env=environment, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]  # was: Fatal Python error: Bus error
        assert result.stdout.splitlines() == ["fallback True True", "rebuilt True True"]
        assert result.stderr.count("do not match the sha256") == 2 and "eager PyTorch path" in result.stderr

    @pytest.mark.slow
    @pytest.mark.parametrize("replacement", ["other file", "fast-math build"])
    def test_replaced_library_is_detected_and_rebuilt(self, seeded_cache, fresh_kernels, tmp_path, replacement,
                                                             caplog):
        library = seeded_cache
        good = library.read_bytes()
        if replacement == "other file":
            replace_file(library, Path(sys.executable).resolve().read_bytes())
        else:  # a loadable library with every kernel, built with other flags (unoptimised: a build in 1 s, not 10)
            flags = [f for f in kernels.FLAGS if f not in ("-ffp-contract=off", "-O3")] + ["-O0", "-ffast-math"]
            compiler = os.environ.get("CC") or "cc"
            subprocess.run([compiler, *flags, str(kernels.SOURCE), "-o", str(tmp_path / "fast.so"), "-lm"], check=True)
            replace_file(library, (tmp_path / "fast.so").read_bytes())
        with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.kernels"):
            assert fresh_kernels() is not None
        assert "do not match the sha256" in caplog.text and kernels.verified(library)
        assert library.read_bytes() != (Path(sys.executable).resolve().read_bytes() if replacement == "other file"
                                        else (tmp_path / "fast.so").read_bytes())
        assert len(library.read_bytes()) == len(good)

    @pytest.mark.parametrize("blocker", ["kernels is a file", "cache root is a file"])
    def test_unusable_cache_folder_warns_and_runs_eager(self, fresh_kernels, tmp_path, blocker, monkeypatch,
                                                             caplog):
        root = tmp_path / "cache"
        if blocker == "kernels is a file":
            root.mkdir()
            (root / "kernels").write_text("")
        else:
            root.write_text("")
        monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(root))
        with pytest.raises(CacheDirError, match="set \\$SPIKINGJELLY_MBE_CACHE to a writable folder"):
            cache_dir("kernels")
        a = torch.linspace(-1, 1, 64)
        with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.kernels"):
            y = SpikingProduct(ranges=(1, 1))(a, a)  # the first forward runs (eager) instead of raising
        assert "cannot be created" in caplog.text and "eager PyTorch path" in caplog.text
        torch.testing.assert_close(y, a * a, rtol=0, atol=1e-4)

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
    def test_read_only_cache_root(self, fresh_kernels, tmp_path, caplog):
        tmp_path.chmod(0o555)
        try:
            with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.kernels"):
                assert fresh_kernels() is None
            assert "cannot be created" in caplog.text
        finally:
            tmp_path.chmod(0o755)


# ---------------------------------------------------------------- 5. converted models (ops-side rows C23, C27)
@pytest.mark.slow
class TestConvertedModels:
    def test_converted_bert_gets_straight_through_gradients(self):
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
        from spikingjelly_mbe.ops import SpikingWeightInput
        ann = build("bert", layers=1, hidden=32, heads=4, seed=0)
        batch = make_batch("bert", 2, 12, seed=1)
        snn = convert(ann, T=16, calib_data=[batch])
        for model in (ann, snn):
            model.zero_grad()
            main_output(model(**batch)).square().sum().backward()
        ann_grads = dict(ann.named_parameters())
        largest = max(float(p.grad.norm()) for p in ann.parameters() if p.grad is not None)
        # a weight layer driven by input spikes holds the ANN's layer as .layer
        wrapped = [path for path, m in snn.named_modules() if isinstance(m, SpikingWeightInput)]
        assert wrapped
        checked = 0
        for name, p in snn.named_parameters():
            for path in wrapped:
                name = name.replace(f"{path}.layer.", f"{path}.") if name.startswith(f"{path}.layer.") else name
            reference = ann_grads[name].grad if name in ann_grads else None
            # key biases (and the like) get no gradient in exact arithmetic: skip rounding noise
            if reference is not None and float(reference.norm()) > 1e-3 * largest and "classifier" not in name:
                assert p.grad is not None, name
                cosine = F.cosine_similarity(p.grad.flatten(), ann_grads[name].grad.flatten(), dim=0)
                assert cosine > 0.9, (name, float(cosine))
                checked += 1
        assert checked >= 10

    def test_gpt2_forward_has_no_spurious_clamp(self, caplog):
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.conversion.zoo import build, make_batch
        ann = build("gpt2", layers=1, hidden=32, heads=4, seed=0)
        batch = make_batch("gpt2", 2, 12, seed=1)
        snn = convert(ann, T=16, calib_data=[batch])
        contexts = [m for n, m in snn.named_modules() if n.endswith("context")]
        # probabilities lie in [0, 1]: the range is 1 (widened by the precision budget's step, never narrowed)
        assert contexts and all(m.ranges[0] >= 1.0 for m in contexts)
        full = convert(ann, T=16, calib_data=[batch], budget=None)
        assert all(m.ranges[0] == 1.0 for n, m in full.named_modules() if n.endswith("context"))
        with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.ops"), torch.no_grad():
            snn(**batch)
            full(**batch)
        assert "of operand a beyond +-1 " not in caplog.text
        assert all(m.op_stats().clamped == 0 for m in contexts)

    @pytest.mark.parametrize("calib_data, message", [
        (torch.randn(2, 8), "not a single batch: pass \\[batch\\]"),
        ({"input_ids": torch.zeros(2, 4, dtype=torch.long)}, "not a single batch: pass \\[batch\\]"),
        (5, "calib_data must be an iterable of batches .* \\(T is a keyword: convert\\(model, calib_data, T=5\\)\\)"),
        (object(), "calib_data must be an iterable of batches .* got object$"),
    ])
    def test_calib_data_of_the_wrong_kind(self, calib_data, message):
        from spikingjelly_mbe import convert
        with pytest.raises(TypeError, match=message):
            convert(nn.Sequential(nn.Linear(8, 8), nn.GELU()), calib_data=calib_data)

    @pytest.mark.parametrize("fallback", [False, True])
    def test_converting_a_converted_model(self, fallback):
        from spikingjelly_mbe import convert
        model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        snn = convert(model, calib_data=[torch.randn(4, 8)])
        with pytest.raises(ValueError, match="already"):
            convert(snn, calib_data=[torch.randn(4, 8)], allow_float_fallback=fallback)

    def test_gpt2_that_torch_fx_cannot_trace_converts_fully(self):
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.conversion.zoo import build, make_batch
        ann = build("gpt2", layers=1, hidden=16, heads=2)
        snn = convert(ann, calib_data=[make_batch("gpt2", 2, 8)])
        assert snn.spiking_report.fully_spiking


# ---------------------------------------------------------------- 6. EnergyMeter and the benchmark's --out
class TestEnergyMeter:
    def model(self, T: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 4), SpikingActivation.gelu(T=T, N=4), SpikingProduct(T=T, ranges=(8, 8)))

    def test_meter_at_another_T(self):
        with pytest.raises(ValueError, match=r"T=8, but the model's spiking operators run at T=\[16\]"):
            EnergyMeter(self.model(16), 8)

    def test_meter_on_an_unconverted_model(self):
        with pytest.raises(ValueError, match="no spiking operators.*convert it first"):
            EnergyMeter(nn.Sequential(nn.Linear(4, 4), nn.GELU()), 16)

    @FUZZ
    @given(model_T=st.sampled_from([8, 10, 12, 16]), meter_T=st.integers(1, 24))
    def test_fuzz_meter_accepts_exactly_the_models_T(self, model_T, meter_T):
        model = nn.Sequential(nn.Linear(4, 4), SpikingActivation.gelu(T=model_T, N=4))
        if model_T != meter_T:
            with pytest.raises(ValueError, match=f"T={meter_T}, but"):
                EnergyMeter(model, meter_T)
            return
        with torch.no_grad(), EnergyMeter(model, meter_T) as meter:
            model(torch.ones(2, 4))
        assert meter.total().neurons == 8 + 8  # the linear layer's inputs and the activation's

    @pytest.mark.slow
    def test_ops_bench_out_creates_missing_folders(self, tmp_path, script_main):
        out = tmp_path / "new" / "deeper"
        script_main(BENCHMARKS / "ops_bench.py", "--part", "errors", "--T", "8", "--split-bits", "3", "--out", str(out))
        assert "softmax" in (out / "errors.md").read_text() and (out / "errors.png").stat().st_size > 0


# ---------------------------------------------------------------- 7. ECMT conversions
class TestECMTConversion:
    @staticmethod
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)), [torch.randn(4, 8)]

    def test_T_given_twice_differently_is_an_error_naming_T(self):
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.ecmt import ECMTSettings
        ann, calib = self.mlp()
        with pytest.raises(ValueError, match="T is given twice"):
            convert(ann, calib, T=16, method="ecmt", ecmt=ECMTSettings(T=4))
        assert convert(ann, calib, ecmt=ECMTSettings(T=4)).T == 4  # one source: the settings' T
        assert convert(ann, calib, T=4, ecmt=ECMTSettings(T=4)).T == 4
        with pytest.raises(ValueError, match="method='mbe'"):
            convert(ann, calib, method="mbe", ecmt=ECMTSettings(T=4))

    @pytest.mark.parametrize("option, value", [("code", "ternary"), ("N", 0), ("budget", -1.0), ("split_bits", 2),
                                               ("center_inputs", False), ("activation_N", 4)])
    def test_an_option_ecmt_does_not_use_raises_naming_it(self, option, value):
        from spikingjelly_mbe import convert
        ann, calib = self.mlp()
        with pytest.raises(ValueError, match=f"method='ecmt' does not use {option}"):
            convert(ann, calib, method="ecmt", **{option: value})

    @pytest.mark.parametrize("option, value", [("n", 4), ("percentile", 99.0)])
    def test_an_option_mbe_does_not_use_raises_naming_it(self, option, value):
        from spikingjelly_mbe import convert
        ann, calib = self.mlp()
        with pytest.raises(ValueError, match=f"method='mbe' does not use {option}"):
            convert(ann, calib, **{option: value})

    def test_generate_on_an_ecmt_causal_lm_works_with_and_without_the_kv_cache(self):
        """Greedy generation gives the tokens of a loop over the whole sequence, cached or not."""
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.conversion.zoo import build, make_batch
        ann = build("llama_lm", layers=1, hidden=16, heads=2)
        snn = convert(ann, [make_batch("llama_lm", 2, 8)], T=2, method="ecmt")
        ids = make_batch("llama_lm", 2, 6, seed=3)["input_ids"]
        mask = torch.ones_like(ids)
        with torch.no_grad():
            loop = ids
            for _ in range(3):
                logits = snn(input_ids=loop, attention_mask=torch.ones_like(loop)).logits
                loop = torch.cat([loop, logits[:, -1].argmax(-1, keepdim=True)], 1)
            for use_cache in (False, True):
                out = snn.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, use_cache=use_cache,
                                   pad_token_id=0)
                assert torch.equal(out, loop), use_cache

    def test_a_cache_filled_outside_the_stepped_network_is_refused_naming_the_fix(self):
        from spikingjelly_mbe import convert
        from spikingjelly_mbe.conversion.zoo import build, make_batch
        ann = build("llama_lm", layers=1, hidden=16, heads=2)
        snn = convert(ann, [make_batch("llama_lm", 2, 8)], T=2, method="ecmt")
        ids = make_batch("llama_lm", 2, 6, seed=3)["input_ids"]
        with torch.no_grad():
            cache = ann(input_ids=ids, use_cache=True).past_key_values
            with pytest.raises(NotImplementedError, match="use_cache=False"):
                snn(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
