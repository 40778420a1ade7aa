"""Module-level building blocks: modules replaced whole, found by class (the catalog) or, for classes
the catalog does not list, by what they compute on a probe input (a fingerprint).

A whole-module replacement beats call-level interception where a module's forward is a composite
of elementary calls (GPT-2's ``NewGELUActivation`` is a polynomial, a tanh and products; a
``LlamaRMSNorm`` is a square, a mean, an rsqrt and products): the module computes one known
function, and one spiking operator computes it better.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from ..activations import ACTIVATIONS, activation_of
from ..ops.norm import GROUP_NORM_CLASSES, norm_module_parts
from .catalog import NORM_CLASSES, NORMS, Norm
from .interception import is_opaque
from .method import SpikingMethod, settings_at

LINEAR_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.Embedding, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
                  nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten,
                  nn.ZeroPad2d, nn.ConstantPad2d, nn.Upsample, nn.PixelShuffle, Conv1D)
HALF = (torch.float16, torch.bfloat16)
PROBE_SPAN = 6.0  # activations are told apart on a ramp over [-6, 6] (where GELU's two forms differ by 3e-4)


@dataclass(frozen=True)
class Replacement:
    """Build the spiking module for one ANN module, with the report's note."""

    build: Callable[[SpikingMethod], nn.Module]
    note: str
    how: str  # 'class' or 'fingerprint'


def by_class(module: nn.Module) -> Optional[Replacement]:
    """The catalog's replacement for a module of a listed class (exact type)."""
    found = activation_of(module)
    if found is not None:
        entry, params = found
        return Replacement(lambda s: s.activation(entry, params), entry.note, "class")
    norm = NORM_CLASSES.get(type(module))
    if norm is not None:
        return _norm(norm, module, norm_module_parts(module)[2], None)
    grouping = GROUP_NORM_CLASSES[type(module)](module) if type(module) in GROUP_NORM_CLASSES else None
    if grouping is not None:
        channels, groups = grouping
        what = "BatchNorm on the batch's statistics" if groups is None else f"GroupNorm ({groups} groups)"
        return Replacement(lambda s: group_norm(s, module, channels, groups), f"{what} from x^2, rsqrt and products",
                           "class")
    if type(module) is nn.Softmax:
        return Replacement(lambda s: s.softmax(module.dim), "softmax from exp2-frac, reciprocal, products (Eq. 13)",
                           "class")
    if type(module) is nn.MaxPool2d and module.dilation in (1, (1, 1)) and not module.ceil_mode \
            and not module.return_indices:
        return Replacement(lambda s: s.max_pool(module.kernel_size, module.stride, module.padding),
                           "max pooling as m + relu(v - m) on rectifier neurons", "class")
    return None


def group_norm(settings: OpSettings, module: nn.Module, channels: int, groups: Optional[int]) -> nn.Module:
    """The method's per-group norm for ``module``, or an error naming it when the method has none."""
    if not hasattr(settings, "group_norm"):
        raise TypeError(f"{type(settings).__name__} builds no per-group norm, so {type(module).__name__} (normalising "
                        "with its input's statistics) cannot convert with this method; use method='mbe'")
    return settings.group_norm(channels, groups, module.weight, module.bias, module.eps)


def _norm(norm: Norm, module: nn.Module, eps: float, shape: Optional[Tuple[int, ...]]) -> Replacement:
    weight, bias, _ = norm_module_parts(module)
    shape = tuple(getattr(module, "normalized_shape", None) or shape or tuple(weight.shape))
    return Replacement(lambda s: s.norm(norm, shape, weight, bias, eps),
                       f"{norm.name} from x^2, rsqrt and products (eps={eps:g})", "class")


def fingerprint_candidates(model: nn.Module) -> Dict[str, nn.Module]:
    """Leaf modules of unlisted classes that could be an activation or a norm: no children, at most a
    1-D weight and a 1-D bias."""
    found = {}
    for path, m in model.named_modules():
        if not path or next(m.children(), None) is not None or is_opaque(m) or isinstance(m, LINEAR_MODULES):
            continue
        if by_class(m) is not None or type(m) in (nn.Softmax, nn.MaxPool2d):
            continue
        params = dict(m.named_parameters(recurse=False))
        if set(params) <= {"weight", "bias"} and all(p.dim() == 1 for p in params.values()):
            found[path] = m
    return found


