"""Pieces shared by the Hugging Face rules: activation classes, ``Conv1D``, spiking attention."""
from __future__ import annotations

from transformers.activations import GELUActivation, GELUTanh, NewGELUActivation, SiLUActivation
from transformers.pytorch_utils import Conv1D

from ..blocks import SpikingGatedMLP
from ..hf_attention import attach_core
from ..registry import expose, keep, spike
from ._common import COMMON, LINEAR

ATTENTION = expose(attach_core, "core via AttentionInterface['mbe_spiking']: spiking Q K^T, softmax, A V")
GATED_MLP = expose(SpikingGatedMLP, "SwiGLU: spiking SiLU and spiking gate product")

HF_COMMON = {
    **COMMON,
    Conv1D: keep(LINEAR),
    GELUActivation: spike(lambda m, s: s.gelu("none"), "GELU (erf) on MBE neurons (Eq. 8)"),
    NewGELUActivation: spike(lambda m, s: s.gelu("tanh"), "GELU (tanh form) on MBE neurons (Eq. 8)"),
    GELUTanh: spike(lambda m, s: s.gelu("tanh"), "GELU (tanh form) on MBE neurons (Eq. 8)"),
    SiLUActivation: spike(lambda m, s: s.silu(), "SiLU on MBE neurons (Eq. 8)"),
}
