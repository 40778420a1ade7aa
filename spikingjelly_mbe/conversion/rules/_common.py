"""Rules for ``torch.nn`` modules, shared by every architecture and by the FX recipe."""
from __future__ import annotations

import torch.nn as nn

from ..registry import keep, spike

LINEAR = "linear layer, weights reused unchanged"

COMMON = {
    nn.Linear: keep(LINEAR),
    nn.Conv2d: keep("patch embedding convolution: linear, weights reused unchanged"),
    nn.Embedding: keep("embedding lookup: linear"),
    nn.Dropout: keep(),
    nn.Identity: keep(),
    nn.Sequential: keep(),
    nn.ModuleList: keep(),
    nn.ModuleDict: keep(),
    nn.LayerNorm: spike(lambda m, s: s.layer_norm(m), "LayerNorm from x^2, rsqrt and products"),
    nn.GELU: spike(lambda m, s: s.gelu(m.approximate), "GELU on MBE neurons (Eq. 8)"),
    nn.SiLU: spike(lambda m, s: s.silu(), "SiLU on MBE neurons (Eq. 8)"),
    nn.Tanh: spike(lambda m, s: s.tanh(), "tanh on MBE neurons (Eq. 8)"),
    nn.Softmax: spike(lambda m, s: s.softmax(m.dim), "softmax from exp2-frac, reciprocal, products (Eq. 13)"),
}
