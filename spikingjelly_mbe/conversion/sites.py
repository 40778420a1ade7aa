"""Sites: the nonlinear calls and activation x activation products a converted model runs, each
replaced by a spiking operator attached to the module it runs in.

A site is keyed by ``(owner module path, kind, ordinal of that kind within the owner's forward)``.
During calibration the first run of a site builds its operator (attached to the owner as
``spiking_<kind><ordinal>``); operators that need operand ranges compute in float while recording them,
the others let the float call run. After calibration every site runs its spiking operator. One
table, :data:`SITE_KINDS`, says how each kind is built from the call and how the call is routed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import activation_calls, activation_of_call
from ..ops.base import Calibrated
from ..ops.on_demand import BoundCall
from ..ops.roots import NORM_ORDERS, ROOT_FUNCTIONS, is_power
from .blocks import SpikingAttention, multi_head_attention
from .catalog import LAYER_NORM, RMS_NORM
from .interception import ACT, COMPARISONS, CTRL, DESTINATION, LINEAR, MULTILINEAR, SEL, VALUE_FREE, Session
from .method import SpikingMethod, settings_at
from .report import ConversionReport, Entry, UnsupportedNonlinearityError, note_of

Call = Tuple[tuple, dict]


def arg(call: Call, index: int, name: str, default: Any = None) -> Any:
    args, kwargs = call
    return args[index] if len(args) > index else kwargs.get(name, default)


@dataclass(frozen=True)
class SiteKind:
    """``build(settings, call) -> module``; ``invoke(module, call) -> output``; the report's note."""

    build: Callable[[SpikingMethod, Call], nn.Module]
    invoke: Callable[[nn.Module, Call], Any]
    note: str
    needs: str = ""  # the :class:`GeneralMethod` builder the kind calls (a method lacking it leaves the call unsupported)


def _softmax_input(call: Call) -> torch.Tensor:
    x, dtype = arg(call, 0, "input"), arg(call, 3, "dtype")
    return x if dtype is None else x.to(dtype)


def _sdpa(core: nn.Module, call: Call) -> torch.Tensor:
    if arg(call, 4, "dropout_p", 0.0):
        raise ValueError("spiking attention is inference-only: scaled_dot_product_attention got dropout_p > 0 "
                         "(call model.eval())")
    return core(arg(call, 0, "query"), arg(call, 1, "key"), arg(call, 2, "value"), arg(call, 3, "attn_mask"),
                arg(call, 6, "scale"), arg(call, 5, "is_causal", False))[0]


SITE_KINDS: Dict[str, SiteKind] = {
    "product": SiteKind(lambda s, c: s.product(), lambda m, c: m(arg(c, 0, "input"), arg(c, 1, "other")),
                        "product of two activations (Eqs. 9-12)"),
    "square": SiteKind(lambda s, c: s.product(), lambda m, c: m(arg(c, 0, "input"), arg(c, 0, "input")),
                       "square of an activation, a product (Eqs. 9-12)"),
    "matmul": SiteKind(lambda s, c: s.matmul(), lambda m, c: m(arg(c, 0, "input"), arg(c, 1, "other")),
                       "matrix product of two activations (Eqs. 9-12)"),
    "softmax": SiteKind(lambda s, c: s.softmax(arg(c, 1, "dim")), lambda m, c: m(_softmax_input(c)),
                        "softmax from exp2-frac, reciprocal, products (Eq. 13)"),
    "layer_norm": SiteKind(lambda s, c: s.norm(LAYER_NORM, arg(c, 1, "normalized_shape"), arg(c, 2, "weight"),
                                               arg(c, 3, "bias"), arg(c, 4, "eps", 1e-5)),
                           lambda m, c: m(arg(c, 0, "input")), "LayerNorm from x^2, rsqrt and products"),
    "rms_norm": SiteKind(lambda s, c: s.norm(RMS_NORM, arg(c, 1, "normalized_shape"), arg(c, 2, "weight"), None,
                                             arg(c, 3, "eps") or torch.finfo(torch.float32).eps),
                         lambda m, c: m(arg(c, 0, "input")), "RMSNorm from x^2, rsqrt and products"),
    "max_pool": SiteKind(lambda s, c: s.max_pool(arg(c, 1, "kernel_size"), arg(c, 2, "stride"), arg(c, 3, "padding", 0)),
                         lambda m, c: m(arg(c, 0, "input")), "max pooling as m + relu(v - m) on rectifier neurons"),
    "attention": SiteKind(lambda s, c: SpikingAttention(s), _sdpa,
                          "scaled_dot_product_attention: spiking Q K^T, softmax, A V"),
    "topk": SiteKind(lambda s, c: s.topk(arg(c, 1, "k"), arg(c, 2, "dim", -1)),
                     lambda m, c: torch.return_types.topk(m(arg(c, 0, "input"))),
                     "top-k selection by counting the scores' spikes (a winner-take-all), the winners' scores routed", "topk"),
    "mha": SiteKind(lambda s, c: SpikingAttention(s), lambda m, c: multi_head_attention(m, *c[0], **c[1]),
                    "multi-head attention: projections reused, spiking Q K^T, softmax, A V"),
}


