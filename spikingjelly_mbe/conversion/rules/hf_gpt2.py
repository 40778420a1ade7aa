"""HF GPT-2: ``Conv1D`` projections, tanh-form GELU, causal spiking attention."""
from __future__ import annotations

from transformers.models.gpt2 import modeling_gpt2 as gpt2

from ..hf_attention import use_spiking_attention
from ..registry import ArchitectureRule, keep, register
from ._hf import ATTENTION, HF_COMMON

register(ArchitectureRule(
    name="hf_gpt2",
    model_classes=(gpt2.GPT2Model, gpt2.GPT2LMHeadModel, gpt2.GPT2ForSequenceClassification),
    modules={
        **HF_COMMON,
        **{cls: keep() for cls in (gpt2.GPT2Model, gpt2.GPT2LMHeadModel, gpt2.GPT2ForSequenceClassification,
                                   gpt2.GPT2Block, gpt2.GPT2MLP)},
        gpt2.GPT2Attention: ATTENTION,
    },
    setup=use_spiking_attention,
))
