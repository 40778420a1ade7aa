"""spikingjelly_mbe: training-free conversion of pretrained Transformers into spiking networks
with Multi-basis Exponential Decay (MBE) neurons, as a SpikingJelly plugin."""
from .fitting import FittedNeuron, FittedNeuronError, available, fit_neuron, load_fitted
from .fitting.library import fit_on_first_use
from .neurons import FSNode, MBENode, MultiBasisNode
from .version import __version__

__all__ = ["FSNode", "FittedNeuron", "FittedNeuronError", "MBENode", "MultiBasisNode", "__version__",
           "available", "convert", "fit_neuron", "load_fitted"]


fit_on_first_use(fit_neuron)  # loading a fit that is neither shipped nor cached fits it (the top injects the optimiser)


def __getattr__(name: str):
    """``convert`` loads the conversion layer (and transformers, timm) on first use only, so that
    ``import spikingjelly_mbe.ops`` stays light."""
    if name == "convert":
        from .conversion import convert
        return convert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
