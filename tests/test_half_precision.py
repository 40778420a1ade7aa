"""Half-precision activations: every operator codes them exactly in float32 inside and returns the
model's dtype, so its output is the float32 operator's on the upcast input, rounded once."""
import logging

import pytest
import torch
from spikingjelly.activation_based import functional

from spikingjelly_mbe.kernels import backend
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingProduct, SpikingRMSNorm,
                                  SpikingSoftmax)

OPS = {"softmax": (lambda: SpikingSoftmax(T=8), 1), "layernorm": (lambda: SpikingLayerNorm(16, T=8), 1),
       "rmsnorm": (lambda: SpikingRMSNorm(16, torch.rand(16) + 0.5, T=8), 1),
       "gelu": (lambda: SpikingActivation.gelu(T=8, N=4), 1),
       "product": (lambda: SpikingProduct(8, ranges=(3.0, 2.0)), 2), "matmul": (lambda: SpikingMatmul(8, ranges=(3.0, 3.0)), 2)}


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name_of_backend", ["torch", "c"])
def test_half_precision_operators_are_the_float32_operator_rounded_once(name, dtype, name_of_backend):
    make, operands = OPS[name]
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(3, 16, 16, generator=g) * 2).to(dtype) for _ in range(operands)]
    op = make()
    logging.disable(logging.WARNING)
    try:
        with torch.no_grad(), backend.use(name_of_backend):
            functional.reset_net(op)
            half = op(*inputs)
            half_stats = op.op_stats()
            functional.reset_net(op)
            single = op(*(x.float() for x in inputs))
            single_stats = op.op_stats()
    finally:
        logging.disable(logging.NOTSET)
    assert half.dtype == dtype
    assert torch.equal(half, single.to(dtype))
    assert half_stats == single_stats
