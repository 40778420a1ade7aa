"""The one table of element-wise activations: for each, its float reference, how a spiking neuron
computes it (a fit on a domain, optionally as a rectifier plus a fitted residual, or an exact
piecewise-linear form on rectifiers), the module classes and the run-time calls that compute it.

The fitting targets (:data:`~spikingjelly_mbe.fitting.TARGETS`), the shipped library, the
conversion catalog and every method's operators derive from :data:`ACTIVATIONS`; adding an
activation is one entry here (plus its test). Module classes are named ``'module:Class'`` so this
table imports neither transformers nor timm; the catalog resolves the names that import.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import math
import sys

import torch
import torch.nn.functional as F

Params = Dict[str, Any]
CallResolver = Callable[[tuple, dict], Optional[Params]]
ModuleResolver = Callable[[Any], Optional[Params]]
Knots = Tuple[List[Tuple[float, float]], float, float]  # ([(threshold, weight)], c0, c1)
QUICK_GELU = 1.702


@dataclass(frozen=True)
class Activation:
    """An element-wise nonlinearity ``reference(x, **params)``.

    How it spikes: ``domain`` (a fitted neuron's domain) for a function fitted on its own;
    ``residual_domain`` adds the range reduction ``f = relu + (f - relu)`` with the residual fitted
    there; ``fit``/``gain`` run it on another entry's neuron, ``f(x) = fit(gain x) / gain``;
    ``knots(**params)`` gives an exact form ``c0 + c1 x + sum w relu(x - t)`` on rectifiers.
    ``classes`` maps ``'module:Class'`` names to the params of a module of that class (``None``:
    another entry's); ``calls`` maps run-time op names to resolvers of their params from
    ``(args, kwargs)``; ``fingerprint``: ``reference(x)`` alone identifies it; ``library_seeds``:
    seeds whose best 8-basis fit ships; ``note``: the conversion report's line.
    """

    name: str
    reference: Callable[..., torch.Tensor]
    note: str
    domain: Optional[Tuple[float, float]] = None
    residual_domain: Optional[Tuple[float, float]] = None
    fit: Optional[str] = None
    gain: float = 1.0
    knots: Optional[Callable[..., Knots]] = None
    classes: Mapping[str, ModuleResolver] = field(default_factory=dict)
    calls: Mapping[str, CallResolver] = field(default_factory=dict)
    fingerprint: bool = True
    library_seeds: int = 1

    @property
    def fitted_target(self) -> Optional[str]:
        """The fitting target of its own neuron (whose domain may narrow to calibrated inputs)."""
        return self.name if self.domain is not None else None

    @property
    def residual_target(self) -> Optional[str]:
        """The fitting target of its residual ``f - relu`` (``None``: no rectified form)."""
        return f"{self.name}_residual" if self.residual_domain is not None else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x) - F.relu(x)


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` (or keyword ``name``) of a call."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def _gelu_form(form: str) -> CallResolver:
    return lambda args, kwargs: {} if arg(args, kwargs, 1, "approximate", "none") == form else None


def _plain(args: tuple, kwargs: dict) -> Params:
    return {}


def _clamp_bounds(lo: Optional[float], hi: Optional[float], x: Any = None) -> Optional[Params]:
    """The bounds of a clamp of ``x``; a bound beyond half the largest finite value of ``x``'s dtype is
    an overflow guard (Whisper's and T5's half-precision ``clamp(h, -(max - 1000), max - 1000)``), no knot."""
    if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
        return None  # tensor bounds: not a fixed piecewise-linear function
    guard = torch.finfo(x.dtype).max / 2 if isinstance(x, torch.Tensor) and x.is_floating_point() else math.inf
    return {"lo": None if lo is not None and lo <= -guard else lo, "hi": None if hi is not None and hi >= guard else hi}


def _clamp_knots(lo: Optional[float], hi: Optional[float]) -> Knots:
    """``clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)`` (one-sided forms drop a knot; no bound
    at all is the identity: no knot)."""
    if lo is None and hi is None:
        return [], 0.0, 1.0
    if lo is None:
        return [(hi, -1.0)], 0.0, 1.0
    return [(lo, 1.0)] + ([(hi, -1.0)] if hi is not None else []), lo, 0.0


def _clamp_reference(x: torch.Tensor, lo: Optional[float], hi: Optional[float]) -> torch.Tensor:
    return torch.clamp(x, lo, hi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x sigmoid(1.702 x)`` (CLIP's QuickGELU)."""
    return x * torch.sigmoid(QUICK_GELU * x)


_none = lambda m: {} if getattr(m, "approximate", "none") == "none" else None  # noqa: E731
_tanh = lambda m: {} if getattr(m, "approximate", "none") == "tanh" else None  # noqa: E731
_always = lambda m: {}  # noqa: E731
HF, TIMM, NN = "transformers.activations", "timm.layers.activations", "torch.nn"

ACTIVATIONS: Dict[str, Activation] = {a.name: a for a in [
    Activation("gelu", F.gelu, "GELU (erf) on MBE neurons (Eq. 8)", (-16.0, 16.0), (-8.0, 8.0),
               classes={f"{NN}:GELU": _none, f"{HF}:GELUActivation": _always, f"{TIMM}:GELU": _none},
               calls={"gelu": _gelu_form("none")}, library_seeds=5),
    Activation("gelu_tanh", gelu_tanh, "GELU (tanh form) on MBE neurons (Eq. 8)", (-16.0, 16.0), (-8.0, 8.0),
               classes={f"{NN}:GELU": _tanh, f"{HF}:NewGELUActivation": _always, f"{HF}:GELUTanh": _always,
                        f"{HF}:FastGELUActivation": _always, f"{HF}:AccurateGELUActivation": _always,
                        f"{TIMM}:GELUTanh": _always},
               calls={"gelu": _gelu_form("tanh")}, library_seeds=5),
    Activation("silu", F.silu, "SiLU on MBE neurons (Eq. 8)", (-16.0, 16.0), (-16.0, 16.0),
               classes={f"{NN}:SiLU": _always, f"{HF}:SiLUActivation": _always, f"{TIMM}:Swish": _always},
               calls={"silu": _plain}, library_seeds=5),
    Activation("quick_gelu", quick_gelu,
               "QuickGELU x sigmoid(1.702 x) = silu(1.702 x) / 1.702: the SiLU neuron with an input gain",
               fit="silu", gain=QUICK_GELU,
               classes={f"{HF}:QuickGELUActivation": _always, f"{TIMM}:QuickGELU": _always}),
    Activation("tanh", torch.tanh, "tanh on MBE neurons (Eq. 8)", (-8.0, 8.0),
               classes={f"{NN}:Tanh": _always, f"{TIMM}:Tanh": _always}, calls={"tanh": _plain}, library_seeds=5),
    Activation("sigmoid", torch.sigmoid, "sigmoid on MBE neurons (Eq. 8)", (-12.0, 12.0),
               classes={f"{NN}:Sigmoid": _always, f"{TIMM}:Sigmoid": _always}, calls={"sigmoid": _plain}),
    Activation("relu", F.relu, "ReLU: an identity neuron with a positive gain, exact up to the operand coding (Eq. 9)",
               knots=lambda: ([(0.0, 1.0)], 0.0, 0.0), classes={f"{NN}:ReLU": _always}, calls={"relu": _plain}),
    Activation("abs", torch.abs, "|x| = 2 relu(x) - x on a rectifier neuron",
               knots=lambda: ([(0.0, 2.0)], 0.0, -1.0), calls={"abs": _plain, "absolute": _plain}, fingerprint=False),
    Activation("leaky_relu", lambda x, slope: F.leaky_relu(x, slope),
               "leaky ReLU = s x + (1 - s) relu(x) on a rectifier neuron",
               knots=lambda slope: ([(0.0, 1.0 - slope)], 0.0, slope),
               classes={f"{NN}:LeakyReLU": lambda m: {"slope": m.negative_slope}},
               calls={"leaky_relu": lambda a, k: {"slope": arg(a, k, 1, "negative_slope", 0.01)}}, fingerprint=False),
    Activation("clamp", _clamp_reference,
               "hardtanh / ReLU6 / clamp = lo + relu(x - lo) - relu(x - hi) on rectifier neurons",
               knots=_clamp_knots,
               classes={f"{NN}:Hardtanh": lambda m: {"lo": m.min_val, "hi": m.max_val},
                        f"{NN}:ReLU6": lambda m: {"lo": 0.0, "hi": 6.0}},
               calls={"hardtanh": lambda a, k: _clamp_bounds(arg(a, k, 1, "min_val", -1.0), arg(a, k, 2, "max_val", 1.0)),
                      "relu6": lambda a, k: {"lo": 0.0, "hi": 6.0},
                      "clamp": lambda a, k: _clamp_bounds(arg(a, k, 1, "min", None), arg(a, k, 2, "max", None), a[0]),
                      "clip": lambda a, k: _clamp_bounds(arg(a, k, 1, "min", None), arg(a, k, 2, "max", None), a[0]),
                      "clamp_min": lambda a, k: _clamp_bounds(arg(a, k, 1, "min", None), None, a[0]),
                      "clamp_max": lambda a, k: _clamp_bounds(None, arg(a, k, 1, "max", None), a[0])},
               fingerprint=False),
]}


def fitted_activations() -> Sequence[Activation]:
    """The entries computed by a fitted neuron of their own (the library ships their fits)."""
    return [a for a in ACTIVATIONS.values() if a.domain is not None]


def get_activation(name: str) -> Activation:
    """The entry called ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"no activation {name!r}; known: {sorted(ACTIVATIONS)} (add one to "
                         "spikingjelly_mbe.activations.ACTIVATIONS)")
    return ACTIVATIONS[name]


def activation_of_call(name: str, args: tuple, kwargs: dict) -> Optional[Tuple[Activation, Params]]:
    """The entry (and params) of a run-time call ``name(*args, **kwargs)``."""
    for entry in ACTIVATIONS.values():
        resolve = entry.calls.get(name)
        params = resolve(args, kwargs) if resolve is not None else None
        if params is not None:
            return entry, params
    return None


def activation_of(float_op: Any) -> Optional[Tuple[Activation, Params]]:
    """The entry (and params) computing ``float_op``: a module whose exact class an entry lists (its
    params read from it), or a function an entry's ``calls`` name (``F.gelu``, ``torch.tanh``, ...;
    its defaults). Classes are looked up among the modules already imported (an instance's are)."""
    if callable(float_op) and not isinstance(float_op, type) and not hasattr(float_op, "forward"):
        return activation_of_call(getattr(float_op, "__name__", ""), (), {})
    for entry in ACTIVATIONS.values():
        for qualified, resolve in entry.classes.items():
            module, _, name = qualified.partition(":")
            if type(float_op) is getattr(sys.modules.get(module), name, None):
                params = resolve(float_op)
                if params is not None:
                    return entry, params
    return None


def activation_entry(op: type, float_op: Any) -> Tuple[Activation, Params]:
    """:func:`activation_of` for ``op.from_float``, which also takes an entry itself (an
    :class:`Activation`, or ``(entry, params)``: a call conversion resolved, such as
    ``F.leaky_relu(x, 0.2)``); a ``TypeError`` naming ``float_op`` when no entry computes it."""
    if isinstance(float_op, Activation):
        return float_op, {}
    if isinstance(float_op, tuple) and len(float_op) == 2 and isinstance(float_op[0], Activation) \
            and isinstance(float_op[1], dict):
        return float_op
    found = activation_of(float_op)
    if found is None:
        raise TypeError(f"{op.__name__}.from_float takes an activation module or function of the activation "
                        f"table (spikingjelly_mbe.activations.ACTIVATIONS), got "
                        f"{getattr(float_op, '__name__', None) or type(float_op).__name__}")
    return found


def activation_calls() -> frozenset:
    """Every run-time op name some activation entry resolves (the table as it is now)."""
    return _calls(tuple(map(id, ACTIVATIONS.values())))


@functools.lru_cache(maxsize=8)
def _calls(entries: Tuple[int, ...]) -> frozenset:
    return frozenset(name for entry in ACTIVATIONS.values() for name in entry.calls)
