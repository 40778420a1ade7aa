"""One-call conversion: ``spikingjelly_mbe.convert(model, T=16, calib_data=...)``."""
from __future__ import annotations

import dataclasses
import logging
import numbers
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConverter

from ..ops.ecmt_settings import ECMTSettings
from ..ops.precision import Budget
from .calibration import Batch, Calibration, as_calibration
from .options import DEFAULTS
from .recipe import MBETransformerRecipe

log = logging.getLogger("spikingjelly_mbe.conversion")


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model`` checked to be a module; a ``torch.compile`` wrapper gives its original module (the
    conversion runs the model's own forward; compile the converted model if wanted)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (the ANN to convert), got {type(model).__name__}")
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        log.info("convert: model is a torch.compile wrapper; converting its original module (model._orig_mod). "
                 "Compile the converted model if wanted: torch.compile(convert(...))")
        return original
    return model


def integer_like(value: Any) -> Any:
    """A NumPy or torch integer scalar as a Python ``int``; anything else unchanged (checked later)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def convert(model: nn.Module, T: int = DEFAULTS.T, calib_data: Optional[Iterable[Batch]] = None,
            mode: str = DEFAULTS.mode, allow_float_fallback: bool = False, *, N: int = DEFAULTS.N,
            calibration: Optional[Calibration] = None,
            activation_N: Optional[int] = DEFAULTS.activation_N, method: str = "mbe",
            ecmt: Optional[ECMTSettings] = None, split_bits: Optional[int] = DEFAULTS.split_bits,
            code: str = DEFAULTS.code, budget: Budget = DEFAULTS.budget,
            center_inputs: bool = DEFAULTS.center_inputs,
            rectified_activations: bool = DEFAULTS.rectified_activations,
            norm_exponents: bool = DEFAULTS.norm_exponents) -> nn.Module:
    """A new spiking model computing ``model``'s function with MBE operators; ``model`` is untouched.

    ``calib_data``: a few unlabeled batches (tensors or dicts of forward kwargs): the model runs on
    them so conversion sees every nonlinear operation it computes, and they set the product ranges
    (Eq. 9); ``calibration`` sets method/percentile/explicit ranges (its ``data`` is replaced by
    ``calib_data`` when given). ``activation_N``: bases of the fitted activations (default 8,
    ``None`` means ``N``; see :class:`OpSettings`); ``split_bits``: Softmax/norm digits moved into a
    table (default ``min(3, T - 1)``); ``code``: the digit code of every spike-coded operand,
    ``'binary'`` (MBE_Id, Eq. 9) or ``'signed'`` (signed digits: the same values, fewer spikes; see
    :data:`~spikingjelly_mbe.ops.coding.CODES`); ``budget``: the precision of every calibrated code
    (the weight layers' inputs and the products' operands), whose rounding noise is ``budget`` of
    the operand's RMS on the calibration batches (default ``'auto'``: ``2**-(3.5 + 5T/16)`` of a weight
    layer's typical input channel, ``2**-9`` of a product's operand; ``None``: ``T`` digits of
    its maximum; :mod:`~spikingjelly_mbe.ops.precision`); ``center_inputs``: code each weight layer's
    input channels around their calibrated medians, carried by the bias (default ``True``;
    :class:`~spikingjelly_mbe.ops.SpikingWeightInput`); ``rectified_activations``: GELU and SiLU as an
    exact rectifier plus a fitted residual (default ``True``; :class:`~spikingjelly_mbe.ops.RectifiedActivation`);
    ``norm_exponents``: every element a LayerNorm/RMSNorm codes carries its own exponent (default
    ``True``; :class:`~spikingjelly_mbe.ops.SpikingLayerNorm`).
    Strict by default: a nonlinear operation with
    no spiking operator raises, naming its module path; ``allow_float_fallback=True`` keeps it in
    float and lists it. The report is ``converted.mbe_report``. ``method="ecmt"`` converts the
    same sites with ECMT's operators (Multi-Threshold neurons, Expectation Compensation; not fully
    spike-driven, run ``T`` times per input; ``ecmt`` sets its ``n``/``percentile``).
    """
    model = unwrap_model(model)
    T, N, activation_N, split_bits = (integer_like(v) for v in (T, N, activation_N, split_bits))
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        raise TypeError("calib_data must be an iterable of batches, not a single batch: pass [batch] "
                        f"(got one {type(calib_data).__name__})")
    if calib_data is not None and not isinstance(calib_data, Iterable):
        raise TypeError(f"calib_data must be an iterable of batches (a list of tensors or of dicts of forward "
                        f"kwargs), got {type(calib_data).__name__}")
    calibration = as_calibration(calibration)
    if calib_data is not None:
        calibration = dataclasses.replace(calibration, data=calib_data)
    recipe = MBETransformerRecipe(T=T, N=N, calibration=calibration, mode=mode,
                                  allow_float_fallback=allow_float_fallback, activation_N=activation_N,
                                  method=method, ecmt=ecmt, split_bits=split_bits, code=code, budget=budget,
                                  center_inputs=center_inputs, rectified_activations=rectified_activations,
                                  norm_exponents=norm_exponents)
    return ModuleConverter(recipe).convert(model)
