"""Arithmetic of activations (division, roots, powers, vector norms, addmm/baddbmm, einsum), per-group
norms and element-wise functions fitted on demand: each operator against its float op and its own
simulation, and small models calling them converted strictly."""
import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.report import UnsupportedNonlinearityError
from spikingjelly_mbe.fitting import library
from spikingjelly_mbe.fitting.routine import fit_neuron
from spikingjelly_mbe.ops import (FittedOnDemand, SpikingActivation, SpikingEinsum, SpikingGroupNorm, SpikingMatmul,
                                  SpikingRoot, collect_stats)
from spikingjelly_mbe.ops.on_demand import MAX_FIT_ERROR, SMOOTHNESS_T, NotSmooth, TailedActivation, linear_tails

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def quiet(caplog):
    """Random tiny models clamp a few operands, and fits on first use say so: captured, not printed."""
    caplog.set_level(logging.ERROR, logger="spikingjelly_mbe")


def both_modes(op, *inputs):
    op.mode = "fast"
    fast = op(*inputs)
    op.mode = "simulate"
    slow = op(*inputs)
    op.mode = "fast"
    return fast, slow


@pytest.mark.parametrize("power, reference", [(-1.0, torch.reciprocal), (-0.5, torch.rsqrt), (0.5, torch.sqrt)])
def test_roots_match_torch_and_their_simulation(power, reference):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g) * torch.exp2(torch.randint(-6, 7, (40, 16), generator=g).float())
    x = x if power == -1.0 else x.abs()
    op = SpikingRoot(power, T=16)
    fast, slow = both_modes(op, x)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=0)
    relative = ((fast - reference(x)) / reference(x)).abs().max()
    assert relative < 2e-3  # the mantissa's 16 digits and its N=4 neuron, whatever the exponent
    stats = op.op_stats()
    assert stats.spikes > 0 and stats.sops >= stats.spikes and stats.ann_flops == 2 * 70 * x.numel()
    zeros = torch.tensor([0.0, 4.0])
    assert op(zeros)[0] == reference(zeros)[0]  # inf for 1/0 and 1/sqrt(0), 0 for sqrt(0), as torch


def test_square_root_of_negative_inputs_is_a_counted_clamp():
    op = SpikingRoot(0.5, T=12)
    out = op(torch.tensor([-1.0, 4.0]))
    assert out[0] == 0 and abs(float(out[1]) - 2.0) < 1e-2 and op.op_stats().clamped == 1


@pytest.mark.parametrize("equation, a, b", [("bhid,bhjd->bhij", (2, 2, 5, 4), (2, 2, 6, 4)),
                                            ("bij,bjk", (2, 3, 4), (2, 4, 5)), ("i,j->ij", (4,), (5,)),
                                            ("...d,...d->...", (3, 4), (3, 4))])
def test_einsum_matches_torch_and_its_simulation(equation, a, b):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(a, generator=g), torch.randn(b, generator=g)
    op = SpikingEinsum(equation, T=16, ranges=(4.0, 4.0), budget=None)
    fast, slow = both_modes(op, a, b)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    terms = math.prod(dict(zip("".join(s for s in equation.partition("->")[0].split(",")), [*a.shape, *b.shape])).values()) \
        if "..." not in equation else a.numel()
    # each product term carries at most both operands' coding errors (range 4, T = 16 digits)
    error = 4 * 2.0 ** -16 * (a.abs().max() + b.abs().max() + 4 * 2.0 ** -16)
    assert (fast - torch.einsum(equation, a, b)).abs().max() <= terms * error


def test_einsum_counts_what_the_matrix_product_counts():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 5, 7, generator=g), torch.randn(3, 7, 4, generator=g)
    einsum, matmul = SpikingEinsum("bij,bjk->bik", T=12, ranges=(4.0, 4.0)), SpikingMatmul(T=12, ranges=(4.0, 4.0))
    for mode in ("fast", "simulate"):
        einsum.mode = matmul.mode = mode
        torch.testing.assert_close(einsum(a, b), matmul(a, b), rtol=1e-5, atol=1e-5)
    assert einsum.op_stats() == matmul.op_stats()


