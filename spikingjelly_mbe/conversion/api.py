"""One-call conversion: ``spikingjelly_mbe.convert(model, calib_data, T=16, ...)``."""
from __future__ import annotations

import dataclasses
import logging
import numbers
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConverter

from ..ops.base import MODES, set_on_ops
from .calibration import Batch, Calibration, as_calibration
from .config import ConversionConfig
from .method import SpikingMethod
from .recipe import SpikingRecipe

log = logging.getLogger("spikingjelly_mbe.conversion")
INTEGER_OPTIONS = ("T", "N", "activation_N", "split_bits", "n")  # a NumPy or torch integer scalar becomes an int


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


def convert(model: nn.Module, calib_data: Optional[Iterable[Batch]] = None, config: Optional[ConversionConfig] = None,
            *, calibration: Optional[Calibration] = None, ecmt: Optional[SpikingMethod] = None,
            **overrides: Any) -> nn.Module:
    """A new spiking model computing ``model``'s function with spiking operators; ``model`` is untouched.

    ``calib_data``: a few unlabeled batches (tensors or dicts of forward kwargs): the model runs on
    them so conversion sees every nonlinear operation it computes, and they set the product ranges
    (Eq. 9); ``calibration`` sets method/percentile/explicit ranges (its ``data`` is replaced by
    ``calib_data`` when given). ``config``: a :data:`~spikingjelly_mbe.conversion.ConversionConfig`
    (default: every option at its default); ``overrides``: any of its options by name, e.g.
    ``T=8``, ``code='binary'``, ``method='ecmt'``. The options and their meaning:

    * ``method``: ``'mbe'`` (this project's fully spike-driven operators,
      :class:`~spikingjelly_mbe.mbe.OpSettings`) or ``'ecmt'`` (the peer method: Multi-Threshold
      neurons and Expectation Compensation, not fully spike-driven, run ``T`` times per input;
      :class:`~spikingjelly_mbe.ecmt.ECMTSettings`, which ``ecmt=`` may give whole);
    * ``T``, ``mode`` (``'fast'`` or ``'simulate'``, the same semantics), ``allow_float_fallback``:
      strict by default, a nonlinear operation with no spiking operator raises naming its module
      path; ``True`` keeps it in float and lists it;
    * ``rotate``: function-preserving orthogonal rotations of the copy's weights before calibration
      (:mod:`~spikingjelly_mbe.conversion.rotation`): ``'off'``, ``'auto'`` (rotate a model of a
      supported pre-norm family, leave any other as it is and say why in the report),
      ``'hadamard'`` or ``'orthogonal'`` (the matrix; a model without a rotation layout raises);
    * MBE's ``N``, ``activation_N``, ``split_bits``, ``code``, ``operand_code`` (the weight layers'
      inputs', products' and matmuls' code alone: ``'ternary'``, balanced-ternary digits, about
      ``1.58 T`` binary digits in ``T`` steps), ``budget``, ``center_inputs``,
      ``rectified_activations``, ``norm_exponents``, ``centered_codes``, ``probability_exponents``, ``neuron`` (the neuron kind of the fitted
      activations, ``'mbe'`` or ``'fs'``), ``bias_correction``, ``digit_budget`` (digits per site
      allocated from calibration: the fewest synaptic events within an error budget) and
      ``energy_budget`` (the least error within a whole-model strict energy; both
      :mod:`~spikingjelly_mbe.conversion.allocation`), ``energy_by`` (``'digits'`` or ``'ranges'``: the
      weight inputs' channel ranges meet ``energy_budget``, :mod:`~spikingjelly_mbe.conversion.channel_ranges`;
      see :class:`~spikingjelly_mbe.mbe.OpSettings`);
      ECMT's ``n`` and ``percentile``. An option the chosen method does not use raises.

    The report is ``converted.spiking_report`` (also ``converted.mbe_report``).
    """
    model = unwrap_model(model)
    overrides = {k: integer_like(v) if k in INTEGER_OPTIONS else v for k, v in overrides.items()}
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        raise TypeError("calib_data must be an iterable of batches, not a single batch: pass [batch] "
                        f"(got one {type(calib_data).__name__})")
    if calib_data is not None and not isinstance(calib_data, Iterable):
        hint = f" (T is a keyword: convert(model, calib_data, T={calib_data}))" if isinstance(calib_data, int) else ""
        raise TypeError(f"calib_data must be an iterable of batches (a list of tensors or of dicts of forward "
                        f"kwargs), got {type(calib_data).__name__}{hint}")
    calibration = as_calibration(calibration)
    if calib_data is not None:
        calibration = dataclasses.replace(calibration, data=calib_data)
    recipe = SpikingRecipe(calibration, config, method_settings=ecmt, **overrides)
    return ModuleConverter(recipe).convert(model)


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every spiking operator of ``model`` to ``'fast'`` or ``'simulate'`` (same semantics)."""
    return set_on_ops(model, "mode", mode, MODES)
