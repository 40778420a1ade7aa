"""The building blocks conversion recognises: one table of element-wise activations and one of norms.

Each entry lists, once, the float function it computes (the reference used to recognise unknown
modules by what they compute), the module classes of torch, transformers and timm that compute it,
the functional calls that do (as seen at run time), and the spiking module that replaces it. Rules,
run-time interception and fingerprinting are all derived from these tables; adding an activation
is one entry here (plus its test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import activations as timm_act
from timm.layers import norm as timm_norm
from transformers import activations as hf_act

from .blocks import ChannelsLast, Rescaled
from .settings import OpSettings

Params = Dict[str, Any]
CallResolver = Callable[[tuple, dict], Optional[Params]]
QUICK_GELU = 1.702


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _gelu_form(form: str) -> CallResolver:
    return lambda args, kwargs: {} if _arg(args, kwargs, 1, "approximate", "none") == form else None


def _plain(args: tuple, kwargs: dict) -> Params:
    return {}


def _clamp_bounds(lo: Optional[float], hi: Optional[float], x: Any = None) -> Optional[Params]:
    """The bounds of a clamp of ``x``; a bound beyond half the largest finite value of ``x``'s dtype is
    an overflow guard (Whisper's and T5's half-precision ``clamp(h, -(max - 1000), max - 1000)``), no knot."""
    if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
        return None  # tensor bounds: not a fixed piecewise-linear function
    guard = torch.finfo(x.dtype).max / 2 if isinstance(x, torch.Tensor) and x.is_floating_point() else math.inf
    return {"lo": None if lo is not None and lo <= -guard else lo, "hi": None if hi is not None and hi >= guard else hi}


def _clamp_knots(s: OpSettings, lo: Optional[float], hi: Optional[float]) -> nn.Module:
    """``clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)`` (one-sided forms drop a knot; no bound
    at all is the identity)."""
    if lo is None and hi is None:
        return nn.Identity()
    if lo is None:
        return s.piecewise([(hi, -1.0)], c1=1.0)
    return s.piecewise([(lo, 1.0)] + ([(hi, -1.0)] if hi is not None else []), c0=lo)


def _clamp_reference(x: torch.Tensor, lo: Optional[float], hi: Optional[float]) -> torch.Tensor:
    return torch.clamp(x, lo, hi)


@dataclass(frozen=True)
class Activation:
    """An element-wise nonlinearity: ``reference(x, **params)`` in float, ``build(settings, **params)``
    spiking; ``classes`` maps each module class computing it to its params (``None``: another
    entry's), ``calls`` maps run-time op names to resolvers of their params from ``(args, kwargs)``."""

    name: str
    reference: Callable[..., torch.Tensor]
    build: Callable[..., nn.Module]
    note: str
    classes: Mapping[type, Callable[[nn.Module], Optional[Params]]] = field(default_factory=dict)
    calls: Mapping[str, CallResolver] = field(default_factory=dict)
    fingerprint: bool = True  # ``reference(x)`` alone identifies it (no params to guess)
    fitted_target: Optional[str] = None  # a fitted neuron's target: the domain may narrow to the calibrated inputs


def _fitted(target: str) -> Callable[..., nn.Module]:
    return lambda s: s.fitted(target)


_none = lambda m: {} if getattr(m, "approximate", "none") == "none" else None  # noqa: E731
_tanh = lambda m: {} if getattr(m, "approximate", "none") == "tanh" else None  # noqa: E731
_always = lambda m: {}  # noqa: E731

ACTIVATIONS: Tuple[Activation, ...] = (
    Activation("gelu", F.gelu, _fitted("gelu"), "GELU (erf) on MBE neurons (Eq. 8)",
               {nn.GELU: _none, hf_act.GELUActivation: _always, timm_act.GELU: _none},
               {"gelu": _gelu_form("none")}, fitted_target="gelu"),
    Activation("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), _fitted("gelu_tanh"),
               "GELU (tanh form) on MBE neurons (Eq. 8)",
               {nn.GELU: _tanh, hf_act.NewGELUActivation: _always, hf_act.GELUTanh: _always,
                hf_act.FastGELUActivation: _always, hf_act.AccurateGELUActivation: _always, timm_act.GELUTanh: _always},
               {"gelu": _gelu_form("tanh")}, fitted_target="gelu_tanh"),
    Activation("silu", F.silu, _fitted("silu"), "SiLU on MBE neurons (Eq. 8)",
               {nn.SiLU: _always, hf_act.SiLUActivation: _always, timm_act.Swish: _always}, {"silu": _plain},
               fitted_target="silu"),
    Activation("quick_gelu", lambda x: x * torch.sigmoid(QUICK_GELU * x),
               lambda s: Rescaled(s.fitted("silu"), QUICK_GELU),
               "QuickGELU x sigmoid(1.702 x) = silu(1.702 x) / 1.702: the SiLU neuron with an input gain",
               {hf_act.QuickGELUActivation: _always, timm_act.QuickGELU: _always}),
    Activation("tanh", torch.tanh, _fitted("tanh"), "tanh on MBE neurons (Eq. 8)",
               {nn.Tanh: _always, timm_act.Tanh: _always}, {"tanh": _plain}, fitted_target="tanh"),
    Activation("sigmoid", torch.sigmoid, _fitted("sigmoid"), "sigmoid on MBE neurons (Eq. 8)",
               {nn.Sigmoid: _always, timm_act.Sigmoid: _always}, {"sigmoid": _plain}, fitted_target="sigmoid"),
    Activation("relu", F.relu, lambda s: s.piecewise([(0.0, 1.0)]),
               "ReLU: an identity neuron with a positive gain, exact up to the operand coding (Eq. 9)",
               {nn.ReLU: _always}, {"relu": _plain}),
    Activation("leaky_relu", lambda x, slope: F.leaky_relu(x, slope),
               lambda s, slope: s.piecewise([(0.0, 1.0 - slope)], c1=slope),
               "leaky ReLU = s x + (1 - s) relu(x) on a rectifier neuron",
               {nn.LeakyReLU: lambda m: {"slope": m.negative_slope}},
               {"leaky_relu": lambda a, k: {"slope": _arg(a, k, 1, "negative_slope", 0.01)}}, fingerprint=False),
    Activation("clamp", _clamp_reference, _clamp_knots,
               "hardtanh / ReLU6 / clamp = lo + relu(x - lo) - relu(x - hi) on rectifier neurons",
               {nn.Hardtanh: lambda m: {"lo": m.min_val, "hi": m.max_val},
                nn.ReLU6: lambda m: {"lo": 0.0, "hi": 6.0}},
               {"hardtanh": lambda a, k: _clamp_bounds(_arg(a, k, 1, "min_val", -1.0), _arg(a, k, 2, "max_val", 1.0)),
                "relu6": lambda a, k: {"lo": 0.0, "hi": 6.0},
                "clamp": lambda a, k: _clamp_bounds(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), a[0]),
                "clip": lambda a, k: _clamp_bounds(_arg(a, k, 1, "min", None), _arg(a, k, 2, "max", None), a[0]),
                "clamp_min": lambda a, k: _clamp_bounds(_arg(a, k, 1, "min", None), None, a[0]),
                "clamp_max": lambda a, k: _clamp_bounds(None, _arg(a, k, 1, "max", None), a[0])},
               fingerprint=False),
)