def _add_product(m: nn.Module, call: Call, batched_sum: bool = False) -> torch.Tensor:
    """``beta * input + alpha * (m1 @ m2)`` (``addmm``, ``baddbmm``; ``addbmm`` sums the batch)."""
    product = m(arg(call, 1, "mat1" if "mat1" in call[1] else "batch1"), arg(call, 2, "mat2" if "mat2" in call[1] else "batch2"))
    product = product.sum(0) if batched_sum else product
    beta, alpha = arg(call, 3, "beta", 1), arg(call, 4, "alpha", 1)
    product = product if alpha == 1 else product * alpha
    return product if beta == 0 else product + (arg(call, 0, "input") if beta == 1 else beta * arg(call, 0, "input"))


def einsum_operands(call: Call) -> Tuple[str, list]:
    """``(equation, operands)`` of ``torch.einsum(eq, a, b)`` or ``torch.einsum(eq, [a, b])``."""
    args = call[0]
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    return args[0], operands


def _norm_order(call: Call) -> float:
    """The order of a ``linalg_vector_norm`` (``ord``) or ``norm`` (``p``; ``'fro'``: 2) call; ``nan``
    for an order that is not a number."""
    args, kwargs = call
    order = kwargs.get("ord", kwargs.get("p", args[1] if len(args) > 1 else 2))
    order = 2 if order in ("fro", None) else order
    return float(order) if isinstance(order, (int, float)) and not isinstance(order, bool) else math.nan


def _norm_dims(call: Call) -> Any:
    dim = arg(call, 2, "dim")
    return None if dim is None else (dim if isinstance(dim, int) else tuple(dim))


ROOTS = {fn.__name__: power for fn, power in ROOT_FUNCTIONS.items()}  # the IEEE-754 split's powers, by call name
# order comparisons: name -> (swap the operands, negate): a < b is b > a; a >= b is not b > a; a <= b is not a > b
ORDER = {"gt": (False, False), "greater": (False, False), "lt": (True, False), "less": (True, False),
         "ge": (True, True), "greater_equal": (True, True), "le": (False, True), "less_equal": (False, True)}
EXTREMA = {"maximum": False, "minimum": True}  # name -> minimum
CLAMPS = {"clamp": ("min", "max"), "clip": ("min", "max"), "clamp_min": ("min", None), "clamp_max": (None, "max")}


def _compare(m: nn.Module, call: Call, swap: bool, negate: bool) -> torch.Tensor:
    a, b = arg(call, 0, "input"), arg(call, 1, "other")
    spike = m(b, a) if swap else m(a, b)
    return ~spike if negate else spike


def _reduce_extremum(m: nn.Module, call: Call, minimum: bool) -> Any:
    """``max``/``min`` along a dimension: the spiking top-1 (of ``-x`` for the minimum)."""
    x, dim, keepdim = arg(call, 0, "input"), arg(call, 1, "dim"), arg(call, 2, "keepdim", False)
    values, index = m(-x if minimum else x)
    values = -values if minimum else values
    if not keepdim:
        values, index = values.squeeze(dim), index.squeeze(dim)
    return (torch.return_types.min if minimum else torch.return_types.max)((values, index))


