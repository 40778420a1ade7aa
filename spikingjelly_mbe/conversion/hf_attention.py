"""Hugging Face hook: a spiking attention function in ``AttentionInterface`` and its mask function.

transformers 5.x routes every attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
and builds masks with ``ALL_MASK_ATTENTION_FUNCTIONS[...]``. An implementation without a registered
mask function gets ``mask=None`` (``masking_utils._preprocess_mask_arguments``), so GPT-2 would
silently lose its causal mask: both are registered under one name. Every attention module that
runs during calibration gets its spiking core on its first call (whatever its class); a model
whose attention does not go through the interface keeps its own attention code, which the
run-time interception converts call by call.
"""
from __future__ import annotations

import contextvars
import logging
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .blocks import SpikingAttention
from .report import ConversionReport, Entry, note_of
from .method import SpikingMethod, settings_at

log = logging.getLogger("spikingjelly_mbe.conversion")
IMPLEMENTATION = "mbe_spiking"
CORE = "spiking_attention"
# (settings, report, paths of the model's modules) while a conversion calibrates: cores are built then
BUILDING: contextvars.ContextVar[Optional[Tuple[SpikingMethod, ConversionReport, dict]]] = \
    contextvars.ContextVar("mbe_attention_building", default=None)


def spiking_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                      dropout: float = 0.0, softcap: Optional[float] = None,
                      position_bias: Optional[torch.Tensor] = None, is_causal: Optional[bool] = None,
                      **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``AttentionInterface`` entry: run ``module.spiking_attention`` (Eqs. 9-13); output ``[B, S, H, hd]``.

    Takes what the eager functions of transformers take: ``scaling``, ``softcap`` (Gemma 2),
    ``position_bias`` (T5's additive relative-position bias), the mask (``sliding_window`` is
    already in it). A floating tensor argument it does not know (e.g. attention sinks ``s_aux``)
    is an error, never silently dropped.
    """
    core = getattr(module, CORE, None)
    if core is None:
        core = _build_core(module, query.device)
    if dropout:
        raise ValueError(f"spiking attention is inference-only, got dropout={dropout} (call model.eval())")
    unknown = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    if unknown:
        raise ValueError(f"{type(module).__name__}: attention argument(s) {unknown} have no spiking operator "
                         "(e.g. attention sinks); this model's attention cannot be converted")
    causal = bool(is_causal) and attention_mask is None and query.shape[-2] > 1
    out, weights = core(query, key, value, attention_mask, scaling, causal, softcap=softcap, bias=position_bias)
    return out.transpose(1, 2).contiguous(), weights


def _build_core(module: nn.Module, device: torch.device) -> SpikingAttention:
    return attach_core(module, device, CORE, SpikingAttention,
                       "core via AttentionInterface['mbe_spiking']: spiking Q K^T, softmax, A V")


def attach_core(module: nn.Module, device: torch.device, attribute: str, make: Callable[..., nn.Module],
                note: str, *args: Any) -> nn.Module:
    """``make(*args, settings)`` attached to ``module`` as ``attribute`` and reported, on its first call
    while a conversion calibrates (a module that never ran then has none: an error naming it)."""
    building = BUILDING.get()
    if building is None:
        raise RuntimeError(f"{type(module).__name__} has no spiking {attribute.removeprefix('spiking_')} core: it did not "
                           "run on the calibration batches; convert with spikingjelly_mbe.convert and batches that "
                           "reach it")
    settings, report, paths = building
    path = paths.get(id(module), type(module).__name__)
    path = f"{path}.{attribute}" if path else attribute
    core = make(*args, settings_at(settings, path)).to(device)
    module.add_module(attribute, core)
    report.replaced.append(Entry(path, type(module).__name__, type(core).__name__, note_of(core, note)))
    return core


def spiking_attention_mask(*args, **kwargs) -> Optional[torch.Tensor]:
    """SDPA's boolean mask (True = attend), always materialised for causal models."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def use_spiking_attention(model: nn.Module) -> bool:
    """Switch a Hugging Face model (and its sub-models) to the spiking attention function; ``False``
    when ``model`` is not one or does not support custom attention functions (then its eager
    attention runs and is converted call by call)."""
    if not isinstance(model, PreTrainedModel):
        return False
    AttentionInterface.register(IMPLEMENTATION, spiking_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, spiking_attention_mask)
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, NotImplementedError, TypeError) as err:
        log.info("%s does not take custom attention functions (%s): converting its eager attention",
                 type(model).__name__, err)
        try:
            model.set_attn_implementation("eager")
        except (ValueError, NotImplementedError, TypeError):
            pass
        return False
    return True
