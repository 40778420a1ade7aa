"""The weight layers a method drives with spikes (``nn.Linear``, GPT-2's ``Conv1D``, 1-D and 2-D
convolutions), named ``'module:Class'`` so that recognising one loads neither transformers nor timm."""
from __future__ import annotations

import torch.nn as nn

WEIGHT_LAYER_NAMES = frozenset({"torch.nn.modules.linear:Linear", "transformers.pytorch_utils:Conv1D",
                                "torch.nn.modules.conv:Conv1d", "torch.nn.modules.conv:Conv2d"})


def is_weight_layer(module: nn.Module) -> bool:
    """``module`` is (a subclass of) one of the weight layers and computes its ``forward`` (a subclass
    with a forward of its own, e.g. a router returning scores and choices, is not one)."""
    for cls in type(module).__mro__:
        if f"{cls.__module__}:{cls.__qualname__}" in WEIGHT_LAYER_NAMES:
            return type(module).forward is cls.forward
    return False


def check_weight_layer(op: type, module: object) -> nn.Module:
    """``module``, what ``op.from_float`` got, when it is a weight layer (:func:`is_weight_layer`) or a
    module declaring itself one (class attribute ``weight_layer = True``: a linear map of its input by
    its ``weight``, such as one expert's slice of a stacked weight); a ``TypeError`` otherwise."""
    if isinstance(module, nn.Module) and (is_weight_layer(module) or getattr(type(module), "weight_layer", False) is True):
        return module
    raise TypeError(f"{op.__name__}.from_float takes a weight layer (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d), got "
                    f"{type(module).__name__}")
