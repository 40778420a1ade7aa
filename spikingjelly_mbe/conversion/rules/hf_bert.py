"""HF BERT and RoBERTa encoders, with their pooler (tanh) and sequence-classification heads."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.bert import modeling_bert as bert
from transformers.models.roberta import modeling_roberta as roberta

from ..hf_attention import use_spiking_attention
from ..operators import OpSettings
from ..registry import ArchitectureRule, expose, keep, register
from ._hf import ATTENTION, HF_COMMON


class SpikingRobertaClassificationHead(nn.Module):
    """``out_proj(tanh(dense(h[:, 0])))`` with the tanh as a module, so it is spiked (Eq. 8)."""

    def __init__(self, source: roberta.RobertaClassificationHead, settings: OpSettings) -> None:
        super().__init__()
        self.dense, self.dropout, self.out_proj = source.dense, source.dropout, source.out_proj
        self.activation = nn.Tanh()

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        x = self.dropout(features[:, 0, :])
        return self.out_proj(self.dropout(self.activation(self.dense(x))))


PLUMBING = [bert.BertModel, bert.BertForSequenceClassification, bert.BertEmbeddings, bert.BertEncoder,
            bert.BertLayer, bert.BertAttention, bert.BertSelfOutput, bert.BertIntermediate, bert.BertOutput,
            bert.BertPooler,
            roberta.RobertaModel, roberta.RobertaForSequenceClassification, roberta.RobertaEmbeddings,
            roberta.RobertaEncoder, roberta.RobertaLayer, roberta.RobertaAttention, roberta.RobertaSelfOutput,
            roberta.RobertaIntermediate, roberta.RobertaOutput, roberta.RobertaPooler]

register(ArchitectureRule(
    name="hf_bert",
    model_classes=(bert.BertModel, bert.BertForSequenceClassification,
                   roberta.RobertaModel, roberta.RobertaForSequenceClassification),
    modules={
        **HF_COMMON,
        **{cls: keep() for cls in PLUMBING},
        bert.BertSelfAttention: ATTENTION,
        roberta.RobertaSelfAttention: ATTENTION,
        roberta.RobertaClassificationHead: expose(SpikingRobertaClassificationHead,
                                                  "functional torch.tanh made a module, then spiked"),
    },
    setup=use_spiking_attention,
))
