"""ECMT (Huang et al., ACM MM 2024), the peer method: its Multi-Threshold neuron, its operators
(MT-coded weight layers and products, Expectation Compensation), the time-stepped runner, and
:class:`ECMTSettings`, the factory conversion asks for each site's operator
(``convert(model, method="ecmt")``)."""
from .expectation import ExpectationCompensation, ProductCompensation
from .multi_threshold import MTLinearInput
from .neuron import MTNode
from .settings import ECMTSettings
from .stepping import TimeStepped, run_steps

__all__ = ["ECMTSettings", "ExpectationCompensation", "MTLinearInput", "MTNode", "ProductCompensation", "TimeStepped",
           "run_steps"]
