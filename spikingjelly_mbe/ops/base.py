"""What every spiking operator shares: evaluation mode, input checks, clamp warnings, statistics, and
its calibrated state in the ``state_dict``."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import warnings
from dataclasses import fields
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from ..neurons.multibasis import DEFAULT_N, DEFAULT_T  # noqa: F401  (the operators' defaults)
from .coding import FLOAT32_MAX_T
from .stats import OpStats

log = logging.getLogger("spikingjelly_mbe.ops")

MODES = ("fast", "simulate")
# when fast mode checks its inputs for NaN/Inf and reports clamps: "eager" reads them on the host in every
# forward (a ValueError before computing, a warning after it); "deferred" counts them on the device and reads
# them at the next flush (op_stats(), flush_checks(model)), so a forward never waits for the device
CHECKS = ("eager", "deferred")
TRACE_FIXES_CHOICES = (
    "torch.jit.trace does not record a spiking operator faithfully: its data-dependent choices (which inputs take a "
    "power-of-two overflow shift beyond their calibrated range, and which shift) are fixed to the example input's, "
    "and its compiled CPU kernels run outside the traced graph; the trace computes wrong values. Run the model "
    "eagerly, or with torch.compile")
DEFAULT_MODE = "fast"
STAT_FIELDS = tuple(f.name for f in fields(OpStats))
Count = Union[int, torch.Tensor]  # a count known on the host, or one still on the device
_FLOAT_REFERENCE = contextvars.ContextVar("mbe_float_reference", default=False)


@contextlib.contextmanager
def float_reference_mode() -> Iterator[None]:
    """Within it, every :class:`SpikingOp` returns its :meth:`~SpikingOp.float_reference` (no spikes,
    no statistics): a module built of operators computes the float function it stands for."""
    token = _FLOAT_REFERENCE.set(True)
    try:
        yield
    finally:
        _FLOAT_REFERENCE.reset(token)


def in_float_reference_mode() -> bool:
    return _FLOAT_REFERENCE.get()


def working_dtype(x: torch.Tensor, T: float = 0) -> torch.dtype:
    """Spiking arithmetic runs in float64 for float64 input or for MBE_Id codes of ``T`` beyond
    :data:`~.coding.FLOAT32_MAX_T` binary digits of precision (``T`` steps of a binary or signed code,
    :func:`~.coding.equivalent_digits` of another), else in float32."""
    return torch.float64 if x.dtype == torch.float64 or T > FLOAT32_MAX_T else torch.float32


class Tally:
    """Named counts, each a host int plus the device tensors added to it, summed only when read
    (adding a device count is a list append, not a device operation); folded every
    :attr:`FOLD` entries, so it stays small however many forwards run between reads. In a forward
    traced by torch.compile a device count is added to a running sum per name instead (one more
    operation in the graph), so the tally's structure, which the compiled forward's guards check, is
    the same from one call to the next."""

    FOLD = 256

    def __init__(self) -> None:
        self.host: Dict[str, int] = {}
        self.device: List[Tuple[str, torch.Tensor]] = []
        self.traced: Dict[str, torch.Tensor] = {}

    def add(self, name: str, value: Count) -> None:
        if isinstance(value, torch.Tensor) and torch.compiler.is_compiling():
            total = self.traced.get(name)
            self.traced[name] = value.double() if total is None else total + value.double()
        elif isinstance(value, torch.Tensor):
            self.device.append((name, value))
            if len(self.device) >= self.FOLD:
                names = dict.fromkeys(n for n, _ in self.device)
                self.device = [(n, torch.stack([v.double() for m, v in self.device if m == n]).sum()) for n in names]
        elif value:
            self.host[name] = self.host.get(name, 0) + int(value)

    def add_all(self, counts: Dict[str, Count]) -> None:
        """:meth:`add` each of ``counts``; a host ``int`` (what the C kernels return) straight into its sum."""
        host = self.host
        for name, value in counts.items():
            if type(value) is int:
                if value:
                    host[name] = host.get(name, 0) + value
            else:
                self.add(name, value)

    def totals(self) -> Dict[str, int]:
        """Every count as an int (reads the device tensors: a host synchronisation)."""
        out = dict(self.host)
        for name, value in (*self.device, *self.traced.items()):
            out[name] = out.get(name, 0) + int(value)
        return out

    def __bool__(self) -> bool:
        return bool(self.host) or bool(self.device) or bool(self.traced)


class StraightThrough(torch.autograd.Function):
    """The spiking output forward, the float reference's gradient backward (straight-through)."""

    @staticmethod
    def forward(ctx, spiking: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return spiking

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[None, torch.Tensor]:
        return None, grad


class OneOf:
    """A setting that takes one of ``options``: setting another value raises naming the setting and the options."""

    def __init__(self, options: Sequence[str]) -> None:
        self.options = options

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, "_" + name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: str) -> None:
        if value not in self.options:
            raise ValueError(f"{type(obj).__name__}: {self.name} must be one of {self.options}, got {value!r}")
        setattr(obj, self.slot, value)