@pytest.mark.parametrize("groups", [2, 8, None])
def test_group_norm_matches_torch_and_its_simulation(groups):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 5, 3, generator=g) * 2 + 1
    weight, bias = torch.randn(8, generator=g), torch.randn(8, generator=g)
    op = SpikingGroupNorm(8, groups, weight, bias, 1e-5, T=16)
    fast, slow = both_modes(op, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    reference = F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5) if groups is None else \
        F.group_norm(x, groups, weight, bias, 1e-5)
    assert (fast - reference).abs().max() < 3e-3
    assert op.op_stats().spikes > 0


class Arithmetic(nn.Module):
    """Every arithmetic call of activations item 2 lists, once."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.gn, self.inorm = nn.GroupNorm(2, 8), nn.InstanceNorm1d(8, affine=True)
        self.bn = nn.BatchNorm1d(8, track_running_stats=False)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        positive = b * b + 0.5
        out = a / positive + 2.0 / positive + torch.sqrt(positive) + torch.rsqrt(positive) + positive.reciprocal()
        out = out + a ** 3 * 0.1 + positive ** 1.5 * 0.1 + positive ** -2
        out = out + torch.linalg.vector_norm(a, dim=-1, keepdim=True) + a.norm(dim=-1, keepdim=True)
        scores = torch.baddbmm(torch.ones(1, 1, 1), a, b.transpose(1, 2), beta=0.5, alpha=0.25)
        out = out + scores @ a * 0.1 + torch.einsum("bik,bjk->bij", a, b) @ b * 0.1
        out = out + torch.addmm(torch.zeros(6), a[0], b[0].t()) @ b[0] * 0.1
        channels = out.transpose(1, 2)
        return (self.gn(channels) + self.inorm(channels) + self.bn(channels)
                + F.group_norm(channels, 4) + F.instance_norm(channels)).transpose(1, 2)


def test_arithmetic_of_activations_converts_strictly_and_spikes():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    ann = Arithmetic().eval()
    batches = [torch.randn(2, 6, 8, generator=g) for _ in range(2)]
    snn = convert(ann, T=16, calib_data=batches)
    assert snn.mbe_report.fully_spiking
    sites = {e.path.rpartition(".")[2].rstrip("0123456789") for e in snn.mbe_report.replaced}
    assert {"spiking_quotient", "spiking_rdivide", "spiking_sqrt", "spiking_rsqrt", "spiking_reciprocal", "spiking_power", "spiking_vector_norm",
            "spiking_add_matmul", "spiking_einsum", "spiking_group_norm", "spiking_instance_norm"} <= sites
    replaced = {e.path: e.target for e in snn.mbe_report.replaced}
    assert replaced["gn"] == replaced["inorm"] == replaced["bn"] == "SpikingGroupNorm"  # module catalog entries
    x = torch.randn(2, 6, 8, generator=g)
    with torch.no_grad():
        reference, out = ann(x), snn(x)
    cosine = F.cosine_similarity(reference.flatten(), out.flatten(), dim=0)
    assert cosine > 0.999
    silent = [path for path, stats in collect_stats(snn).items() if stats.spikes == 0]
    assert not silent, f"operators that did not spike: {silent}"


def test_a_constant_over_an_activation_is_a_spiking_reciprocal():
    class Inverse(nn.Module):
        def forward(self, x):
            return 1.0 / (x * x + 1.0)

    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 4), Inverse()).eval()
    snn = convert(model, T=16, calib_data=[torch.randn(8, 4, generator=g)])
    x = torch.randn(8, 4, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(snn(x), model(x), rtol=2e-3, atol=2e-3)
    assert any(e.path.endswith("spiking_rdivide0") for e in snn.mbe_report.replaced)


# ---- element-wise functions fitted on demand --------------------------------------------------

class SinTimesX(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return torch.sin(h) * h


class UserMish(nn.Module):
    """A user's own Mish: a class no table lists, written with functional calls."""

    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


