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
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingRMSNorm,
                                  SpikingSoftmax, SpikingWeightInput)
from spikingjelly_mbe.ops.products import SpikingEinsum
from spikingjelly_mbe.ops.rectifier import PiecewiseLinear, SpikingMaxPool2d, SpikingReLU
from spikingjelly_mbe.ops.roots import SpikingRoot

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


@pytest.mark.parametrize("build, error, message", [
    (lambda: SpikingLayerNorm.from_float(nn.RMSNorm(16)), ValueError, "RMSNorm does not compute a LayerNorm"),
    (lambda: SpikingActivation.from_float(nn.ReLU()), TypeError, "relu has no fitted neuron.*PiecewiseLinear.from_float"),
    (lambda: SpikingActivation.from_float(nn.Mish()), TypeError, "activation table .* got Mish"),
    (lambda: PiecewiseLinear.from_float(nn.GELU()), TypeError, "gelu is not piecewise linear"),
    (lambda: SpikingProduct.from_float(torch.add), TypeError, "takes torch.mul or operator.mul, got add"),
    (lambda: SpikingWeightInput.from_float(nn.ReLU()), TypeError, "takes a weight layer .* got ReLU"),
    (lambda: SpikingSoftmax.from_float(nn.Softmax()), ValueError, "dim=None"),
    (lambda: SpikingMaxPool2d.from_float(nn.MaxPool2d(2, ceil_mode=True)), ValueError, "ceil_mode=False"),
])
def test_from_float_names_what_it_takes(build, error, message):
    with pytest.raises(error, match=message):
        build()
