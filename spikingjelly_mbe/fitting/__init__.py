"""Fitting neurons to target functions, the registry of neuron kinds, and the one library of fitted
parameters (shipped, cached, or fitted on first use)."""
from .checks import FittedNeuronError
from .fitted import FittedNeuron, error_figures, fit_key
from .kinds import KINDS, NeuronKind, get_kind
from .library import available, load_fitted, load_fitted_function, load_fitted_on
from .routine import fit_neuron
from .targets import SPLIT_TARGETS, TARGETS, SplitTarget, Target, get_target

__all__ = ["FittedNeuron", "FittedNeuronError", "KINDS", "NeuronKind", "SPLIT_TARGETS", "SplitTarget", "TARGETS",
           "Target", "available", "error_figures", "fit_key", "fit_neuron", "get_kind", "get_target", "load_fitted",
           "load_fitted_function", "load_fitted_on"]