@pytest.mark.slow
def test_user_functions_convert_with_no_table_entry_and_their_fits_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    fits = []
    monkeypatch.setattr(library, "_fitter", [lambda *a, **k: fits.append(a[0].name) or fit_neuron(*a, **k)])
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(0)
    model = nn.Sequential(SinTimesX(), nn.Linear(8, 8), UserMish()).eval()
    batches = [torch.randn(16, 8, generator=g) for _ in range(2)]
    snn = convert(model, T=16, calib_data=batches)
    assert snn.mbe_report.fully_spiking
    fitted = [m for m in snn.modules() if isinstance(m, FittedOnDemand)]
    assert sorted(m.name.split("_")[0] for m in fitted) == ["sin", "softplus"]
    assert not any(isinstance(v, torch.Tensor) for m in fitted for v in (*m.fn.args, *dict(m.fn.kwargs).values()))
    softplus = next(m for m in fitted if m.name.startswith("softplus"))
    assert isinstance(softplus.spiking, TailedActivation)  # a linear tail: rectifier plus fitted residual
    assert isinstance(next(m for m in fitted if m.name == "sin").spiking, SpikingActivation)
    x = torch.randn(16, 8, generator=g)
    with torch.no_grad():
        reference, out = model(x), snn(x)
    assert F.cosine_similarity(reference.flatten(), out.flatten(), dim=0) > 0.999
    first = list(fits)
    assert len(first) == 2  # sin, and softplus's residual
    convert(model, T=16, calib_data=batches)
    assert fits == first, "the second conversion refitted instead of loading the cached fits"


def test_a_function_with_linear_tails_is_a_rectifier_plus_a_fitted_residual():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(64, 8, generator=g) * 2
    op = FittedOnDemand(F.hardswish, "hardswish", T=16, N=8)
    torch.testing.assert_close(op(x), F.hardswish(x))  # calibrating: the float function
    op.set_ranges(op.finish_calibration())
    assert isinstance(op.spiking, TailedActivation)
    tails, residual = op.spiking.tails, op.spiking.residual
    assert tails.knots == [(0.0, 1.0)] and residual.fitted.domain == (-3.0, 3.0)  # hardswish - relu lives on [-3, 3]
    fast, slow = both_modes(op.spiking, x)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    coding = 4.0 * 2.0 ** -16  # the rectifier's range (at most 4 here) over 2^T
    assert (fast - F.hardswish(x)).abs().max() <= residual.fitted.errors["max_abs"] + coding
    wide = torch.tensor([-40.0, 40.0])  # beyond the domain: the tails continue linearly (40 takes the overflow shift)
    assert (op(wide) - F.hardswish(wide)).abs().max() <= residual.fitted.errors["max_abs"] + 40 * 2.0 ** -15


