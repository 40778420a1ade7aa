"""Identity-mapping ranges of the spiking products (Eq. 9): from a few unlabeled batches or given explicitly."""
from __future__ import annotations

import fnmatch
import itertools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..energy import EnergyMeter
from ..ops.digits import Steps
from ..ops.observer import CALIBRATION_BATCH, ISOLATED, Extreme
from ..ops.on_demand import NotSmooth
from ..ops.base import Calibrated, float_reference_mode

Batch = Union[torch.Tensor, Mapping[str, Any]]
# the targets of a model's loss (a Hugging Face dataset batch carries them): the loss is not part of the function
# that is converted, so calibration runs the model without them; the converted model takes them at run time
LOSS_KEYS = frozenset({"labels"})
# fewer calibration positions (tokens, or rows of a dense input) than this leave channels' spreads unmeasured
MIN_POSITIONS = 8
METHODS = ("max", "percentile")
log = logging.getLogger("spikingjelly_mbe.conversion")
NEED_DATA = ("convert needs calib_data: a few unlabeled batches (tensors or dicts of forward kwargs) on which the "
             "model runs, so that conversion sees what it computes and the products get their identity ranges "
             "(explicit ranges may still be given with Calibration(ranges=...))")


@dataclass(frozen=True)
class Calibration:
    """How the products get the range ``[0, A]`` their MBE_Id neurons cover (Eq. 9).

    ``data``: an iterable of batches, each a tensor (the positional input) or a dict of forward
    keyword arguments; no labels. ``method``: ``'max'`` of ``|operand|`` or its ``percentile``.
    ``headroom`` multiplies the observed range, leaving room for values beyond what the batches
    reached (coded at a coarser power-of-two step otherwise) at the cost of ``log2(headroom)`` of the ``T`` bits. ``num_batches``
    caps how many batches are used. ``ranges`` maps glob patterns over operator paths
    (``'*.spiking_attention.scores'``, ``'*'``) to explicit ``(A1, A2)`` (a rectifier takes ``A1``);
    those replace the observed ranges. Conversion runs the model on the batches to see what it
    computes, so at least one batch is needed even when every range is explicit.
    """

    data: Optional[Iterable[Batch]] = None
    method: str = "max"
    percentile: float = 99.99
    headroom: float = 1.0
    num_batches: Optional[int] = None
    ranges: Mapping[str, Tuple[float, float]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {self.percentile}")
        if not 1.0 <= self.headroom < float("inf"):
            raise ValueError(f"headroom must be a finite number >= 1, got {self.headroom}")
        if self.num_batches is not None and (not isinstance(self.num_batches, int) or self.num_batches < 1):
            raise ValueError(f"num_batches must be a positive integer or None, got {self.num_batches!r}")
        for pattern, pair in self.ranges.items():
            if not isinstance(pair, (tuple, list)) or len(pair) not in (1, 2) \
                    or not all(isinstance(a, (int, float)) and 0 < a < float("inf") for a in pair):
                raise ValueError(f"Calibration.ranges[{pattern!r}] must be one or two positive finite numbers "
                                 f"(A1, A2), got {pair!r}")

    def explicit_range(self, path: str) -> Optional[Tuple[float, float]]:
        """The first explicit range whose pattern matches ``path`` (patterns in insertion order)."""
        for pattern, pair in self.ranges.items():
            if fnmatch.fnmatchcase(path, pattern):
                return float(pair[0]), float(pair[1])
        return None


def as_calibration(value: Union[Calibration, Iterable[Batch], None]) -> Calibration:
    """Accept a :class:`Calibration`, a bare iterable of batches, or ``None`` (explicit ranges only)."""
    if value is None:
        return Calibration()
    if isinstance(value, Calibration):
        return value
    if isinstance(value, (torch.Tensor, Mapping)):
        raise TypeError("calibration data must be an iterable of batches, not a single batch; wrap it in a list")
    return Calibration(data=value)


def run_batch(model: nn.Module, batch: Batch, device: Optional[torch.device] = None) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a dict without its :data:`LOSS_KEYS`;
    tensors moved to ``device``."""
    def move(x: Any) -> Any:
        return x.to(device) if device is not None and isinstance(x, torch.Tensor) else x
    if isinstance(batch, torch.Tensor):
        return model(move(batch))
    if isinstance(batch, Mapping):
        return model(**{k: move(v) for k, v in batch.items() if k not in LOSS_KEYS})
    raise TypeError(f"a calibration batch must be a tensor or a dict of forward kwargs, got {type(batch).__name__}")


def metered_pass(model: nn.Module, batches: Iterable[Batch], T: Steps) -> EnergyMeter:
    """``model`` (a conversion at ``T``) run on ``batches`` without gradients under an energy meter
    (Eq. 14), on its parameters' device; the meter, holding the passes' counts."""
    device = next((p.device for p in model.parameters()), None)
    with torch.no_grad(), EnergyMeter(model, T) as meter:
        for batch in batches:
            run_batch(model, batch, device)
    return meter


def calibration_pass(model: nn.Module, data: Iterable[Batch], limit: Optional[int],
                     device: Optional[torch.device]) -> Iterator[Batch]:
    """Run the model on each calibration batch (no gradients), the batch's index in
    :data:`~spikingjelly_mbe.ops.observer.CALIBRATION_BATCH`; yields each batch after its run."""
    with torch.no_grad():
        for index, batch in enumerate(itertools.islice(data, limit)):
            token = CALIBRATION_BATCH.set(index)
            try:
                run_batch(model, batch, device)
            finally:
                CALIBRATION_BATCH.reset(token)
            yield batch


def isolated_message(extremes: Dict[str, Dict[str, List[Extreme]]], shown: int = 5) -> str:
    """The warning for calibration samples standing far beyond the rest, by operator path and operand."""
    lines = [f"{path} {operand}: batch {e.batch} sample {e.sample} peaks at {e.peak:.3g}, the median sample at "
             f"{e.typical:.3g}" for path, found in extremes.items() for operand, items in found.items()
             for e in items]
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    return (f"calibration: {len(lines)} sample(s) stand far (over {ISOLATED:g}x) beyond the median sample of an "
            "operand; each range is set by the other samples (values beyond a range take its power-of-two overflow "
            "shift). Check those batches (an input left un-normalised? a corrupted row?): " + "; ".join(lines[:shown])
            + more)


def positions_of(batch: Batch) -> int:
    """The positions a batch holds: an integer tensor's elements (token ids), a floating tensor's
    elements over its last dimension (rows of features); the largest among a dict's tensors."""
    tensors = [batch] if isinstance(batch, torch.Tensor) else \
        [v for v in batch.values() if isinstance(v, torch.Tensor)] if isinstance(batch, Mapping) else []
    return max((t.numel() // (t.shape[-1] or 1) if t.is_floating_point() and t.dim() > 1 else t.numel()
                for t in tensors), default=0)


def pending(model: nn.Module) -> Dict[str, nn.Module]:
    """Operators still calibrating (recording operand ranges, computing in float), by path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, Calibrated) and m.calibrating}


def calibrate(model: nn.Module, calibration: Calibration, device: Optional[torch.device] = None) -> int:
    """Run the calibration batches (the model's sites are found and their operand ranges observed),
    then fix every range: explicit ones by pattern, the rest from the data; returns batches used.

    Modules with an ``after_calibration(observed)`` method (e.g. attention, whose probabilities lie
    in [0, 1]) refine the ranges that data gave their operators (``observed``: those operators' ids).
    Then, when an operator asks for it (:meth:`~spikingjelly_mbe.ops.base.Calibrated.start_shift_pass`,
    e.g. a weight layer's bias correction), a second pass over the batches in float measures what the
    fixed ranges shift.
    """
    if calibration.data is None:
        raise ValueError(NEED_DATA)
    data = calibration.data
    if iter(data) is data:  # one pass only: kept, so isolated extremes can be left out in a second pass
        data = list(itertools.islice(data, calibration.num_batches))
    used = positions = labelled = 0
    for batch in calibration_pass(model, data, calibration.num_batches, device):
        used += 1
        positions += positions_of(batch)
        labelled += isinstance(batch, Mapping) and not LOSS_KEYS.isdisjoint(batch)
    if used == 0:
        raise ValueError("calibration data yielded no batch")
    if labelled:
        log.info("calibration: ran %d of %d batch(es) without their %s (the loss is not converted; pass them to the "
                 "converted model to get the loss)", labelled, used, sorted(LOSS_KEYS))
    if positions < MIN_POSITIONS:
        warnings.warn(f"calibration ran on {positions} position(s) (tokens, or rows of the input) in {used} batch(es): "
                      "too few to measure how each channel spreads, so other inputs fall far beyond the calibrated "
                      f"ranges; give at least {MIN_POSITIONS} (e.g. a few sequences of 16 tokens, or a few samples)",
                      stacklevel=3)
    extremes = {path: found for path, op in pending(model).items()
                if callable(getattr(op, "isolated_extremes", None)) for found in (op.isolated_extremes(),) if found}
    if extremes:
        warnings.warn(isolated_message(extremes), stacklevel=3)
        for _ in calibration_pass(model, data, calibration.num_batches, device):
            pass
    percentile = None if calibration.method == "max" else calibration.percentile
    observed = set()
    for path, op in pending(model).items():
        if op.idle:
            continue  # a weight layer its parent never called (it reads the weights): the recipe restores it
        pair = calibration.explicit_range(path)
        if pair is not None:
            wanted = op.operands
            op.set_ranges(pair[:wanted] if len(pair) >= wanted else pair)
            continue
        try:
            ranges = op.finish_calibration(percentile=percentile)
        except RuntimeError:
            raise RuntimeError(f"{path} ({type(op).__name__}) did not run on the calibration batches, so its identity "
                               "ranges are unknown: pass batches that reach it, or Calibration(ranges={pattern: "
                               "(A1, A2)})") from None
        try:
            op.set_ranges(tuple(a * calibration.headroom for a in ranges))
        except NotSmooth:
            pass  # the op keeps its reason (refused): conversion reports the call as unsupported
        observed.add(id(op))
    for module in model.modules():
        if hasattr(module, "after_calibration"):
            module.after_calibration(observed)
    measure_shifts(model, data, calibration.num_batches, device)
    return used


def measure_shifts(model: nn.Module, data: Iterable[Batch], limit: Optional[int],
                   device: Optional[torch.device] = None) -> None:
    """The pass in float over the batches that measures what the fixed ranges shift, for every operator
    that asks for it (:meth:`~spikingjelly_mbe.ops.base.Calibrated.start_shift_pass`); none: no pass."""
    measuring = [m for m in model.modules() if isinstance(m, Calibrated) and m.start_shift_pass()]
    if measuring:
        with float_reference_mode():
            for _ in calibration_pass(model, data, limit, device):
                pass
        for op in measuring:
            op.finish_shift_pass()
