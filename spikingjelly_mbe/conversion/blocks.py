"""Spiking building blocks shared by the architecture rules: attention core and gated MLP."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .operators import OpSettings


def attention_bias(mask: Optional[torch.Tensor], is_causal: bool, scores: torch.Tensor) -> Optional[torch.Tensor]:
    """Additive bias for ``scores``: 0 where attended, ``-inf`` where masked.

    Boolean masks follow SDPA (True = attend); float masks are additive, and entries at the dtype's
    minimum (the HF "eager" convention) become ``-inf`` so the spiking softmax emits exact zeros.
    ``is_causal`` adds SDPA's top-left causal mask.
    """
    bias = None
    if mask is not None:
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(~mask, float("-inf"))
        else:
            bias = mask.to(scores.dtype).masked_fill(mask <= torch.finfo(mask.dtype).min / 2, float("-inf"))
    if is_causal:
        q_len, kv_len = scores.shape[-2:]
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril()
        causal = torch.zeros(q_len, kv_len, dtype=scores.dtype, device=scores.device).masked_fill(~keep, float("-inf"))
        bias = causal if bias is None else bias + causal
    return bias


class SpikingAttention(nn.Module):
    """``softmax(s * q k^T + bias) v`` with both products spiking (Eqs. 9-12) and a softmax (Eq. 13).

    ``softmax`` starts as ``nn.Softmax`` so the products calibrate on the ANN's values; the
    conversion's replace step turns it into a ``SpikingSoftmax``. The scale ``s`` is a constant
    (a synaptic weight on ``q``).
    """

    def __init__(self, settings: OpSettings) -> None:
        super().__init__()
        self.scores = settings.matmul()
        self.softmax = nn.Softmax(dim=-1)
        self.context = settings.matmul()

    def bound_ranges(self) -> None:
        """Attention probabilities lie in ``[0, 1]``: after data calibration the context product's
        first range is set to 1, whatever the calibration batches happened to reach."""
        if self.context.ranges is not None:
            self.context.set_ranges((1.0, self.context.ranges[1]))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                is_causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, Sq, d]``, ``[B, H, Sk, d]``, ``[B, H, Sk, dv]`` -> (``[B, H, Sq, dv]``, weights)."""
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = self.scores(query * scale, key.transpose(-2, -1))
        bias = attention_bias(mask, is_causal, scores)
        weights = self.softmax(scores if bias is None else scores + bias)
        return self.context(weights, value), weights


class SpikingGatedMLP(nn.Module):
    """SwiGLU ``down(act(gate(x)) * up(x))`` with the gating product spiking (Eqs. 9-12).

    Reuses the source's ``gate_proj``/``up_proj``/``down_proj``/``act_fn`` (Llama, DINOv2); the
    activation is spiked by the replace step like any other activation module.
    """

    def __init__(self, source: nn.Module, settings: OpSettings) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = source.gate_proj, source.up_proj, source.down_proj
        self.act_fn = source.act_fn
        self.product = settings.product()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.product(self.act_fn(self.gate_proj(x)), self.up_proj(x)))
