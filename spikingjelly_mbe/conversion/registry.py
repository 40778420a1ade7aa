"""Per-architecture rules, registered by model class; every public module of ``rules/`` is one architecture."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from .operators import OpSettings

Builder = Callable[[nn.Module, OpSettings], nn.Module]
EXPOSE, SPIKE, KEEP = "expose", "spike", "keep"


@dataclass(frozen=True)
class ModuleRule:
    """What conversion does with one module class (matched by exact type).

    ``expose`` (before calibration): rebuild the module so its products are spiking operators and
    its functional nonlinearities are child modules. ``spike`` (after calibration): replace it by
    a spiking operator. ``keep``: its own computation is linear or plumbing; ``note`` says why.
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
    """A model family: its top-level classes, a rule for every module class it contains, and a
    ``setup`` run on the model after the expose step (HF: switch to the spiking attention function)."""

    name: str
    model_classes: Tuple[type, ...]
    modules: Mapping[type, ModuleRule]
    setup: Optional[Callable[[nn.Module], None]] = None


_REGISTRY: Dict[type, ArchitectureRule] = {}
_discovered = False


def register(rule: ArchitectureRule) -> ArchitectureRule:
    """Make ``rule`` the one used for each of its model classes (and their subclasses)."""
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
    """Names of the model classes that have a rule."""
    _discover()
    return sorted(cls.__name__ for cls in _REGISTRY)


def rule_for(model: nn.Module) -> ArchitectureRule:
    """The rule of the nearest registered class in ``type(model)``'s MRO."""
    _discover()
    for cls in type(model).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    raise TypeError(f"no MBE architecture rule for {type(model).__name__}; registered: {registered()}. "
                    "Add a rule file under spikingjelly_mbe/conversion/rules/, or use the FX recipe "
                    "(MBETransformerFXRecipe) if the model traces with torch.fx.")
