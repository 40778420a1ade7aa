"""Rule overrides by model class: conversion does not need them (it decides by what runs), but a rule
can say, for module classes of one model family, to rebuild a module before calibration
(:func:`rebuild_before_calibration`), to replace it after (:func:`replace_after_calibration`), or to
keep it as it is because its computation is linear (:func:`keep_as_linear`). Public modules of
``rules/`` (and user code) register them."""
from __future__ import annotations

import importlib
import pkgutil
import warnings
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


def rebuild_before_calibration(build: Builder, note: str) -> ModuleRule:
    """Rebuild modules of this class before calibration, e.g. so that their parts become building blocks."""
    return ModuleRule(EXPOSE, build, note)


def replace_after_calibration(build: Builder, note: str) -> ModuleRule:
    """Replace modules of this class by a spiking operator ``build(module, settings)`` after calibration."""
    return ModuleRule(SPIKE, build, note)


def keep_as_linear(note: str = "") -> ModuleRule:
    """Run modules of this class as they are: their own computation is linear (``note`` says why)."""
    return ModuleRule(KEEP, None, note)


DEPRECATED_VERBS = {"expose": rebuild_before_calibration, "spike": replace_after_calibration, "keep": keep_as_linear}


def deprecated_verb(name: str) -> Callable[..., ModuleRule]:
    """The verb that replaced the bare ``name`` (``expose``/``spike``/``keep``), with a
    :class:`DeprecationWarning` pointing at the caller's import (called from a module ``__getattr__``)."""
    new = DEPRECATED_VERBS[name]
    warnings.warn(f"{name} is deprecated: use {new.__name__} (same arguments)", DeprecationWarning, stacklevel=3)
    return new


def __getattr__(name: str) -> Callable[..., ModuleRule]:
    if name in DEPRECATED_VERBS:
        return deprecated_verb(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
