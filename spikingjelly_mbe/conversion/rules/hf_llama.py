"""HF Llama: RMSNorm, SwiGLU (spiking SiLU and gate product), RoPE kept as a fixed linear map."""
from __future__ import annotations

from transformers.models.llama import modeling_llama as llama

from ..hf_attention import use_spiking_attention
from ..registry import ArchitectureRule, keep, register, spike
from ._hf import ATTENTION, GATED_MLP, HF_COMMON

register(ArchitectureRule(
    name="hf_llama",
    model_classes=(llama.LlamaModel, llama.LlamaForCausalLM),
    modules={
        **HF_COMMON,
        **{cls: keep() for cls in (llama.LlamaModel, llama.LlamaForCausalLM, llama.LlamaDecoderLayer)},
        llama.LlamaRotaryEmbedding: keep("RoPE: cos/sin depend on positions only, so q*cos + rot(q)*sin "
                                         "is a fixed linear map on the spiking q and k"),
        llama.LlamaRMSNorm: spike(lambda m, s: s.rms_norm(m), "RMSNorm from x^2, rsqrt and products"),
        llama.LlamaMLP: GATED_MLP,
        llama.LlamaAttention: ATTENTION,
    },
    setup=use_spiking_attention,
))
