"""Training-free conversion of Transformers to MBE spiking networks, as SpikingJelly ann2snn recipes."""
from .api import convert
from .calibration import Calibration
from .fx_recipe import MBETransformerFXRecipe
from .operators import OpSettings, set_mode
from .recipe import MBETransformerRecipe
from .registry import ArchitectureRule, ModuleRule, expose, keep, register, registered, rule_for, spike
from .report import ConversionReport, UnsupportedNonlinearityError

__all__ = ["ArchitectureRule", "Calibration", "ConversionReport", "MBETransformerFXRecipe", "MBETransformerRecipe",
           "ModuleRule", "OpSettings", "UnsupportedNonlinearityError", "convert", "expose", "keep", "register",
           "registered", "rule_for", "set_mode", "spike"]
