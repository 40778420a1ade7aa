"""Per-site fidelity: every spiking site's output against its float reference on the same inputs.

After conversion the first calibration batches (up to :data:`FIDELITY_POSITIONS` token positions or
rows) run once more through the converted model. At each site
(an entry of the report's ``replaced`` list) the spiking output ``y`` is compared with what the
same module computes when every operator in it returns its float reference
(:func:`~spikingjelly_mbe.ops.base.float_reference_mode`), on the inputs the site received. The
relative RMS ``sqrt(sum (y - r)^2 / sum r^2)`` over those batches is the site's own error, not the
error it inherits from the sites before it: the operator to give more precision is the one at the
top of the ranking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..fitting.targets import RECTIFIED, TARGETS
from ..ops import RectifiedActivation, SpikingActivation
from ..ops.base import float_reference_mode, in_float_reference_mode

FIDELITY_POSITIONS = 4096  # the site errors are measured on the first calibration batches holding this many positions
REFIT_ABOVE = 2e-2  # a fitted activation site whose own error exceeds this is refitted on its inputs' range,
SMALL_INPUTS = 8  # when that range is at most this fraction of its target's domain (and narrower than its fit)
UNRECTIFIED = {residual: target for target, residual in RECTIFIED.items()}


@dataclass(frozen=True)
class SiteError:
    """One site: its path, its operator, its relative RMS error on the calibration batches and how
    many output elements that was measured on."""

    path: str
    operator: str
    relative_rms: float
    elements: int
    input_peak: float = 0.0  # the largest |input| the site saw
    selection_agreement: Optional[float] = None  # a selection (top-k): rows choosing the float reference's set

    def __str__(self) -> str:
        chosen = "" if self.selection_agreement is None else \
            f", the float selection in {100 * self.selection_agreement:.2f} % of rows"
        return (f"{self.path or '<root>'}: {self.operator} relative RMS {self.relative_rms:.2e} "
                f"({self.elements} values{chosen})")


def _first_tensor(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return value if isinstance(value, torch.Tensor) else None


def _squared_sums(out: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """``sum (out - ref)^2`` and ``sum ref^2`` over the elements where both are finite, summed in at
    least float32 (the finite mask, in float64, is built only when a sum is not finite)."""
    dtype = torch.promote_types(ref.dtype, torch.float32)
    error = (out - ref).square().sum(dtype=dtype)
    reference = ref.square().sum(dtype=dtype)
    if math.isfinite(float(error)) and math.isfinite(float(reference)):
        return float(error), float(reference)
    out, ref = out.double(), ref.double()
    finite = torch.isfinite(ref) & torch.isfinite(out)
    return (float(torch.where(finite, out - ref, 0.0).square().sum()),
            float(torch.where(finite, ref, 0.0).square().sum()))


class _Tally:
    """Sums of squared error and squared reference for one site, kept on the device."""

    def __init__(self) -> None:
        self.error, self.reference, self.elements, self.peak = 0.0, 0.0, 0, 0.0
        self.rows, self.same_rows = 0, 0

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if in_float_reference_mode():
            return  # a site nested in another site, while the outer one computes its reference
        out = _first_tensor(output)
        if out is None or not out.is_floating_point() or not out.numel():
            return
        with torch._C.DisableTorchFunction():  # measuring, not the model's computation: never intercepted
            self.add(output, module, args, kwargs)

    def add(self, output: Any, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with torch.no_grad(), float_reference_mode():
            full = module(*args, **kwargs)
        ref = _first_tensor(full)
        if isinstance(output, tuple) and len(output) == 2 and not output[1].is_floating_point():
            self.count_selections(output[1], full[1], getattr(module, "dim", -1))
        out, ref = _first_tensor(output).detach(), ref.detach()
        error, reference = _squared_sums(out, ref)
        self.error, self.reference = self.error + error, self.reference + reference
        self.elements += out.numel()
        if args and isinstance(args[0], torch.Tensor) and args[0].numel():
            low, high = torch.aminmax(args[0].detach())
            self.peak = max(self.peak, float(high), -float(low))

    def count_selections(self, chosen: torch.Tensor, reference: torch.Tensor, dim: int) -> None:
        """Rows whose chosen index set is the reference's (order aside)."""
        same = (chosen.sort(dim).values == reference.sort(dim).values).all(dim)
        self.rows += same.numel()
        self.same_rows += int(same.sum())

    def relative_rms(self) -> float:
        error, reference = float(self.error), float(self.reference)
        if reference > 0:
            return (error / reference) ** 0.5
        return 0.0 if error == 0 else float("inf")


def site_errors(model: nn.Module, sites: Dict[str, str], run: Callable[[], Iterable[Any]]) -> List[SiteError]:
    """``sites`` (path -> operator name) measured while ``run()`` runs the batches through ``model``;
    the sites ranked worst first (those that never ran are left out)."""
    tallies = {path: _Tally() for path in sites}
    handles = [model.get_submodule(path).register_forward_hook(tally.hook, with_kwargs=True)
               for path, tally in tallies.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    rows = [SiteError(path, sites[path], tally.relative_rms(), tally.elements, tally.peak,
                      tally.same_rows / tally.rows if tally.rows else None)
            for path, tally in tallies.items() if tally.elements]
    return ranked(rows)


def ranked(rows: Iterable[SiteError]) -> List[SiteError]:
    """Sites worst first (ties by path)."""
    return sorted(rows, key=lambda row: (-row.relative_rms, row.path))


def fitted_target(module: nn.Module) -> Optional[str]:
    """The registered target a fitted activation site computes (a rectified one's whole function), else ``None``."""
    if isinstance(module, RectifiedActivation):
        return UNRECTIFIED.get(module.residual.fitted.target)
    if isinstance(module, SpikingActivation) and module.fitted.target in TARGETS:
        return module.fitted.target
    return None


def refit_span(row: SiteError, module: nn.Module) -> Optional[float]:
    """Where a site's own error says its fit is too coarse for the inputs it gets (above
    :data:`REFIT_ABOVE`): the span ``s`` of a fit on ``[-s, s]``, the power of two at or above twice
    the largest input seen, when that is narrower than the fit it has and at most ``1 / SMALL_INPUTS``
    of its target's domain (small inputs on a wide fit, not a short spike train); else ``None``."""
    target = fitted_target(module)
    if target is None or row.relative_rms <= REFIT_ABOVE or not 0 < row.input_peak < float("inf"):
        return None
    span = 2.0 ** math.ceil(math.log2(2 * row.input_peak))
    lo, hi = module.fitted.domain if isinstance(module, SpikingActivation) else TARGETS[target].domain
    own_lo, own_hi = TARGETS[target].domain
    return span if span < min(-lo, hi) and span <= min(-own_lo, own_hi) / SMALL_INPUTS else None
