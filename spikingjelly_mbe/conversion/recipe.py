"""``MBETransformerRecipe``: training-free MBE conversion of a module tree (SpikingJelly ``ModuleConverter``)."""
from __future__ import annotations

import copy

import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConversionRecipe, ModuleConverter

from .calibration import calibrate
from .options import MBERecipeOptions
from .registry import EXPOSE, SPIKE, ArchitectureRule, rule_for
from .report import ConversionReport, UnsupportedNonlinearityError
from .tree import apply_phase, record_fallback, record_kept, unknown_modules


class MBETransformerRecipe(MBERecipeOptions, ModuleConversionRecipe):
    """Replace a Transformer's nonlinear operations by MBE spiking operators, weights untouched.

    ``ModuleConverter(recipe).convert(model)`` returns a new model; ``model`` keeps working as the
    ANN. The steps follow SpikingJelly's lifecycle, on the module tree instead of an FX graph:
    ``prepare`` (deep copy, eval, rule of the model class, every module must have a rule) ->
    ``insert_observers`` (products become spiking operators that record operand ranges while they
    compute in float; HF attention switches to the spiking ``AttentionInterface`` function) ->
    ``calibrate`` (Eq. 9 ranges) -> ``replace`` (activations, norms, softmax) -> ``finalize``.
    """

    def convert_module(self, converter: ModuleConverter, ann: nn.Module) -> nn.Module:
        model, rule = self.prepare(converter, ann)
        self.insert_observers(converter, model, rule)
        self.calibrate(converter, model)
        self.replace(converter, model, rule)
        return self.finalize(converter, model, rule)

    def prepare(self, converter: ModuleConverter, ann: nn.Module) -> tuple[nn.Module, ArchitectureRule]:
        rule = rule_for(ann)
        unknown = unknown_modules(ann, rule.modules)
        if unknown and not self.allow_float_fallback:
            raise UnsupportedNonlinearityError(unknown)
        self.report = ConversionReport()
        record_fallback(unknown, self.report, f"no rule in {rule.name}: its own forward runs in float")
        return copy.deepcopy(ann).eval().to(converter.device), rule

    def insert_observers(self, converter: ModuleConverter, model: nn.Module, rule: ArchitectureRule) -> None:
        apply_phase(model, rule.modules, EXPOSE, self.settings, self.report)
        if rule.setup is not None:
            rule.setup(model)

    def calibrate(self, converter: ModuleConverter, model: nn.Module) -> None:
        calibrate(model, self.calibration, converter.device)

    def replace(self, converter: ModuleConverter, model: nn.Module, rule: ArchitectureRule) -> None:
        apply_phase(model, rule.modules, SPIKE, self.settings, self.report)

    def finalize(self, converter: ModuleConverter, model: nn.Module, rule: ArchitectureRule) -> nn.Module:
        record_kept(model, rule.modules, self.report)
        return self.finish(model)
