"""Rule overrides by model class: conversion does not need them (it decides by what runs), but a rule
can say, for module classes of one model family, to rebuild a module before calibration
(:func:`rebuild_before_calibration`), to replace it after (:func:`replace_after_calibration`), or to
keep it as it is because its computation is linear (:func:`keep_as_linear`). User code registers
them with :func:`register`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from .method import SpikingMethod

Builder = Callable[[nn.Module, SpikingMethod], nn.Module]
EXPOSE, SPIKE, KEEP = "expose", "spike", "keep"


@dataclass(frozen=True)
class ModuleRule:
    """What conversion does with one module class (matched by exact type).

    ``expose`` (before calibration): rebuild the module, e.g. so its parts become building blocks.
    ``spike`` (after calibration): replace it by a spiking operator. ``keep``: its own computation
    is linear; it runs as it is and is not looked into; ``note`` says why.
    """

    phase: str
    build: Optional[Builder] = None
    note: str = ""


def rebuild_before_calibration(build: Builder, note: str) -> ModuleRule:
    """Rebuild modules of this class before calibration, e.g. so that their parts become building blocks."""
    return ModuleRule(EXPOSE, build, note)


def replace_after_calibration(build: Builder, note: str) -> ModuleRule:
    """Replace modules of this class by a spiking operator ``build(module, settings)`` after calibration."""
    return ModuleRule(SPIKE, build, note)


def keep_as_linear(note: str = "") -> ModuleRule:
    """Run modules of this class as they are: their own computation is linear (``note`` says why)."""
    return ModuleRule(KEEP, None, note)


@dataclass(frozen=True)
class ArchitectureRule:
    """Overrides for a model family: its top-level classes, rules for some of the module classes it
    contains, and a ``setup`` run on the model after the expose step."""

    name: str
    model_classes: Tuple[type, ...]
    modules: Mapping[type, ModuleRule]
    setup: Optional[Callable[[nn.Module], None]] = None


_REGISTRY: Dict[type, ArchitectureRule] = {}


def register(rule: ArchitectureRule) -> ArchitectureRule:
    """Make ``rule`` the overrides for each of its model classes (and their subclasses)."""
    for cls in rule.model_classes:
        _REGISTRY[cls] = rule
    return rule


def registered() -> List[str]:
    """Names of the model classes that have override rules."""
    return sorted(cls.__name__ for cls in _REGISTRY)


def rule_for(model: nn.Module) -> Optional[ArchitectureRule]:
    """The overrides of the nearest registered class in ``type(model)``'s MRO (``None``: no overrides)."""
    for cls in type(model).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None
