"""Training-free conversion of Transformers to MBE spiking networks, as a SpikingJelly ann2snn recipe."""
from .api import convert
from .calibration import Calibration
from .catalog import ACTIVATIONS, NORMS, Activation, Norm
from .recipe import ECMTRecipe, MBETransformerRecipe
from .registry import (ArchitectureRule, ModuleRule, keep_as_linear, rebuild_before_calibration, register,
                       registered, replace_after_calibration, rule_for)
from .report import ConversionReport, UnsupportedNonlinearityError
from .settings import OpSettings, set_mode

__all__ = ["ACTIVATIONS", "Activation", "ArchitectureRule", "Calibration", "ConversionReport", "ECMTRecipe",
           "MBETransformerRecipe",
           "ModuleRule", "NORMS", "Norm", "OpSettings", "UnsupportedNonlinearityError", "convert", "keep_as_linear",
           "rebuild_before_calibration", "register", "registered", "replace_after_calibration", "rule_for", "set_mode"]

