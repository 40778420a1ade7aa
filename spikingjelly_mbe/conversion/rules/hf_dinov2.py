"""HF DINOv2: ViT blocks with LayerScale (a per-channel constant scale, kept linear)."""
from __future__ import annotations

from transformers.models.dinov2 import modeling_dinov2 as dinov2

from ..hf_attention import use_spiking_attention
from ..registry import ArchitectureRule, keep, register
from ._hf import ATTENTION, GATED_MLP, HF_COMMON

register(ArchitectureRule(
    name="hf_dinov2",
    model_classes=(dinov2.Dinov2Model, dinov2.Dinov2ForImageClassification),
    modules={
        **HF_COMMON,
        **{cls: keep() for cls in (dinov2.Dinov2Model, dinov2.Dinov2ForImageClassification, dinov2.Dinov2Embeddings,
                                   dinov2.Dinov2PatchEmbeddings, dinov2.Dinov2Encoder, dinov2.Dinov2Layer,
                                   dinov2.Dinov2MLP, dinov2.Dinov2DropPath)},
        dinov2.Dinov2LayerScale: keep("LayerScale: per-channel constant scale, a linear op"),
        dinov2.Dinov2SwiGLUFFN: GATED_MLP,
        dinov2.Dinov2Attention: ATTENTION,
    },
    setup=use_spiking_attention,
))
