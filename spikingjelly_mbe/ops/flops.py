"""FLOPs of the float operations the spiking operators replace (``OpStats.ann_flops``).

Conventions (per element of the float op's output unless stated):

* activations: 70, the figure the paper cites from STA (Jiang et al. 2024) for GELU, charged to
  every fitted scalar function (GELU, SiLU, tanh, sigmoid, ...);
* element-wise product: 1; matrix product ``[M, K] @ [K, N]``: ``M K N`` multiply-accumulates, the
  unit SpikingJelly's ``op_counter.MACCounter`` counts and Eq. 14 charges ``E_MAC`` for;
* ReLU (and each knot of a piecewise-linear activation, each step of a max-pool fold): 1
  comparison;
* softmax: 5 (max comparison, subtraction, exponential, accumulation, division);
* LayerNorm: 7 (mean accumulation, subtraction, square, variance accumulation, multiplication by
  ``1/sigma``, ``gamma``, ``beta``) plus 4 per normalised row (two divisions by ``n``, ``+ eps``,
  reciprocal square root); RMSNorm: 4 (square, accumulation, multiplication, weight) plus 3 per row.

ECMT's expectation compensation (its float operations, ``OpStats.float_flops``), per element and
step on top of the function ``F`` it evaluates: ``EC_STEP = 5`` for one operand (accumulate
``S``, divide by ``t``, multiply ``F`` by ``t``, subtract the earlier outputs, add the output to
their sum); ``EC_PRODUCT_STEP = 6`` per output element of a product of two operands (add the
three spike terms to ``S_A S_B``, divide by ``t``, subtract the earlier outputs, add to their sum).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ACTIVATION = 70
PRODUCT = 1
RELU = 1
SOFTMAX = 5
LAYERNORM, LAYERNORM_ROW = 7, 4
RMSNORM, RMSNORM_ROW = 4, 3
EC_STEP, EC_PRODUCT_STEP = 5, 6


def matmul(M: int, K: int, N: int) -> int:
    """``M K N``: one multiply-accumulate per term of every output element."""
    return M * K * N


def weight_layer(layer: object, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a weight layer (``nn.Linear``, GPT-2's ``Conv1D``,
    ``nn.Conv1d``/``nn.Conv2d``): ``weight.numel() / out_channels`` per output element, bias
    additions not counted."""
    out_channels = getattr(layer, "out_channels", None) or out.shape[-1]
    return out.numel() * layer.weight.numel() // out_channels
