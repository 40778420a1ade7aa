"""timm VisionTransformer: ``Attention`` with a spiking core, ``Mlp`` GELU, ``LayerNorm``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Attention, LayerNorm, LayerScale, Mlp, PatchEmbed
from timm.layers.drop import DropPath
from timm.models.vision_transformer import Block, VisionTransformer

from ..blocks import SpikingAttention
from ..operators import OpSettings
from ..registry import ArchitectureRule, expose, keep, register, spike
from ._common import COMMON


class SpikingTimmAttention(nn.Module):
    """timm ``Attention`` whose core ``softmax(q k^T / sqrt(d)) v`` is spiking (Eqs. 9-13); the qkv
    and output projections and the optional q/k norms are the source's own modules."""

    def __init__(self, source: Attention, settings: OpSettings) -> None:
        super().__init__()
        if source.gate is not None:
            raise ValueError("gated timm Attention (sigmoid gate) has no MBE rule")
        self.num_heads, self.head_dim, self.attn_dim = source.num_heads, source.head_dim, source.attn_dim
        self.scale = source.scale
        self.qkv, self.q_norm, self.k_norm = source.qkv, source.q_norm, source.k_norm
        self.norm, self.proj, self.proj_drop = source.norm, source.proj, source.proj_drop
        self.core = SpikingAttention(settings)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out, _ = self.core(self.q_norm(q), self.k_norm(k), v, attn_mask, self.scale, is_causal)
        return self.proj_drop(self.proj(self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))))


register(ArchitectureRule(
    name="timm_vit",
    model_classes=(VisionTransformer,),
    modules={
        **COMMON,
        **{cls: keep() for cls in (VisionTransformer, Block, Mlp, PatchEmbed, DropPath)},
        LayerScale: keep("LayerScale: per-channel constant scale, a linear op"),
        LayerNorm: spike(lambda m, s: s.layer_norm(m), "LayerNorm from x^2, rsqrt and products"),
        Attention: expose(SpikingTimmAttention, "spiking Q K^T, softmax, A V; projections reused"),
    },
))
