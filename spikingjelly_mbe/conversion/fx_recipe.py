"""``MBETransformerFXRecipe``: the same conversion on a torch.fx graph (SpikingJelly ``FXConverter``)."""
from __future__ import annotations

import copy
import dataclasses
import itertools

import torch.nn as nn
from spikingjelly.activation_based.ann2snn import FXConversionRecipe, FXConverter
from torch import fx

from .calibration import calibrate
from .fx_passes import classify, insert_products, propagate_shapes, replace_functions
from .options import MBERecipeOptions
from .registry import SPIKE
from .report import ConversionReport, UnsupportedNonlinearityError
from .rules._common import COMMON
from .tree import apply_phase, record_fallback, record_kept


class MBETransformerFXRecipe(MBERecipeOptions, FXConversionRecipe):
    """MBE conversion of any model plain ``torch.fx`` traces (timm ViT), no per-architecture rule.

    ``before_trace`` deep-copies the ANN (FX graph modules share parameters with their root);
    ``after_trace`` runs the first calibration batch to tell tensors from shapes and checks every
    call is linear or has a spiking operator; ``insert_observers`` puts calibrating spiking
    products at every product of two activations and every SDPA call; ``calibrate`` fixes their
    ranges (Eq. 9); ``replace`` spikes activation/norm/softmax modules and functional calls.
    Needs calibration data (at least one batch) even when all ranges are explicit.
    """

    def before_trace(self, converter: FXConverter, ann: nn.Module) -> nn.Module:
        if self.calibration.data is None:
            raise ValueError("the FX recipe needs calibration data (one batch at least) to propagate shapes")
        batches = iter(self.calibration.data)
        first = next(batches, None)
        if first is None:
            raise ValueError("calibration data yielded no batch")
        self._example = first
        self._data = itertools.chain([first], batches) if batches is self.calibration.data else self.calibration.data
        self.report = ConversionReport()
        return copy.deepcopy(ann).eval()

    def after_trace(self, converter: FXConverter, fx_model: fx.GraphModule) -> fx.GraphModule:
        propagate_shapes(fx_model, self._example)
        self._kinds, unknown = classify(fx_model, COMMON)
        if unknown and not self.allow_float_fallback:
            raise UnsupportedNonlinearityError(unknown)
        record_fallback(unknown, self.report, "no spiking operator for this call: runs in float")
        return fx_model

    def insert_observers(self, converter: FXConverter, fx_model: fx.GraphModule) -> fx.GraphModule:
        insert_products(fx_model, self._kinds, self.settings, self.report)
        fx_model.recompile()
        return fx_model

    def calibrate(self, converter: FXConverter, fx_model: fx.GraphModule) -> fx.GraphModule:
        calibrate(fx_model, dataclasses.replace(self.calibration, data=self._data), converter.device)
        return fx_model

    def replace(self, converter: FXConverter, fx_model: fx.GraphModule) -> fx.GraphModule:
        apply_phase(fx_model, COMMON, SPIKE, self.settings, self.report)
        replace_functions(fx_model, self._kinds, self.settings, self.report)
        fx_model.graph.lint()
        fx_model.recompile()
        return fx_model

    def finalize(self, converter: FXConverter, fx_model: fx.GraphModule) -> nn.Module:
        record_kept(fx_model, COMMON, self.report)
        del self._example, self._data, self._kinds
        return self.finish(fx_model)