# calls dynamo (torch.compile) does not hand to a TorchFunctionMode while tracing: what follows one on an
# activation would compute in float in a compiled model, so compiling a model that makes one is refused
UNTRACED_CALLS = frozenset({F.pad, F.hardswish, F.hardsigmoid})


def _bounds(call: Call, name: str) -> Tuple[Any, Any]:
    """``(lo, hi)`` of a clamp call (``None`` where absent)."""
    low, high = CLAMPS[name]
    return (arg(call, 1, "min") if low else None,
            arg(call, 2 if low else 1, "max") if high else None)


SITE_KINDS.update({
    "add_matmul": SiteKind(lambda s, c: s.matmul(), _add_product,
                           "addmm / baddbmm: beta * input + alpha * a spiking matrix product (Eqs. 9-12)"),
    "add_batched_matmul": SiteKind(lambda s, c: s.matmul(), lambda m, c: _add_product(m, c, True),
                                   "addbmm: beta * input + alpha * the batch sum of spiking matrix products"),
    "einsum": SiteKind(lambda s, c: s.einsum(einsum_operands(c)[0]), lambda m, c: m(*einsum_operands(c)[1]),
                       "einsum of two activations as weighted spike coincidences (Eqs. 10-12)", "einsum"),
    **{name: SiteKind(lambda s, c, p=p: s.root(p), lambda m, c: m(arg(c, 0, "input")),
                      f"{name} from the IEEE-754 split: a range-reduced mantissa neuron and an exponent shift", "root")
       for name, p in ROOTS.items()},
    "divide": SiteKind(lambda s, c: s.root(-1.0), lambda m, c: arg(c, 0, "input") * m(arg(c, 1, "other")),
                       "constant / activation: the reciprocal from the IEEE-754 split times a synaptic weight", "root"),
    "rdivide": SiteKind(lambda s, c: s.root(-1.0), lambda m, c: arg(c, 1, "other") * m(arg(c, 0, "input")),
                        "constant / activation: the reciprocal from the IEEE-754 split times a synaptic weight", "root"),
    "quotient": SiteKind(lambda s, c: s.quotient(), lambda m, c: m(arg(c, 0, "input"), arg(c, 1, "other")),
                         "activation / activation: the spiking product with the reciprocal of the IEEE-754 split", "quotient"),
    "power": SiteKind(lambda s, c: s.power(arg(c, 1, "exponent")), lambda m, c: m(arg(c, 0, "input")),
                      "x ** p (integer or half-integer p): spiking products, reciprocal and square root", "power"),
    "vector_norm": SiteKind(lambda s, c: s.vector_norm(_norm_dims(c), arg(c, 3, "keepdim", False), _norm_order(c)),
                            lambda m, c: m(arg(c, 0, "input")),
                            "vector norm: 2 from spiking squares, a sum and the IEEE-754 split's square root; 1 and inf from |x| "
                            "on rectifiers, a sum or the spiking top-1", "vector_norm"),
    "group_norm": SiteKind(lambda s, c: s.group_norm(arg(c, 0, "input").shape[1], arg(c, 1, "num_groups"),
                                                     arg(c, 2, "weight"), arg(c, 3, "bias"), arg(c, 4, "eps", 1e-5)),
                           lambda m, c: m(arg(c, 0, "input")), "GroupNorm per group from x^2, rsqrt and products", "group_norm"),
    "instance_norm": SiteKind(lambda s, c: s.group_norm(arg(c, 0, "input").shape[1], arg(c, 0, "input").shape[1],
                                                        arg(c, 3, "weight"), arg(c, 4, "bias"), arg(c, 7, "eps", 1e-5)),
                              lambda m, c: m(arg(c, 0, "input")), "InstanceNorm per channel from x^2, rsqrt and products", "group_norm"),
    **{name: SiteKind(lambda s, c: s.greater(), lambda m, c, o=order: _compare(m, c, *o),
                      "an order comparison as the spike of a rectifier neuron driven by the difference", "greater")
       for name, order in ORDER.items()},
    **{f"{name}_dim": SiteKind(lambda s, c: s.topk(1, arg(c, 1, "dim")), lambda m, c, low=low: _reduce_extremum(m, c, low),
                               f"{name} along a dimension: the spiking top-1 selection, its index routed", "topk")
       for name, low in (("max", False), ("min", True))},
    **{name: SiteKind(lambda s, c, low=low: s.extremum(low), lambda m, c: m(arg(c, 0, "input"), arg(c, 1, "other")),
                      "max/min of two activations: one rectifier neuron on their difference", "extremum")
       for name, low in (("maximum", False), ("minimum", True))},
    **{f"{name}_bounds": SiteKind(lambda s, c, n=name: s.clamp(*(bound is not None for bound in _bounds(c, n))),
                                  lambda m, c, n=name: m(arg(c, 0, "input"), *_bounds(c, n)),
                                  "clamp with activation bounds: rectifier neurons on the differences", "clamp")
       for name in CLAMPS},
    "batch_statistics_norm": SiteKind(lambda s, c: s.group_norm(arg(c, 0, "input").shape[1], None, arg(c, 3, "weight"),
                                                                arg(c, 4, "bias"), arg(c, 7, "eps", 1e-5)),
                                      lambda m, c: m(arg(c, 0, "input")),
                                      "BatchNorm on the batch's statistics from x^2, rsqrt and products", "group_norm"),
})
SIMPLE_SITES = {"softmax": "softmax", "layer_norm": "layer_norm", "rms_norm": "rms_norm",
                "scaled_dot_product_attention": "attention", "multi_head_attention_forward": "mha"}