class SpikingOp(base.MemoryModule):
    """Base of the spiking operators.

    ``mode='simulate'`` runs the step-by-step spiking computation (binary spike tensors over ``T``
    steps, products as ``sum_ij D_ij S_ij``); ``mode='fast'`` computes the same numbers from the
    reconstructed sums. Counts live in SpikingJelly memories, so ``functional.reset_net`` zeroes
    them; :meth:`op_stats` reads them. The ``T`` steps are internal: the operator maps float
    tensors to float tensors whatever ``step_mode`` SpikingJelly sets. Subclasses implement
    ``compute(*inputs)``; :meth:`forward` wraps it with the clamp warning.

    Counts that depend on the data (spikes, clamps, NaN/Inf inputs) may be device tensors: fast mode
    never reads them in a forward under ``checks='deferred'`` (:data:`CHECKS`; conversion sets it),
    only :meth:`op_stats` and :meth:`flush` do. Calibrated state lives in buffers and in
    :meth:`get_extra_state` (``calibrated_state``/``restore_calibrated``), so ``load_state_dict``
    restores a calibration; a state saved with other settings (``T``, ``code``) raises naming them.
    """

    calibrated_buffers: Tuple[str, ...] = ()  # buffers calibration sets (None until then)
    settings_names: Tuple[str, ...] = ("T", "code")  # settings a saved state must share (those it has)
    drives_weight_layer: ClassVar[bool] = False  # the input of a weight layer: charged spikes x fan-out

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.checks = "eager"
        self.register_memory("tally", Tally())  # OpStats fields since the last reset
        self._clamps = Tally()  # clamp notes not yet reported: what -> count
        self._nonfinite = Tally()  # input -> NaN/Inf elements in it

    mode = OneOf(MODES)
    checks = OneOf(CHECKS)

    @property
    def simulating(self) -> bool:
        return self._mode == "simulate"

    @property
    def deferring(self) -> bool:
        """Fast mode under deferred checks: nothing of the data is read on the host in a forward."""
        return self._checks == "deferred" and not self.simulating

    def op_stats(self) -> OpStats:
        """Spikes, neuron inputs, SOPs, replaced FLOPs and clamps since the last reset (after :meth:`flush`)."""
        self.flush()
        totals = self.tally.totals()
        return OpStats(**{name: totals.get(name, 0) for name in STAT_FIELDS})

    def record(self, **counts: Count) -> None:
        """Add to the statistics (keywords are :class:`OpStats` fields; host ints or device tensors)."""
        self._memories["tally"].add_all(counts)  # the memory itself: self.tally is a slow __getattr__ lookup

    def note_clamped(self, count: Count, what: str) -> None:
        """Count inputs clamped to a neuron's domain; the next :meth:`flush` warns with the total."""
        self.record(clamped=count)
        self._clamps.add(what, count)

    def flush(self, span: str = "since the last check") -> None:
        """Report what the forwards counted: NaN/Inf inputs raise a ``ValueError``, clamps log one
        warning. Reads device counts (a host synchronisation): :meth:`forward` calls it under eager
        checks, :meth:`op_stats` and :func:`flush_checks` under deferred ones."""
        if not self._clamps and not self._nonfinite:  # nothing counted: nothing to report
            return
        clamps, self._clamps = self._clamps.totals(), Tally()
        nonfinite, self._nonfinite = self._nonfinite.totals(), Tally()
        notes = [f"{count} {what}" for what, count in clamps.items() if count]
        if notes:
            log.warning("%s: clamped %s %s", type(self).__name__, ", ".join(notes), span)
        bad = [(name, count) for name, count in nonfinite.items() if count]
        if bad:
            counts = ", ".join(f"{name} contains {count} NaN/Inf value(s)" for name, count in bad)
            raise ValueError(f"{type(self).__name__}: {counts} {span}; spiking neurons need finite membrane "
                             "potentials (the outputs at those positions are undefined)")

    def check_floating(self, x: torch.Tensor, name: str) -> None:
        """``x`` must be a floating point tensor."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"{type(self).__name__}: {name} must be a floating point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")

    def check_input(self, x: torch.Tensor, name: str, allow_neg_inf: bool = False) -> None:
        """Floating point, and no NaN/Inf (``-inf`` allowed where it means 'masked'): checked now
        (:meth:`reject_nonfinite`), or under deferred checks counted on the device for :meth:`flush`."""
        self.check_floating(x, name)
        if not self.deferring:
            self.reject_nonfinite(x, name, allow_neg_inf)
        elif x.numel():
            finite = (x.detach() < math.inf) if allow_neg_inf else (x.detach().abs() < math.inf)
            self._nonfinite.add(name, x.numel() - finite.sum())

    def reject_nonfinite(self, x: torch.Tensor, name: str, allow_neg_inf: bool = False) -> None:
        """Raise if ``x`` holds NaN/Inf (``-inf`` allowed where it means 'masked'), naming the count;
        reads ``x`` on the host. The fused kernels count NaN/Inf themselves and call this only to raise."""
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # NaN propagates to both
        if not math.isnan(lo) and hi != float("inf") and (lo != float("-inf") or allow_neg_inf):
            return
        bad = x.isnan() | (x == float("inf")) | ((x == float("-inf")) if not allow_neg_inf else False)
        allowed = " (-inf is allowed: it marks masked positions)" if allow_neg_inf else ""
        raise ValueError(f"{type(self).__name__}: {name} contains {int(bad.sum())} NaN/Inf value(s){allowed}; "
                         "spiking neurons need finite membrane potentials")

    def counted_nonfinite(self, x: torch.Tensor, name: str, count: Count, allow_neg_inf: bool = False) -> None:
        """A fused kernel's count of NaN/Inf in ``x``: a device count under deferred checks is left
        for :meth:`flush`; otherwise a nonzero count raises now (:meth:`reject_nonfinite`)."""
        if self.deferring and isinstance(count, torch.Tensor):
            self._nonfinite.add(name, count)
        elif count:
            self.reject_nonfinite(x, name, allow_neg_inf)

    def float_reference(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The float operation this operator replaces; its gradient is the backward pass."""
        raise NotImplementedError

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if _FLOAT_REFERENCE.get():
            return self.float_reference(*inputs)
        if torch.jit.is_tracing():
            warnings.warn(TRACE_FIXES_CHOICES, stacklevel=2)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *self.parameters())
                                           if isinstance(t, torch.Tensor)):
            with torch.no_grad():
                out = self.compute(*inputs)
            out = StraightThrough.apply(out, self.float_reference(*inputs))
        else:
            out = self.compute(*inputs)
        if not self.deferring:
            self.flush("in this forward")
        return out

    # ---- calibrated state in the state_dict ------------------------------------------------------
    def settings_state(self) -> Dict[str, Any]:
        """The settings a saved state must share with this operator (:attr:`settings_names`)."""
        return {name: getattr(self, name) for name in self.settings_names if hasattr(self, name)}

    def calibrated_state(self) -> Dict[str, Any]:
        """What calibration set besides :attr:`calibrated_buffers` (plain numbers and CPU tensors)."""
        return {}

    def restore_calibrated(self, state: Dict[str, Any]) -> None:
        """Take back :meth:`calibrated_state` (before the children load theirs)."""

    def get_extra_state(self) -> Dict[str, Any]:
        unset = [name for name in self.calibrated_buffers if self._buffers.get(name) is None]
        return {"settings": self.settings_state(), "calibrated": self.calibrated_state(), "unset": unset}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.restore_calibrated(state["calibrated"])

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        """Check the saved settings first (a mismatch raises, naming it), and give every calibrated
        buffer the saved shape (or ``None``), so a calibration on other data loads exactly."""
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict):
            settings = self.settings_state()
            differ = {k: (v, settings.get(k)) for k, v in extra.get("settings", {}).items() if settings.get(k) != v}
            if differ:
                said = ", ".join(f"{k}={saved!r} (this operator: {own!r})" for k, (saved, own) in differ.items())
                raise ValueError(f"{type(self).__name__} at '{prefix[:-1]}': the state_dict was saved with {said}; "
                                 "load it into a model converted with the same settings")
            for name in self.calibrated_buffers:
                saved, own = state_dict.get(prefix + name), self._buffers.get(name)
                if name in extra.get("unset", ()):
                    self._buffers[name] = None
                elif saved is not None and (own is None or own.shape != saved.shape):
                    self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=self.state_device())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def state_device(self) -> torch.device:
        """Where this operator's tensors live (its first buffer or parameter; the CPU without any)."""
        tensor = next(self.buffers(), None)
        tensor = next(self.parameters(), None) if tensor is None else tensor
        return torch.device("cpu") if tensor is None else tensor.device

    def extra_repr(self) -> str:
        return f"mode={self._mode!r}"


