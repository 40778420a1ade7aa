"""Rule overrides by model class: conversion does not need them (it decides by what runs), but a rule
can say, for module classes of one model family, to rebuild a module before calibration
(``expose``), to replace it after (``spike``), or to keep it as it is because its computation is
linear (``keep``). Public modules of ``rules/`` (and user code) register them."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from .settings import OpSettings

Builder = Callable[[nn.Module, OpSettings], nn.Module]
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


def expose(build: Builder, note: str) -> ModuleRule:
    return ModuleRule(EXPOSE, build, note)


def spike(build: Builder, note: str) -> ModuleRule:
    return ModuleRule(SPIKE, build, note)


def keep(note: str = "") -> ModuleRule:
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
_discovered = False


def register(rule: ArchitectureRule) -> ArchitectureRule:
    """Make ``rule`` the overrides for each of its model classes (and their subclasses)."""
    for cls in rule.model_classes:
        _REGISTRY[cls] = rule
    return rule


def _discover() -> None:
    global _discovered
    if not _discovered:
        from . import rules
        for info in pkgutil.iter_modules(rules.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{rules.__name__}.{info.name}")
        _discovered = True


def registered() -> List[str]:
    """Names of the model classes that have override rules."""
    _discover()
    return sorted(cls.__name__ for cls in _REGISTRY)


def rule_for(model: nn.Module) -> Optional[ArchitectureRule]:
    """The overrides of the nearest registered class in ``type(model)``'s MRO (``None``: no overrides)."""
    _discover()
    for cls in type(model).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None
