"""The options of a conversion, checked once (:mod:`.config`), and the last step every conversion ends with."""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Optional, Union

import torch.nn as nn
from spikingjelly.activation_based import base
from spikingjelly.activation_based.ann2snn import ModuleConverter

from ..ops.base import set_checks
from .calibration import Batch, Calibration, as_calibration
from .checkpoint import attach_settings
from .config import ConversionConfig, resolve
from .method import SpikingMethod
from .report import ConversionReport
from .rotation import check_mode


class RecipeOptions:
    """``calibration`` (a :class:`Calibration`, an iterable of batches or ``None``), a
    :data:`~.config.ConversionConfig` and option overrides (``T=8``, ``code='binary'``, ...;
    ``method_settings``: a method's settings object given whole, e.g. an ``ECMTSettings``).
    An option the chosen method does not use raises, naming it."""

    method: ClassVar[Optional[str]] = None  # a recipe of one method fixes it

    def __init__(self, calibration: Union[Calibration, Iterable[Batch], None] = None,
                 config: Optional[ConversionConfig] = None, *, method_settings: Optional[SpikingMethod] = None,
                 **options: Any) -> None:
        if self.method is not None:
            if options.setdefault("method", self.method) != self.method:
                raise ValueError(f"{type(self).__name__} converts with method={self.method!r}, got "
                                 f"method={options['method']!r}")
        self.config, self.settings = resolve(config, options, method_settings)
        self.recipe_name = f"{self.config.method}_transformer"
        self.calibration = as_calibration(calibration)
        self.allow_float_fallback = self.config.allow_float_fallback
        self.report: Optional[ConversionReport] = None

    def validate(self, converter: ModuleConverter) -> None:
        self.settings.validate()
        self.calibration.validate()
        if not isinstance(self.allow_float_fallback, bool):
            raise ValueError(f"allow_float_fallback must be a bool, got {self.allow_float_fallback!r}")
        check_mode(self.config.rotate)

    def finish(self, model: nn.Module) -> nn.Module:
        """Attach the metadata and the settings (in the ``state_dict``); checks are deferred, so a
        forward never waits for the device (the state reset before every forward is installed before
        calibration)."""
        model.ann2snn_recipe = self.recipe_name
        model.time_steps = self.settings.T
        model.spiking_report = model.mbe_report = self.report  # mbe_report: the 0.1 name
        attach_settings(model, self.config.method, self.settings)
        return set_checks(model, "deferred")


def reset_states(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: reset every SpikingJelly memory of the converted model (what
    ``functional.reset_net`` does, restricted to ``MemoryModule``s: a model's own modules may have
    an unrelated ``reset`` method, e.g. timm's classifier heads)."""
    for m in module.modules():
        if isinstance(m, base.MemoryModule):
            m.reset()