@pytest.mark.slow
def test_a_smooth_function_at_few_digits_keeps_its_coarse_fit_and_a_step_is_refused(tmp_path, monkeypatch):
    """LeViT's hardswish at T=4: its residual's fit errs beyond MAX_FIT_ERROR of the residual's range, as every
    4-digit fit of it does, but at SMOOTHNESS_T it fits: kept, and said in ``coarse``. A step errs at any T:
    refused, at T=4 after the fit at SMOOTHNESS_T, at SMOOTHNESS_T at once."""
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(8)
    x = torch.rand(64, 8, generator=g) * 6 - 3
    op = FittedOnDemand(F.hardswish, "hardswish", T=4, N=8)
    op(x)
    op.set_ranges(op.finish_calibration())
    residual = op.spiking.residual.fitted
    assert residual.T == 4 and residual.errors["max_abs"] > MAX_FIT_ERROR * 0.375  # hardswish - relu: [-0.375, 0]
    assert op.coarse.startswith(f"hardswish_residual fitted on (-3.0, 3.0) at T=4 errs by up to "
                                f"{residual.errors['max_abs']:.3g} and at T={SMOOTHNESS_T} by ")
    fast, slow = both_modes(op.spiking, x)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    coding = 3.0 / (2 * 15)  # the rectifier's range (its largest input, below 3 here) over 2 (2^T - 1)
    assert (fast - F.hardswish(x)).abs().max() <= residual.errors["max_abs"] + coding + 1e-6

    for T, fitted_at in ((4, rf"at T=4 errs by up to \S+ and at T={SMOOTHNESS_T} by"),
                         (SMOOTHNESS_T, rf"at T={SMOOTHNESS_T} errs by up to \S+, over")):
        step = FittedOnDemand(lambda v: (v > 0.5).to(v.dtype), "step", T=T, N=8)
        step(x)
        with pytest.raises(NotSmooth, match=rf"step: not smooth enough to fit: an MBE neuron \(N=8\) fitted on .* "
                                            rf"{fitted_at}.* a step or rounding function"):
            step.set_ranges(step.finish_calibration())
        assert step.refused.startswith("not smooth enough") and step.spiking is None
        assert torch.equal(step(x), (x > 0.5).to(x.dtype))  # the float function, which conversion reports


def test_a_step_function_in_a_model_is_refused_by_strict_conversion_and_kept_in_float_under_fallback(tmp_path,
                                                                                                    monkeypatch):
    """``torch.sign`` inside a model: strict conversion raises naming the call and why no neuron fits it;
    ``allow_float_fallback=True`` converts, lists it in ``fallback`` (not in ``replaced``), is not fully
    spike-driven, and computes the sign in float, of the spiking weight layer's output."""
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))

    class Signed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.sign(self.a(x)))

    torch.manual_seed(0)
    ann = Signed().eval()
    batches = [torch.randn(16, 8) for _ in range(2)]
    with pytest.raises(UnsupportedNonlinearityError, match=r"<root>: sign \(not smooth enough to fit: .* at T=8 errs"):
        convert(ann, batches, T=8)
    snn = convert(ann, batches, T=8, allow_float_fallback=True)
    report = snn.spiking_report
    assert [(e.source, e.target) for e in report.fallback] == [("sign", "float")] and not report.fully_spiking
    assert report.fallback[0].note.startswith("not smooth enough to fit: an MBE neuron (N=8) fitted on")
    assert [e.path for e in report.replaced] == ["a", "b"]
    with torch.no_grad():
        x = torch.randn(32, 8)
        codes = snn.a(x)  # the spiking weight layer's output, signed in float as the ANN does
        torch.testing.assert_close(snn(x), snn.b(torch.sign(codes)), rtol=0, atol=0)


def test_linear_tails_are_found_where_the_function_has_them():
    assert linear_tails(F.softplus, -8.0, 8.0) is not None and linear_tails(F.hardswish, -4.0, 4.0) is not None
    tails = linear_tails(torch.abs, -2.0, 2.0)
    assert tails is not None and abs(tails.t) < 1e-6 and abs(tails.w - 2.0) < 1e-6
    assert linear_tails(torch.erf, -4.0, 4.0) is None and linear_tails(torch.sin, -4.0, 4.0) is None


def test_a_function_outside_its_domain_and_a_call_that_is_not_elementwise_are_refused():
    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)

    class Running(nn.Module):
        def forward(self, x):
            return torch.logcumsumexp(x, dim=-1)

    g = torch.Generator().manual_seed(7)
    batches = [torch.randn(8, 4, generator=g)]
    with pytest.raises(UnsupportedNonlinearityError, match=r"1: log \(inputs outside its domain\)"):
        convert(nn.Sequential(nn.Linear(4, 4), Log()).eval(), T=8, calib_data=batches)
    with pytest.raises(UnsupportedNonlinearityError, match=r"1: logcumsumexp"):
        convert(nn.Sequential(nn.Linear(4, 4), Running()).eval(), T=8, calib_data=batches)