def classify(session: Session, name: str, call: Call) -> str:
    """``'linear'``, ``'control'``, ``'unsupported'``, an activation entry (``'activation:<name>'``)
    or a :data:`SITE_KINDS` key, for a call with at least one activation operand."""
    args, kwargs = call
    act = [session.tag_of(v) == ACT for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if name in ("where", "masked_fill"):
        condition = arg(call, 0 if name == "where" else 1, "condition" if name == "where" else "mask")
        return "unsupported" if session.tag_of(condition) == CTRL else "linear"
    if name == "batch_norm":  # linear on running statistics; the batch's own are a norm
        statistics = arg(call, 5, "training", False) or arg(call, 1, "running_mean") is None
        return "batch_statistics_norm" if statistics else "linear"
    if name in LINEAR:
        return "linear"
    if name in ORDER:
        other = arg(call, 1, "other")
        return name if isinstance(other, (int, float)) and not isinstance(other, bool) \
            or isinstance(other, torch.Tensor) and other.is_floating_point() else "control"
    if name in COMPARISONS:
        return "control"
    if name in ("max", "min"):
        other = arg(call, 1, "dim", call[1].get("other"))  # max(x, dim) or max(a, other)
        if isinstance(other, int) and not isinstance(other, bool):
            return f"{name}_dim"
        return ("minimum" if name == "min" else "maximum") if isinstance(other, torch.Tensor) else "unsupported"
    if name in EXTREMA:
        return "minimum" if EXTREMA[name] else "maximum"
    if name in CLAMPS and any(session.tag_of(bound) == ACT for bound in _bounds(call, name)):
        return f"{name}_bounds"
    if name in ("mul", "multiply", "matmul", "bmm", "mm"):
        both = sum(act) >= 2 and all(isinstance(arg(call, i, n), torch.Tensor) for i, n in ((0, "input"), (1, "other")))
        return ("product" if name in ("mul", "multiply") else "matmul") if both else "linear"
    if name in ("div", "true_divide", "divide"):
        if session.tag_of(arg(call, 1, "other")) != ACT:
            return "linear"
        if arg(call, 2, "rounding_mode") is not None:
            return "unsupported"
        return "quotient" if session.tag_of(arg(call, 0, "input")) == ACT else "divide"
    if name == "rdiv":
        return "rdivide"
    if name in ROOTS:
        return name
    if name in ("pow", "square"):
        exponent = 2 if name == "square" else arg(call, 1, "exponent")
        if isinstance(exponent, (int, float)) and session.tag_of(arg(call, 0, "input")) == ACT:
            if exponent in (1, 2):
                return "linear" if exponent == 1 else "square"
            if exponent in ROOTS.values():
                return next(n for n, p in ROOTS.items() if p == exponent)
            if is_power(exponent):
                return "power"
            return "elementwise"
        return "unsupported"
    if name in ("linalg_vector_norm", "norm"):
        return "vector_norm" if _norm_order(call) in NORM_ORDERS and call[1].get("dtype") is None else "unsupported"
    if name in ("addmm", "baddbmm", "addbmm"):
        operands = [arg(call, i, n) for i, n in ((1, "mat1" if name == "addmm" else "batch1"),
                                                 (2, "mat2" if name == "addmm" else "batch2"))]
        if sum(session.tag_of(v) == ACT for v in operands) < 2:
            return "linear"
        return "add_batched_matmul" if name == "addbmm" else "add_matmul"
    if name == "einsum":
        equation, operands = einsum_operands(call)
        acts = sum(session.tag_of(v) == ACT for v in operands)
        return "linear" if acts < 2 else "einsum" if len(operands) == 2 and isinstance(equation, str) else "unsupported"
    if name == "group_norm":
        return "unsupported" if any(session.tag_of(arg(call, i, n)) == ACT for i, n in ((2, "weight"), (3, "bias"))) \
            else "group_norm"
    if name == "instance_norm":
        return "instance_norm" if arg(call, 5, "use_input_stats", True) else "linear"
    if name in activation_calls():
        return "activation" if activation_of_call(name, args, kwargs) is not None else "unsupported"
    if name == "topk":
        largest = arg(call, 3, "largest", True)  # sorted or not: the operator's sorted output is both
        return "topk" if largest and isinstance(arg(call, 1, "k"), int) else "unsupported"
    if name in MULTILINEAR and name not in ("addmm", "baddbmm", "addbmm", "einsum"):
        return "unsupported" if sum(act) >= 2 else "linear"
    if name == "max_pool2d":
        plain = arg(call, 4, "dilation", 1) in (1, (1, 1)) and not arg(call, 5, "ceil_mode", False) \
            and not arg(call, 6, "return_indices", False)
        return "max_pool" if plain else "unsupported"
    if name in SIMPLE_SITES:
        kind = SIMPLE_SITES[name]
        if kind in ("layer_norm", "rms_norm") and any(session.tag_of(arg(call, i, n)) == ACT
                                                      for i, n in ((2, "weight"), (3, "bias"))):
            return "unsupported"  # data-dependent affine parameters (adaptive norms)
        return kind
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if len(tensors) == 1 and tensors[0].is_floating_point() and name not in MULTILINEAR:
        return "elementwise"  # confirmed element-wise by the site table on its first run (is_elementwise)
    return "unsupported"


class SiteTable:
    """The dispatch of a :class:`Session`: routes every call with an activation operand, builds the
    sites while ``calibrating`` and runs their spiking operators afterwards; records what ran."""

    def __init__(self, settings: SpikingMethod, report: ConversionReport, allow_float_fallback: bool) -> None:
        self.settings, self.report, self.allow_float_fallback = settings, report, allow_float_fallback
        self.sites: Dict[Tuple[str, str, int], nn.Module] = {}
        self.calibrating = True
        self.unsupported: Dict[Tuple[str, str], int] = {}
        # fitted activation sites: key -> (entry, params, owner module, attribute, largest |input| seen calibrating)
        self.fitted: Dict[Tuple[str, str, int], list] = {}
        self.elementwise_calls: Dict[Tuple[str, str], bool] = {}  # (path, name) -> is element-wise
        self.untraced: Set[str] = set()  # what torch.compile would not route (UNTRACED_CALLS), where: run eagerly

    def __call__(self, session: Session, name: str, func: Callable, args: tuple, kwargs: dict) -> Any:
        call = (args, kwargs)
        if self.calibrating and func in UNTRACED_CALLS:
            self.untraced.add(f"{session.owner().path or '<root>'}: F.{name}")
        kind = classify(session, name, call)
        if kind in SITE_KINDS and SITE_KINDS[kind].needs and not hasattr(self.settings, SITE_KINDS[kind].needs) \
                or kind == "elementwise" and not self.elementwise(session.owner().path, name, func, call):
            kind = "unsupported"  # the method builds no operator of this kind, or the call is not element-wise
        if kind == "linear":
            out = func(*args, **kwargs)
            if name in VALUE_FREE:
                return out
            if name in DESTINATION and args and isinstance(args[0], torch.Tensor):
                session.mark(args[0], ACT)
        elif kind == "control":
            out = func(*args, **kwargs)
            session.mark(out, CTRL)
            return out
        elif kind == "unsupported":
            out = self.float_fallback(session.owner().path, name, func, call)
        else:
            out = self.run_site(session, kind, name, func, call)
            session.mark(out, ACT, decided=SEL)
            return out
        session.mark(out, ACT)
        return out

    def elementwise(self, path: str, name: str, func: Callable, call: Call) -> bool:
        """Whether the single-tensor call ``name`` at ``path`` is element-wise (and the method fits
        functions on demand): decided on its first run while calibrating (:func:`is_elementwise`)."""
        key = (path, name)
        if key not in self.elementwise_calls:
            self.elementwise_calls[key] = (self.calibrating and hasattr(self.settings, "on_demand")
                                           and is_elementwise(func, call))
        return self.elementwise_calls[key]

    def float_fallback(self, path: str, name: str, func: Callable, call: Call) -> Any:
        key = (path, name)
        if not self.calibrating and not self.allow_float_fallback:
            raise UnsupportedNonlinearityError([key])
        if key not in self.unsupported and not self.calibrating:
            self.report.fallback.append(Entry(path, name, "float", "no spiking operator for this call"))
        self.unsupported[key] = self.unsupported.get(key, 0) + 1
        return func(*call[0], **call[1])

    def run_site(self, session: Session, kind: str, name: str, func: Callable, call: Call) -> Any:
        frame = session.owner()
        ordinal = frame.counters.get(kind, 0)
        frame.counters[kind] = ordinal + 1
        key = (frame.path, kind, ordinal)
        op = self.sites.get(key)
        if op is None:
            if not self.calibrating:
                if self.allow_float_fallback:
                    return self.float_fallback(frame.path, name, func, call)
                raise RuntimeError(f"{name} at {frame.path or '<root>'} did not run on the calibration batches, so it "
                                   "has no spiking operator: convert with calibration batches that exercise this path "
                                   "(the same kind of inputs, e.g. padded batches or generation steps)")
            op = self.build(frame, kind, name, call, func)
        if self.calibrating and key in self.fitted:
            x = arg(call, 0, "input")
            if x.numel():
                self.fitted[key][4] = max(self.fitted[key][4], float(x.detach().abs().max()))
        if self.calibrating and not needs_calibration(op):
            return func(*call[0], **call[1])
        out = (SITE_KINDS[kind].invoke if kind not in ("activation", "elementwise") else _call_module)(op, call)
        if self.calibrating and getattr(op, "outside_domain", 0):
            self.unsupported[(frame.path, f"{name} (inputs outside its domain)")] = 1
        return out

    def build(self, frame: Any, kind: str, name: str, call: Call, func: Callable) -> nn.Module:
        entry, params = None, {}
        attached = f"spiking_{kind}{frame.counters[kind] - 1}"
        path = f"{frame.path}.{attached}" if frame.path else attached
        settings = settings_at(self.settings, path)
        if kind == "activation":
            entry, params = activation_of_call(name, *call)
            op, note = settings.activation(entry, params), entry.note
        elif kind == "elementwise":
            fn, _ = bound_call(func, call)
            op, note = settings.on_demand(fn, fn.name(name)), ON_DEMAND_NOTE
        else:
            op, note = SITE_KINDS[kind].build(settings, call), SITE_KINDS[kind].note
        device = next((v.device for v in call[0] if isinstance(v, torch.Tensor)), None)
        op = op.to(device) if device is not None else op
        frame.module.add_module(attached, op)
        key = (frame.path, kind, frame.counters[kind] - 1)
        self.sites[key] = op
        if kind == "activation" and entry.fitted_target is not None:
            self.fitted[key] = [entry, params, frame.module, attached, 0.0]
        self.report.replaced.append(Entry(path, name, type(op).__name__, note_of(op, note)))
        return op

    def narrow_fitted_activations(self) -> List[str]:
        """Range reduction: a fitted activation site whose calibrated inputs stay within a quarter of
        its fit domain gets the method's operator for ``[-s, s]`` (:meth:`SpikingMethod.narrowed`), ``s``
        the power of two at or above 4x the largest input seen (inputs beyond it are clamped and
        counted); returns their paths."""
        done = []
        for key, (entry, params, owner, attribute, peak) in self.fitted.items():
            lo, hi = entry.domain
            span = 2.0 ** math.ceil(math.log2(4 * peak)) if peak > 0 else None
            if span is None or span > min(-lo, hi) / 4:
                continue
            path = f"{key[0]}.{attribute}" if key[0] else attribute
            op = settings_at(self.settings, path).narrowed(entry, params, span)
            if op is None:
                continue
            param = next(owner.parameters(), None)
            op = op.to(param.device if param is not None else "cpu")
            setattr(owner, attribute, op)
            self.sites[key] = op
            done.append(path)
        return done

    def swap(self, old: nn.Module, new: nn.Module) -> None:
        """Call-level sites that ran ``old`` run ``new`` from now on."""
        for key, op in self.sites.items():
            if op is old:
                self.sites[key] = new

    def unsupported_calls(self) -> List[Tuple[str, str]]:
        """The calls left without a spiking operator: (path, call), those no neuron fits with their reason."""
        refused = {(path, f"{op.name} ({op.refused})") for (path, _, _), op in self.sites.items()
                   if getattr(op, "refused", "")}
        return sorted(set(self.unsupported) | refused)


def _call_module(module: nn.Module, call: Call) -> Any:
    return module(next(v for v in (*call[0], *call[1].values()) if isinstance(v, torch.Tensor)))


ON_DEMAND_NOTE = "element-wise function on an MBE neuron fitted to its calibrated input range (Eq. 8)"


def bound_call(func: Callable, call: Call) -> Tuple[BoundCall, torch.Tensor]:
    """The call as a function of its one tensor operand (the operand itself not kept), and the operand."""
    args, kwargs = call
    index = next((i for i, v in enumerate(args) if isinstance(v, torch.Tensor)), None)
    if index is None:
        index = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    x = args[index] if isinstance(index, int) else kwargs[index]
    args = tuple(None if i == index else v for i, v in enumerate(args))
    kwargs = tuple((k, None if k == index else v) for k, v in kwargs.items())
    return BoundCall(func, args, kwargs, index), x


def is_elementwise(func: Callable, call: Call) -> bool:
    """A run-time check that the call maps its one floating tensor operand element by element: the
    output has the input's shape and dtype class, and permuting the input's elements permutes the
    output's alike (a fixed permutation of the calibration values themselves)."""
    fn, x = bound_call(func, call)
    with torch.no_grad():
        y = fn(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or not y.is_floating_point() or x.numel() < 2:
            return False
        order = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0)).to(x.device)
        permuted = fn(x.detach().flatten()[order].reshape(x.shape))
    return bool(torch.equal(permuted.flatten(), y.detach().flatten()[order]) or
                torch.allclose(permuted.flatten(), y.detach().flatten()[order], equal_nan=True))


def needs_calibration(module: nn.Module) -> bool:
    """The operator (or one of its parts) still records operand ranges."""
    return any(isinstance(m, Calibrated) and m.calibrating for m in module.modules())