def activation_of_module(module: nn.Module) -> Optional[Tuple[Activation, Params]]:
    """The entry (and params) of a module whose exact class is listed."""
    for entry in ACTIVATIONS:
        resolve = entry.classes.get(type(module))
        params = resolve(module) if resolve is not None else None
        if params is not None:
            return entry, params
    return None


def activation_of_call(name: str, args: tuple, kwargs: dict) -> Optional[Tuple[Activation, Params]]:
    """The entry (and params) of a run-time call ``name(*args, **kwargs)``."""
    for entry in ACTIVATIONS:
        resolve = entry.calls.get(name)
        params = resolve(args, kwargs) if resolve is not None else None
        if params is not None:
            return entry, params
    return None


def activation_calls() -> frozenset:
    """Every run-time op name some activation entry resolves."""
    return frozenset(name for entry in ACTIVATIONS for name in entry.calls)


# ---- norms -------------------------------------------------------------------------------------

def _eps_of(module: nn.Module, default: float) -> float:
    for name in ("eps", "variance_epsilon", "epsilon", "layer_norm_eps"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return default


@dataclass(frozen=True)
class Norm:
    """A normalisation over the trailing (or, ``channels_first``, the channel) dimension:
    ``reference(x, weight, bias, eps)`` in float; the spiking build takes the same tensors."""

    name: str
    centered: bool
    weight_offset: float = 0.0  # Gemma-style (1 + w)
    channels_first: bool = False

    def reference(self, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  eps: float) -> torch.Tensor:
        h = x.movedim(1, -1) if self.channels_first else x
        if self.centered:
            h = h - h.mean(-1, keepdim=True)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            h = h * (weight + self.weight_offset)
        if bias is not None:
            h = h + bias
        return h.movedim(-1, 1) if self.channels_first else h

    def build(self, s: OpSettings, shape: Sequence[int], weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor], eps: float) -> nn.Module:
        if weight is not None and self.weight_offset:
            weight = weight.detach() + self.weight_offset
        op = s.layer_norm(shape, weight, bias, eps) if self.centered else s.rms_norm(shape, weight, eps)
        return ChannelsLast(op) if self.channels_first else op


LAYER_NORM, RMS_NORM = Norm("LayerNorm", True), Norm("RMSNorm", False)
NORMS: Tuple[Norm, ...] = (LAYER_NORM, RMS_NORM, Norm("RMSNorm(1+w)", False, 1.0),
                          Norm("LayerNorm2d", True, channels_first=True))
NORM_CLASSES: Dict[type, Norm] = {nn.LayerNorm: LAYER_NORM, timm_norm.LayerNorm: LAYER_NORM,
                                  timm_norm.LayerNorm2d: NORMS[3], nn.RMSNorm: RMS_NORM}


def norm_module_parts(module: nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], float]:
    """``(weight, bias, eps)`` of a norm module (``eps`` defaults to 1e-6)."""
    eps = _eps_of(module, 1e-6)
    if isinstance(module, nn.RMSNorm) and module.eps is None:
        eps = torch.finfo(torch.float32).eps
    return getattr(module, "weight", None), getattr(module, "bias", None), eps


def _batch_statistics(module: nn.Module) -> bool:
    """A batch or instance norm that normalises with the statistics of its input (no running ones in use)."""
    return module.training or module.running_mean is None


# per-group norms: class -> (channels, groups; None: BatchNorm over batch and positions) when it uses its
# input's statistics, else None (a BatchNorm or InstanceNorm on running statistics is linear)
GROUP_NORM_CLASSES: Dict[type, Callable[[nn.Module], Optional[Tuple[int, Optional[int]]]]] = {
    nn.GroupNorm: lambda m: (m.num_channels, m.num_groups),
    **{cls: (lambda m: (m.num_features, m.num_features) if _batch_statistics(m) else None)
       for cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    **{cls: (lambda m: (m.num_features, None) if _batch_statistics(m) else None)
       for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
}
