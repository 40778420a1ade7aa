"""Training-free conversion of Transformers to MBE spiking networks, as a SpikingJelly ann2snn recipe."""
import warnings as _warnings

from .api import convert
from .calibration import Calibration
from .catalog import ACTIVATIONS, NORMS, Activation, Norm
from .recipe import MBETransformerRecipe
from .registry import ArchitectureRule, ModuleRule, expose, keep, register, registered, rule_for, spike
from .report import ConversionReport, UnsupportedNonlinearityError
from .settings import OpSettings, set_mode

__all__ = ["ACTIVATIONS", "Activation", "ArchitectureRule", "Calibration", "ConversionReport", "MBETransformerRecipe",
           "ModuleRule", "NORMS", "Norm", "OpSettings", "UnsupportedNonlinearityError", "convert", "expose", "keep",
           "register", "registered", "rule_for", "set_mode", "spike"]


def __getattr__(name: str):
    if name == "MBETransformerFXRecipe":
        _warnings.warn("MBETransformerFXRecipe is deprecated: MBETransformerRecipe converts every model by what runs, "
                       "traceable or not", DeprecationWarning, stacklevel=2)
        return MBETransformerRecipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
