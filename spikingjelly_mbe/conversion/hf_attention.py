"""Hugging Face hook: a spiking attention function in ``AttentionInterface`` and its mask function.

transformers 5.x routes every attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
and builds masks with ``ALL_MASK_ATTENTION_FUNCTIONS[...]``. An implementation without a registered
mask function gets ``mask=None`` (``masking_utils._preprocess_mask_arguments``), so GPT-2 would
silently lose its causal mask: both are registered under one name.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .blocks import SpikingAttention
from .operators import OpSettings

IMPLEMENTATION = "mbe_spiking"
CORE = "mbe_attention"


def spiking_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                      dropout: float = 0.0, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``AttentionInterface`` entry: run ``module.mbe_attention`` (Eqs. 9-13); output ``[B, S, H, hd]``."""
    core = getattr(module, CORE, None)
    if core is None:
        raise RuntimeError(f"{type(module).__name__} has no spiking attention core; "
                           "convert the model with spikingjelly_mbe.convert first")
    if dropout:
        raise ValueError(f"spiking attention is inference-only, got dropout={dropout} (call model.eval())")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out, weights = core(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), weights


def spiking_attention_mask(*args, **kwargs) -> Optional[torch.Tensor]:
    """SDPA's boolean mask (True = attend), always materialised for causal models."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def use_spiking_attention(model: nn.Module) -> None:
    """Register the pair and switch ``model`` (and its sub-models) to it."""
    AttentionInterface.register(IMPLEMENTATION, spiking_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, spiking_attention_mask)
    model.set_attn_implementation(IMPLEMENTATION)


def attach_core(module: nn.Module, settings: OpSettings) -> nn.Module:
    """Give an HF attention module its spiking core; its own forward stays (projections are linear)."""
    module.add_module(CORE, SpikingAttention(settings))
    return module
