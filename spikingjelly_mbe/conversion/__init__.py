"""Training-free conversion of Transformers to MBE spiking networks, as a SpikingJelly ann2snn recipe."""
import warnings as _warnings

from .api import convert
from .calibration import Calibration
from .catalog import ACTIVATIONS, NORMS, Activation, Norm
from .recipe import ECMTRecipe, MBETransformerRecipe
from . import registry as _registry
from .registry import (ArchitectureRule, ModuleRule, keep_as_linear, rebuild_before_calibration, register,
                       registered, replace_after_calibration, rule_for)
from .report import ConversionReport, UnsupportedNonlinearityError
from .settings import OpSettings, set_mode

__all__ = ["ACTIVATIONS", "Activation", "ArchitectureRule", "Calibration", "ConversionReport", "ECMTRecipe",
           "MBETransformerRecipe",
           "ModuleRule", "NORMS", "Norm", "OpSettings", "UnsupportedNonlinearityError", "convert", "keep_as_linear",
           "rebuild_before_calibration", "register", "registered", "replace_after_calibration", "rule_for", "set_mode"]


def __getattr__(name: str):
    if name == "MBETransformerFXRecipe":
        _warnings.warn("MBETransformerFXRecipe is deprecated: MBETransformerRecipe converts every model by what runs, "
                       "traceable or not", DeprecationWarning, stacklevel=2)
        return MBETransformerRecipe
    if name in _registry.DEPRECATED_VERBS:
        return _registry.deprecated_verb(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
