"""Hugging Face hook: Mixture-of-Experts expert layers as weight layers driven by spikes.

transformers 5.x routes the experts of its MoE models (Mixtral, Qwen2/3-MoE, OLMoE, ...) through
``ALL_EXPERTS_FUNCTIONS[config._experts_implementation]`` (the per-expert loop, ``_grouped_mm``,
...). Conversion registers one more implementation: every experts module that runs during
calibration gets a :class:`SpikingExperts` core on its first call (like the attention cores of
:mod:`.hf_attention`). The router's top-k, its softmax and any renormalisation run before, as
call-level sites.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.integrations.moe import ExpertsInterface

from .hf_attention import attach_core
from .method import SpikingMethod

IMPLEMENTATION = "mbe_spiking"
CORE = "spiking_experts"


class ExpertWeight(nn.Module):
    """Expert ``index`` of a stacked ``[experts, out, in]`` weight as a weight layer (a view, no copy)."""

    weight_layer = True  # what SpikingWeightInput.from_float takes

    def __init__(self, stacked: torch.Tensor, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "stacked", stacked)  # the experts module owns the parameter
        self.index = index

    @property
    def weight(self) -> torch.Tensor:
        return self.stacked[self.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"expert={self.index}, weight={tuple(self.weight.shape)}"


class SpikingExperts(nn.Module):
    """The routed experts of one MoE layer: each expert's ``act(x W_g) * (x W_u)`` then ``W_d``, every
    weight layer driven by the MBE_Id code of its input (:class:`~spikingjelly_mbe.ops.SpikingWeightInput`),
    the gate product and the routing weight's product spiking (Eqs. 9-12), the experts' outputs
    added into the tokens' rows (``index_add``, a synaptic sum).

    After calibration an expert runs only on the tokens routed to it, so its spikes and synaptic
    operations are charged per routed token. While calibrating every expert sees every token (its
    ranges do not depend on which experts a few batches happened to pick), and only the routed rows
    are added.
    """

    mbe_opaque = True

    def __init__(self, experts: nn.Module, settings: SpikingMethod) -> None:
        super().__init__()
        name = type(experts).__name__
        unsupported = [flag for flag, wanted in (("has_gate", True), ("has_bias", False), ("is_transposed", False),
                                                 ("is_concatenated", True), ("has_post_expert_norm", False))
                       if getattr(experts, flag, wanted) != wanted]
        if unsupported or not all(isinstance(getattr(experts, p, None), torch.Tensor)
                                  for p in ("gate_up_proj", "down_proj")):
            raise ValueError(f"{name}: spiking experts need stacked gate_up_proj [E, 2I, H] and down_proj [E, H, I] "
                             f"weights without bias (the Mixtral layout); this one differs in {unsupported or 'weights'}")
        count = experts.gate_up_proj.shape[0]
        object.__setattr__(self, "owner", experts)  # its act_fn (a spiking activation, refitted or not)
        self.gate_up = nn.ModuleList(settings.linear_input(ExpertWeight(experts.gate_up_proj, e)) for e in range(count))
        self.down = nn.ModuleList(settings.linear_input(ExpertWeight(experts.down_proj, e)) for e in range(count))
        self.gated = nn.ModuleList(settings.product() for _ in range(count))
        self.routed = nn.ModuleList(settings.product() for _ in range(count))

    def observing(self) -> bool:
        """Some operator of the experts still records its ranges."""
        return any(getattr(m, "calibrating", False) for m in self.modules())

    def expert(self, e: int, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up[e](x).chunk(2, dim=-1)
        return self.routed[e](self.down[e](self.gated[e](self.owner.act_fn(gate), up)), weight)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """``[S, H]`` tokens, ``[S, k]`` chosen experts and their routing weights -> ``[S, H]``."""
        out = torch.zeros_like(hidden_states)
        calibrating = self.observing()
        for e in range(len(self.gate_up)):
            routed = top_k_index == e
            if calibrating:
                weight = (top_k_weights * routed).sum(-1, keepdim=True).to(hidden_states.dtype)
                out += self.expert(e, hidden_states, weight) * routed.any(-1, keepdim=True)
                continue
            tokens, place = torch.where(routed)
            if tokens.numel():
                y = self.expert(e, hidden_states[tokens], top_k_weights[tokens, place, None].to(hidden_states.dtype))
                out.index_add_(0, tokens, y.to(out.dtype))
        return out


def spiking_experts(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """``ExpertsInterface`` entry: run ``module.mbe_experts`` (built on the first calibration call)."""
    core = getattr(module, CORE, None)
    if core is None:
        core = attach_core(module, hidden_states.device, CORE, SpikingExperts,
                           "experts via ExpertsInterface['mbe_spiking']: spike-driven expert weight layers, gate "
                           "and routing products, charged per routed token", module)
    return core(hidden_states, top_k_index, top_k_weights)




def use_spiking_experts(model: nn.Module) -> List[str]:
    """Route a Hugging Face MoE model's experts through :func:`spiking_experts`; the paths of its
    experts modules (none for a model without them)."""
    found = [path for path, m in model.named_modules() if hasattr(m, "gate_up_proj") and hasattr(m, "config")
             and hasattr(type(m), "_apply_gate")]
    if not found or not isinstance(model, PreTrainedModel):
        return []
    ExpertsInterface.register(IMPLEMENTATION, spiking_experts)
    for path in found:
        model.get_submodule(path).config._experts_implementation = IMPLEMENTATION
    return found
