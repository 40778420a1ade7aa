"""The options of a conversion, checked once, and the last step every conversion ends with."""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch.nn as nn
from spikingjelly.activation_based import base
from spikingjelly.activation_based.ann2snn import ModuleConverter

from ..ops.base import set_checks
from ..ops.ecmt_settings import ECMTSettings
from ..ops.precision import Budget
from .calibration import Batch, Calibration, as_calibration
from .checkpoint import attach_settings
from .ecmt import ECMTMethod
from .report import ConversionReport
from .settings import OpSettings

DEFAULTS = OpSettings()
METHODS = ("mbe", "ecmt")
ECMT_PERCENTILE = 90.0  # ECMT's MT thresholds (the paper's 99 saturates fewer inputs)


class MBERecipeOptions:
    """``T`` timesteps, ``N`` bases (``activation_N`` for the fitted activations, see
    :class:`OpSettings`), the operands' digit ``code`` and precision ``budget``, whether weight-layer inputs are
    coded around their channel medians (``center_inputs``), whether GELU and SiLU are a rectifier plus a
    fitted residual (``rectified_activations``), whether every element a norm codes carries its own exponent
    (``norm_exponents``), ``calibration`` (a :class:`Calibration`, an
    iterable of batches or ``None``), operator ``mode``, whether unsupported nonlinearities may stay in float, and the
    ``method``: ``'mbe'`` (this project's fully spike-driven operators) or ``'ecmt'`` (the peer
    method: Multi-Threshold neurons and Expectation Compensation; ``ecmt`` overrides its settings)."""

    recipe_name = "mbe_transformer"

    def __init__(self, T: int = DEFAULTS.T, N: int = DEFAULTS.N,
                 calibration: Union[Calibration, Iterable[Batch], None] = None,
                 mode: str = DEFAULTS.mode, allow_float_fallback: bool = False,
                 activation_N: Optional[int] = DEFAULTS.activation_N, method: str = "mbe",
                 ecmt: Optional[ECMTSettings] = None, split_bits: Optional[int] = DEFAULTS.split_bits,
                 code: str = DEFAULTS.code, budget: Budget = DEFAULTS.budget,
                 center_inputs: bool = DEFAULTS.center_inputs,
                 rectified_activations: bool = DEFAULTS.rectified_activations,
                 norm_exponents: bool = DEFAULTS.norm_exponents) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "ecmt":
            self.recipe_name = "ecmt_transformer"
            self.settings = ECMTMethod(ecmt or ECMTSettings(T=T, percentile=ECMT_PERCENTILE, mode=mode))
        else:
            self.settings = OpSettings(T=T, N=N, mode=mode, activation_N=activation_N, split_bits=split_bits,
                                       code=code, budget=budget, center_inputs=center_inputs,
                                       rectified_activations=rectified_activations, norm_exponents=norm_exponents)
        self.calibration = as_calibration(calibration)
        self.allow_float_fallback = allow_float_fallback
        self.report: Optional[ConversionReport] = None

    def validate(self, converter: ModuleConverter) -> None:
        self.settings.validate()
        self.calibration.validate()
        if not isinstance(self.allow_float_fallback, bool):
            raise ValueError(f"allow_float_fallback must be a bool, got {self.allow_float_fallback!r}")

    def finish(self, model: nn.Module) -> nn.Module:
        """Attach the metadata and the settings (in the ``state_dict``); checks are deferred, so a
        forward never waits for the device (the state reset before every forward is installed before
        calibration)."""
        model.ann2snn_recipe = self.recipe_name
        model.time_steps = self.settings.T
        model.mbe_report = self.report
        attach_settings(model, "ecmt" if self.recipe_name == "ecmt_transformer" else "mbe", self.settings)
        return set_checks(model, "deferred")


def reset_states(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: reset every SpikingJelly memory of the converted model (what
    ``functional.reset_net`` does, restricted to ``MemoryModule``s: a model's own modules may have
    an unrelated ``reset`` method, e.g. timm's classifier heads)."""
    for m in module.modules():
        if isinstance(m, base.MemoryModule):
            m.reset()
