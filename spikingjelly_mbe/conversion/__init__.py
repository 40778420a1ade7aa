"""Training-free conversion of Transformers to spiking networks, as a SpikingJelly ann2snn recipe: the
method-neutral engine (catalog, interception, sites, lifecycle, report) and the registered methods."""
from .api import convert, set_mode
from .calibration import Calibration
from .catalog import NORMS, Norm
from .config import DEFAULTS, ConversionConfig
from .method import METHODS, ECMTSettings, OpSettings, SpikingMethod
from .recipe import ECMTRecipe, MBETransformerRecipe, SpikingRecipe
from .registry import (ArchitectureRule, ModuleRule, keep_as_linear, rebuild_before_calibration, register,
                       registered, replace_after_calibration, rule_for)
from .report import ConversionReport, UnsupportedNonlinearityError
from ..activations import ACTIVATIONS, Activation

__all__ = ["ACTIVATIONS", "Activation", "ArchitectureRule", "Calibration", "ConversionConfig", "ConversionReport",
           "DEFAULTS", "ECMTRecipe", "ECMTSettings", "MBETransformerRecipe", "METHODS", "ModuleRule", "NORMS", "Norm",
           "OpSettings", "SpikingMethod", "SpikingRecipe", "UnsupportedNonlinearityError", "convert", "keep_as_linear",
           "rebuild_before_calibration", "register", "registered", "replace_after_calibration", "rule_for", "set_mode"]
