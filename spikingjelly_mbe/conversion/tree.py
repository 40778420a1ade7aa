"""Module-tree passes: find modules without a rule, apply one phase of rules, list what stays linear."""
from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import torch.nn as nn

from .operators import OpSettings
from .registry import KEEP, ModuleRule
from .report import ConversionReport, Entry

Table = Mapping[type, ModuleRule]


def unknown_modules(model: nn.Module, table: Table) -> List[Tuple[str, str]]:
    """``(path, type name)`` of every module whose exact type has no rule."""
    return [(path, type(m).__name__) for path, m in model.named_modules() if type(m) not in table]


def _at(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def apply_phase(model: nn.Module, table: Table, phase: str, settings: OpSettings,
                report: ConversionReport) -> None:
    """Build the replacement of every module whose rule belongs to ``phase`` and put it in place.

    Modules are visited parents first; a child the parent's replacement no longer holds is skipped.
    """
    for path, module in list(model.named_modules()):
        rule = table.get(type(module))
        if rule is None or rule.phase != phase or _at(model, path) is not module:
            continue
        if not path:
            raise ValueError(f"the root {type(module).__name__} cannot be replaced, only its submodules")
        new = rule.build(module, settings)
        if new is not module:
            model.set_submodule(path, new)
        report.replaced.append(Entry(path, type(module).__name__, type(new).__name__, rule.note))


def record_kept(model: nn.Module, table: Table, report: ConversionReport) -> None:
    """Add every module kept for being linear (and whose rule says why) to the report."""
    for path, m in model.named_modules():
        rule = table.get(type(m))
        if rule is not None and rule.phase == KEEP and rule.note:
            report.kept.append(Entry(path, type(m).__name__, type(m).__name__, rule.note))


def record_fallback(items: List[Tuple[str, str]], report: ConversionReport, why: str) -> None:
    report.fallback.extend(Entry(path, kind, kind, why) for path, kind in items)