def record_inputs(model: nn.Module, modules: Dict[str, nn.Module], run: Callable[[], None]) -> Dict[str, torch.Tensor]:
    """The first single-tensor input each module receives while ``run()`` runs."""
    seen: Dict[str, torch.Tensor] = {}

    def hook(path: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if path not in seen and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) \
                    and args[0].is_floating_point() and args[0].numel():
                seen[path] = args[0].detach().clone()
        return record

    handles = [m.register_forward_pre_hook(hook(p), with_kwargs=True) for p, m in modules.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """``y`` (the module's output, in its dtype) equals ``ref`` (the float32 reference) to the
    resolution of ``y``'s dtype: ``1e-5`` in float32, four rounding steps in half precision."""
    if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
        return False
    rtol = max(1e-5, 4 * torch.finfo(y.dtype).eps)
    y, ref = y.double(), ref.double()
    return bool(torch.allclose(y, ref, rtol=rtol, atol=rtol / 10 * max(1.0, float(ref.abs().max()))))


def _float32(value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A half-precision tensor in float32 (references are computed there), others as they are."""
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in HALF else value


def fingerprint(module: nn.Module, x: torch.Tensor) -> Optional[Replacement]:
    """What ``module`` computes, if it is a catalog activation (on a ramp over +-6) or norm (on
    ``x`` and a random input of its shape, for every eps it may use); ``None`` otherwise."""
    with torch.no_grad():
        weight, bias, eps = norm_module_parts(module)
        if weight is None and bias is None:
            ramp = torch.linspace(-PROBE_SPAN, PROBE_SPAN, x.numel(), dtype=x.dtype, device=x.device).reshape(x.shape)
            y = module(ramp)
            if _close(y, ramp):
                return None  # identity: linear
            for entry in ACTIVATIONS.values():
                if entry.fingerprint and _close(y, entry.reference(_float32(ramp))):
                    return Replacement(lambda s, e=entry: s.activation(e, {}), f"{entry.note}; recognised by what it computes",
                                       "fingerprint")
        probes = [x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device) * 3]
        outputs = [module(p) for p in probes]
        for norm in NORMS:
            channels = x.shape[1] if norm.channels_first and x.dim() >= 3 else x.shape[-1]
            if weight is not None and weight.numel() != channels or norm.channels_first and x.dim() < 3:
                continue
            for candidate in dict.fromkeys((eps, 1e-5, 1e-6, 1e-12)):
                if all(_close(y, norm.reference(_float32(p), _float32(weight), _float32(bias), candidate))
                       for p, y in zip(probes, outputs)):
                    shape = (channels,)
                    built = _norm(norm, module, candidate, shape)
                    return Replacement(built.build, built.note + "; recognised by what it computes", "fingerprint")
    return None


def plan(model: nn.Module, inputs: Dict[str, torch.Tensor],
         overrides: Callable[[nn.Module], Optional[Replacement]]) -> Dict[str, Replacement]:
    """Every module to replace whole, by path: a rule override, a listed class, or a fingerprint match."""
    out: Dict[str, Replacement] = {}
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in out):
            continue
        found = overrides(module) or by_class(module)
        if found is None and path in inputs:
            found = fingerprint(module, inputs[path])
        if found is not None:
            out[path] = found
    return out


CALL_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
              "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")


def move_hooks(old: nn.Module, new: nn.Module) -> None:
    """The forward, pre-forward and backward hooks of ``old`` run on ``new`` instead (in their order,
    after any ``new`` had): the module that replaces or wraps ``old`` computes its function, so a
    hook that reads or edits its inputs or output keeps its meaning (it receives ``new``)."""
    for name in CALL_HOOKS:
        getattr(new, name).update(getattr(old, name))
        getattr(old, name).clear()
    if old._is_full_backward_hook is not None:
        new._is_full_backward_hook = old._is_full_backward_hook


def apply(model: nn.Module, replacements: Dict[str, Replacement], settings: SpikingMethod,
          only: Callable[[nn.Module, Replacement], bool] = lambda m, how: True) -> List[Tuple[str, nn.Module, nn.Module, Replacement]]:
    """Put each built replacement (for which ``only(new, how)``) in place; returns ``(path, old, new, how)``.
    A replacement left for later keeps the module built here, so nothing is built twice."""
    done = []
    for path, how in list(replacements.items()):
        old = model.get_submodule(path)
        new = how.build(settings_at(settings, path))
        if not only(new, how):
            replacements[path] = dataclasses.replace(how, build=lambda s, built=new: built)
            continue
        param = next(old.parameters(), None)
        new = new.to(param.device) if param is not None else new
        move_hooks(old, new)
        model.set_submodule(path, new)
        done.append((path, old, new, how))
        del replacements[path]
    return done
