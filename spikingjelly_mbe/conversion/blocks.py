"""Spiking building blocks assembled from a method's operators: the attention core and multi-head
attention. Each is opaque to the run-time interception (its
internal float calls are the operators' own arithmetic, not the model's)."""
from __future__ import annotations

from typing import AbstractSet, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import ACTIVATIONS
from ..ops import SpikingMatmul
from .method import SpikingMethod


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
    (a synaptic weight on ``q``). Grouped-query heads (``enable_gqa``) share their key/value
    heads; ``softcap`` (Gemma 2) caps the scores with a spiking tanh: ``c tanh(s / c)``. The
    probabilities are coded at their own exponents (``probability_exponents``, the default).
    """

    mbe_opaque = True

    def __init__(self, settings: SpikingMethod) -> None:
        super().__init__()
        self.settings = settings
        self.scores = settings.matmul()
        self.softmax = nn.Softmax(dim=-1)
        self.context = getattr(settings, "probabilities_matmul", settings.matmul)()  # a method's own, else its matmul
        self.softcap: Optional[nn.Module] = None

    def after_calibration(self, observed: AbstractSet[int]) -> None:
        """Attention probabilities lie in ``[0, 1]``: when the context product's ranges come from data
        (its id is in ``observed``), its first range is set to 1, whatever the batches reached."""
        if id(self.context) in observed and isinstance(self.context, SpikingMatmul):
            self.context.set_ranges((1.0, self.context.ranges[1]))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                is_causal: bool = False, softcap: Optional[float] = None,
                bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, Sq, d]``, ``[B, Hkv, Sk, d]``, ``[B, Hkv, Sk, dv]`` -> (``[B, H, Sq, dv]``, weights).

        ``bias``: an additive score bias (T5's relative positions), added after the softcap and
        before the mask; both are constants or data-independent, so synaptic biases."""
        if key.dim() >= 3 and key.shape[-3] != query.shape[-3]:  # grouped-query attention
            groups = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = self.scores(query * scale, key.transpose(-2, -1))
        if softcap:
            if self.softcap is None:
                self.softcap = self.settings.activation(ACTIVATIONS["tanh"], {}).to(scores.device)
            scores = self.softcap(scores / softcap) * softcap
        if bias is not None:
            scores = scores + bias
        mask_bias = attention_bias(mask, is_causal, scores)
        weights = self.softmax(scores if mask_bias is None else scores + mask_bias)
        return self.context(weights, value), weights


def multi_head_attention(core: SpikingAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         embed_dim_to_check: int, num_heads: int, in_proj_weight: Optional[torch.Tensor],
                         in_proj_bias: Optional[torch.Tensor], bias_k: Optional[torch.Tensor],
                         bias_v: Optional[torch.Tensor], add_zero_attn: bool, dropout_p: float,
                         out_proj_weight: torch.Tensor, out_proj_bias: Optional[torch.Tensor], training: bool = True,
                         key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                         attn_mask: Optional[torch.Tensor] = None, use_separate_proj_weight: bool = False,
                         q_proj_weight: Optional[torch.Tensor] = None, k_proj_weight: Optional[torch.Tensor] = None,
                         v_proj_weight: Optional[torch.Tensor] = None, static_k: Optional[torch.Tensor] = None,
                         static_v: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                         is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) with a spiking core: the
    projections are the module's own linear maps, ``softmax(q k^T / sqrt(d) + mask) v`` spikes."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise ValueError("spiking nn.MultiheadAttention supports add_bias_kv=False, add_zero_attn=False and no "
                         "static keys/values")
    if training and dropout_p:
        raise ValueError(f"spiking attention is inference-only, got dropout={dropout_p} (call model.eval())")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query[:, None], key[:, None], value[:, None]
        key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
    L, B, E = query.shape
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = in_proj_weight.chunk(3)
    biases = (None,) * 3 if in_proj_bias is None else in_proj_bias.chunk(3)
    head = E // num_heads
    q, k, v = (F.linear(x, w, b).reshape(x.shape[0], B * num_heads, head).transpose(0, 1).reshape(
        B, num_heads, x.shape[0], head) for x, w, b in zip((query, key, value), weights, biases))
    mask = _merge_masks(attn_mask, key_padding_mask, B, num_heads, L, k.shape[-2], q.dtype)
    out, probs = core(q, k, v, mask, None, is_causal and mask is None)
    out = F.linear(out.permute(2, 0, 1, 3).reshape(L, B, E), out_proj_weight, out_proj_bias)
    if not batched:
        out, probs = out[:, 0], probs[0]
    if not need_weights:
        return out, None
    return out, (probs.mean(-3) if average_attn_weights else probs)


def _merge_masks(attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], B: int, H: int,
                 L: int, S: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """torch's convention (bool True = *masked*; float additive) -> one additive ``[B, H, L, S]`` bias."""
    def additive(m: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
    bias = None
    if attn_mask is not None:
        bias = additive(attn_mask)
        bias = bias.reshape(B, H, L, S) if bias.dim() == 3 else bias  # [B * H, L, S] or a shared [L, S]
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).reshape(B, 1, 1, S)
        bias = pad if bias is None else bias + pad
    return bias