def set_on_ops(model: nn.Module, name: str, value: str, allowed: Tuple[str, ...]) -> nn.Module:
    """Set attribute ``name`` (one of ``allowed``) on every spiking operator of ``model``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    for module in model.modules():
        if isinstance(module, SpikingOp):
            setattr(module, name, value)
    return model


def set_checks(model: nn.Module, checks: str) -> nn.Module:
    """Every spiking operator of ``model`` checks its inputs ``'eager'``-ly or ``'deferred'`` (:data:`CHECKS`)."""
    return set_on_ops(model, "checks", checks, CHECKS)


def flush_checks(model: nn.Module) -> None:
    """Report what ``model``'s spiking operators counted since the last check (:meth:`SpikingOp.flush`):
    NaN/Inf inputs raise, clamps warn. Under deferred checks this is where they surface."""
    for module in model.modules():
        if isinstance(module, SpikingOp):
            module.flush()


def float_function(op: type, float_op: Any, functions: Tuple[Any, ...] = (), modules: Tuple[type, ...] = (),
                   takes: str = "") -> bool:
    """Whether ``float_op``, what ``op.from_float`` got, is one of the float ``functions`` (``True``)
    or a module of one of the ``modules`` classes (``False``); a ``TypeError`` saying what it takes
    (``takes``) otherwise."""
    if any(float_op is f for f in functions):
        return True
    if isinstance(float_op, modules) if modules else False:
        return False
    raise TypeError(f"{op.__name__}.from_float takes {takes}, got {getattr(float_op, '__name__', None) or type(float_op).__name__}")


def broadcast_shape(a: torch.Tensor, b: torch.Tensor, op: str) -> Tuple[int, ...]:
    """The broadcast shape of ``a`` and ``b``, or an error naming both shapes."""
    if a.shape == b.shape:  # the common case, without torch.broadcast_shapes' symbolic-shape checks
        return tuple(a.shape)
    try:
        return tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        raise ValueError(f"{op}: operands of shapes {tuple(a.shape)} and {tuple(b.shape)} are not broadcastable; "
                         f"b must be broadcastable to a's shape {tuple(a.shape)}") from None


class Calibrated:
    """A module whose ranges come from calibration, in the style of torch.ao's observers.

    Built without ranges, it starts ``calibrating``: its forwards compute in float while it observes
    its ``operands`` inputs; :meth:`finish_calibration` turns the observations into ranges (at a
    ``percentile`` of the magnitudes, or their maximum), which :meth:`set_ranges` fixes (ending
    calibration). ``idle``: calibrating and never called.
    """

    operands: ClassVar[int] = 1
    calibrating: bool = False

    def set_ranges(self, ranges: Sequence[float]) -> None:
        raise NotImplementedError

    def finish_calibration(self, percentile: Optional[float] = None) -> Tuple[float, ...]:
        raise NotImplementedError

    def start_shift_pass(self) -> bool:
        """Start measuring, on a second pass over the calibration batches with the ranges fixed and
        every operator computing its float reference, what those ranges shift (a weight layer's
        expected rounding error); whether this module measures anything (by default nothing)."""
        return False

    def finish_shift_pass(self) -> None:
        """Fix what :meth:`start_shift_pass` measured."""

    @property
    def idle(self) -> bool:
        return False


class CalibratedOp(SpikingOp, Calibrated):
    """A spiking operator that calibrates (:class:`Calibrated`); :attr:`ranges` reads its ranges back flat."""

    @property
    def ranges(self) -> Optional[Tuple[float, ...]]:
        raise NotImplementedError
