"""``from_float``: each spiking operator built from the float module or function it replaces (as
torch.ao's ``from_float``), computing what that float op computes; conversion reads float modules as
``from_float`` does, so both give the same operator."""
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers.activations as hf

from spikingjelly_mbe import convert
from spikingjelly_mbe.activations import get_activation
from spikingjelly_mbe.ecmt.expectation import ProductCompensation
from spikingjelly_mbe.ecmt.multi_threshold import MTLinearInput
from spikingjelly_mbe.mbe import OpSettings
from spikingjelly_mbe.ops import (FittedOnDemand, RectifiedActivation, SpikingActivation, SpikingGroupNorm,
                                  SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingRMSNorm, SpikingSoftmax,
                                  SpikingWeightInput)
from spikingjelly_mbe.ops.products import SpikingEinsum
from spikingjelly_mbe.ops.rectifier import PiecewiseLinear, SpikingMaxPool2d, SpikingReLU
from spikingjelly_mbe.ops.roots import SpikingRoot
from spikingjelly_mbe.ops.routing import SpikingTopK

torch.set_num_threads(1)


def x_of(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 2


@pytest.mark.parametrize("float_op, reference", [
    (nn.GELU(), F.gelu), (F.gelu, F.gelu), (hf.GELUActivation(), F.gelu),
    (nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")), (nn.SiLU(), F.silu), (torch.tanh, torch.tanh),
])
def test_a_fitted_activation_from_its_module_or_function_is_its_fit_within_the_fits_error(float_op, reference):
    op = SpikingActivation.from_float(float_op, T=8, N=4)
    x = x_of(4096).clamp(*op.fitted.domain)
    with torch.no_grad():
        error = float((op(x) - reference(x)).abs().max())
    assert op.fitted.T == 8 and op.fitted.N == 4 and 0 < error <= op.fitted.errors["max_abs"] * 1.05


def test_a_piecewise_linear_activation_from_its_module_is_its_exact_rectifier_form():
    op = PiecewiseLinear.from_float(nn.LeakyReLU(0.1), T=16)
    x = x_of(256, 8)
    with torch.no_grad():
        op(x)  # the calibration forward of its rectifier (float)
        for m in op.modules():
            if isinstance(m, SpikingReLU):
                m.set_ranges(m.finish_calibration())
        error = float((op(x) - F.leaky_relu(x, 0.1)).abs().max())
    assert error <= float(x.abs().max()) * 2 ** -15


@pytest.mark.parametrize("build, reference", [
    (lambda: SpikingSoftmax.from_float(nn.Softmax(-1), T=16), lambda x: torch.softmax(x, -1)),
    (lambda: SpikingSoftmax.from_float(F.softmax, 1, T=16), lambda x: torch.softmax(x, 1)),
    (lambda: SpikingRoot.from_float(torch.rsqrt, T=16), torch.rsqrt),
])
def test_softmax_and_roots_from_their_float_ops_compute_them(build, reference):
    op = build()
    x = x_of(6, 32)
    x = x.abs() + 0.5 if isinstance(op, SpikingRoot) else x
    with torch.no_grad():
        out, ref = op(x), reference(x)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-3


class HFRMSNorm(nn.Module):
    """The shape of transformers' LlamaRMSNorm: ``weight`` and ``variance_epsilon``."""

    def __init__(self, hidden, eps):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.rand(hidden) + 0.5), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


@pytest.mark.parametrize("cls, float_op, call", [
    (SpikingLayerNorm, nn.LayerNorm(16), lambda m: (F.layer_norm, (16,), m.weight, m.bias, m.eps)),
    (SpikingRMSNorm, nn.RMSNorm(16), lambda m: (F.rms_norm, (16,), m.weight, None)),
    (SpikingRMSNorm, HFRMSNorm(16, 1e-6), lambda m: (F.rms_norm, (16,), m.weight, 1e-6)),
])
def test_a_norm_from_its_module_and_from_its_function_call_is_the_same_operator(cls, float_op, call):
    """The module's own weight and bias (the very tensors), its eps; ``F.layer_norm``/``F.rms_norm``
    with the same arguments gives the same numbers, and both compute the module's norm."""
    with torch.no_grad():
        float_op.weight.normal_(generator=torch.Generator().manual_seed(1))
    from_module, from_call = cls.from_float(float_op, T=12), cls.from_float(*call(float_op), T=12)
    assert from_module.weight is float_op.weight and from_module.eps == from_call.eps
    x = x_of(5, 16)
    with torch.no_grad():
        out = from_module(x)
        torch.testing.assert_close(out, from_call(x), rtol=0, atol=0)
        assert float((out - float_op(x)).abs().max() / float_op(x).abs().max()) <= 1e-3


def test_a_norm_conversion_builds_equals_the_one_from_float_builds():
    """Conversion reads a LayerNorm module as ``from_float`` does: the site's operator and
    ``SpikingLayerNorm.from_float(ln, ...)`` with the same settings give the same bits."""
    ann = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    with torch.no_grad():
        ann[1].weight.normal_(generator=torch.Generator().manual_seed(2))
        ann[1].bias.normal_(generator=torch.Generator().manual_seed(3))
    x = x_of(32, 8)
    snn = convert(ann, [x], T=12)
    twin = SpikingLayerNorm.from_float(ann[1], T=12)
    h = ann[0](x)
    with torch.no_grad():
        torch.testing.assert_close(snn[1](h), twin(h), rtol=0, atol=0)


def test_operators_of_two_activations_and_weight_layers_from_their_float_ops():
    layer = nn.Linear(4, 3)
    assert SpikingWeightInput.from_float(layer, T=8).layer is layer
    assert isinstance(SpikingProduct.from_float(operator.mul), SpikingProduct)
    assert isinstance(SpikingMatmul.from_float(torch.matmul, T=8), SpikingMatmul)
    assert SpikingEinsum.from_float(torch.einsum, "bij,bjk->bik").equation == "bij,bjk->bik"
    assert [SpikingRoot.from_float(f).power for f in (torch.reciprocal, torch.rsqrt, torch.sqrt)] == [-1.0, -0.5, 0.5]
    pool = SpikingMaxPool2d.from_float(nn.MaxPool2d(3, 2, 1))
    assert (pool.kernel_size, pool.stride, pool.padding) == ((3, 3), (2, 2), (1, 1))
    assert isinstance(SpikingReLU.from_float(F.relu), SpikingReLU)


def calibrated(op, x):
    """``op`` after one calibration forward on ``x`` and the ranges it observed."""
    with torch.no_grad():
        op(x)
    for m in op.modules():
        if getattr(m, "calibrating", False):
            m.set_ranges(m.finish_calibration())
    return op


@pytest.mark.parametrize("float_op, reference", [
    (nn.GELU(), F.gelu), (get_activation("gelu"), F.gelu), (F.silu, F.silu),
    (nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
])
def test_a_rectified_activation_from_its_float_op_is_relu_plus_the_fitted_residual(float_op, reference):
    """Within the residual's fit error plus one code step of the rectifier's widest channel."""
    T = 8
    op = RectifiedActivation.from_float(float_op, T=T, N=4)
    x = x_of(512, 16)
    calibrated(op, x)
    with torch.no_grad():
        error = float((op(x) - reference(x)).abs().max())
    step = float(op.rectifier.channel_ranges.max()) / (2 ** T - 1)
    assert op.residual.fitted.T == T and op.residual.fitted.N == 4
    assert 0 < error <= op.residual.fitted.errors["max_abs"] * 1.05 + step


def test_the_factorys_activation_is_the_one_from_float_builds():
    """MBE's builder goes through ``from_float``: the same bits as the operator built from ``nn.GELU()``."""
    x = x_of(256, 8)
    built = calibrated(OpSettings(T=8).activation(get_activation("gelu"), {}), x)
    twin = calibrated(RectifiedActivation.from_float(nn.GELU(), T=8, N=OpSettings().activation_bases), x)
    with torch.no_grad():
        torch.testing.assert_close(built(x), twin(x), rtol=0, atol=0)


@pytest.mark.parametrize("module, reference", [
    (nn.GroupNorm(2, 8), lambda m, x: F.group_norm(x, 2, m.weight, m.bias, m.eps)),
    (nn.InstanceNorm2d(8, affine=True), lambda m, x: F.instance_norm(x, weight=m.weight, bias=m.bias, eps=m.eps)),
    (nn.BatchNorm2d(8, track_running_stats=False),
     lambda m, x: F.batch_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)),
])
def test_a_group_norm_from_its_module_computes_it_and_equals_the_one_from_its_function(module, reference):
    with torch.no_grad():
        module.weight.normal_(generator=torch.Generator().manual_seed(4))
        module.bias.normal_(generator=torch.Generator().manual_seed(5))
    op = SpikingGroupNorm.from_float(module, T=16)
    assert op.weight is module.weight and op.eps == module.eps
    x = x_of(2, 8, 5, 3) + 1
    with torch.no_grad():
        out, ref = op(x), reference(module, x)
        assert float((out - ref).abs().max()) <= 3e-3
        function = (F.batch_norm, 8) if op.groups is None else (F.group_norm, 8, op.groups)
        twin = SpikingGroupNorm.from_float(*function, module.weight, module.bias, module.eps, T=16)
        torch.testing.assert_close(twin(x), out, rtol=0, atol=0)


def test_topk_from_torch_topk_selects_what_torch_topk_selects():
    x = torch.rand(200, 8, generator=torch.Generator().manual_seed(6))
    op = SpikingTopK.from_float(torch.topk, 2, -1, T=12)
    calibrated(op, x)
    values, index = op(x)
    ref_values, ref_index = torch.topk(x, 3, -1)
    clear = (ref_values[:, 1] - ref_values[:, 2]) > 2.0 ** -10  # a margin of several code steps
    assert clear.sum() > 150
    assert torch.equal(index.sort(-1).values[clear], ref_index[:, :2].sort(-1).values[clear])
    assert torch.equal(values, x.gather(-1, index))


def test_a_function_fitted_on_demand_from_float_computes_it_after_calibration():
    x = x_of(64, 8)
    op = FittedOnDemand.from_float(F.hardswish, T=16, N=8)
    assert op.name == "hardswish"
    calibrated(op, x)
    error = float((op(x) - F.hardswish(x)).abs().max())
    assert 0 < error <= op.spiking.residual.fitted.errors["max_abs"] + float(x.abs().max()) * 2.0 ** -15


@pytest.mark.parametrize("build, error, message", [
    (lambda: SpikingLayerNorm.from_float(nn.RMSNorm(16)), ValueError, "RMSNorm does not compute a LayerNorm"),
    (lambda: SpikingActivation.from_float(nn.ReLU()), TypeError, "relu has no fitted neuron.*PiecewiseLinear.from_float"),
    (lambda: SpikingActivation.from_float(nn.Mish()), TypeError, "activation table .* got Mish"),
    (lambda: PiecewiseLinear.from_float(nn.GELU()), TypeError, "gelu is not piecewise linear"),
    (lambda: SpikingProduct.from_float(torch.add), TypeError, "takes torch.mul or operator.mul, got add"),
    (lambda: SpikingWeightInput.from_float(nn.ReLU()), TypeError, "takes a weight layer .* got ReLU"),
    (lambda: SpikingSoftmax.from_float(nn.Softmax()), ValueError, "dim=None"),
    (lambda: SpikingMaxPool2d.from_float(nn.MaxPool2d(2, ceil_mode=True)), ValueError, "ceil_mode=False"),
    (lambda: RectifiedActivation.from_float(nn.Tanh()), TypeError, "tanh has no rectified form"),
    (lambda: SpikingGroupNorm.from_float(nn.BatchNorm2d(4).eval()), ValueError, "running statistics"),
    (lambda: SpikingGroupNorm.from_float(nn.LayerNorm(4)), TypeError, "GroupNorm, InstanceNorm or BatchNorm"),
    (lambda: SpikingTopK.from_float(torch.sort, 2), TypeError, "torch.topk"),
    (lambda: FittedOnDemand.from_float(nn.Module), TypeError, "element-wise tensor function"),
])
def test_from_float_names_what_it_takes(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_ecmts_products_and_weight_inputs_from_their_float_ops():
    """ECMT's builders go through ``from_float`` too: the kind follows the float function, and an
    MT-driven layer wraps the very layer."""
    layer = nn.Linear(4, 3)
    assert MTLinearInput.from_float(layer, n=4).layer is layer
    assert [ProductCompensation.from_float(f).kind for f in (torch.mul, operator.mul, torch.matmul)] == \
        ["product", "product", "matmul"]
    with pytest.raises(TypeError, match="takes torch.mul, operator.mul, torch.matmul or operator.matmul, got add"):
        ProductCompensation.from_float(torch.add)
    with pytest.raises(TypeError, match="takes a weight layer .* got LayerNorm"):
        MTLinearInput.from_float(nn.LayerNorm(4))
