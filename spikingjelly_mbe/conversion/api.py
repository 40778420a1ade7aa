"""One-call conversion: ``spikingjelly_mbe.convert(model, T=16, calib_data=...)``."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch.nn as nn
from spikingjelly.activation_based.ann2snn import FXConverter, ModuleConverter

from .calibration import Batch, Calibration, as_calibration
from .operators import OpSettings
from .fx_recipe import MBETransformerFXRecipe
from .recipe import MBETransformerRecipe


def convert(model: nn.Module, T: int = 16, calib_data: Optional[Iterable[Batch]] = None, mode: str = "fast",
            allow_float_fallback: bool = False, *, N: int = 4, calibration: Optional[Calibration] = None,
            fx: bool = False, activation_N: Optional[int] = OpSettings.activation_N) -> nn.Module:
    """A new spiking model computing ``model``'s function with MBE operators; ``model`` is untouched.

    ``calib_data``: a few unlabeled batches (tensors or dicts of forward kwargs) that set the
    product ranges (Eq. 9); ``calibration`` sets method/percentile/explicit ranges (its ``data``
    is replaced by ``calib_data`` when given). ``fx=True`` uses the FX recipe instead of the
    per-architecture module rules. ``activation_N``: bases of the GELU/SiLU/tanh neurons (default 8,
    ``None`` means ``N``; see :class:`OpSettings`). The report is ``converted.mbe_report``.
    """
    calibration = as_calibration(calibration)
    if calib_data is not None:
        calibration = dataclasses.replace(calibration, data=calib_data)
    options = dict(T=T, N=N, calibration=calibration, mode=mode, allow_float_fallback=allow_float_fallback,
                   activation_N=activation_N)
    if fx:
        return FXConverter(MBETransformerFXRecipe(**options)).convert(model)
    return ModuleConverter(MBETransformerRecipe(**options)).convert(model)
