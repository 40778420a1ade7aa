"""Fitting neurons to target functions, and the shipped library of fitted parameters."""
from .fitted import FittedNeuron, FittedNeuronError, error_figures
from .library import available, load_fitted, load_fitted_on
from .routine import fit_neuron
from .targets import TARGETS, Target, get_target

__all__ = ["FittedNeuron", "FittedNeuronError", "TARGETS", "Target", "available", "error_figures",
           "fit_neuron", "get_target", "load_fitted", "load_fitted_on"]
