"""Run-time interception of tensor functions (torch's ``TorchFunctionMode``): what each call computes.

A model converts by what runs, not by its class names. While a forward runs under a
:class:`Session`, every tensor function call is seen with the module path it runs in (global
module hooks keep the stack) and the provenance of its operands:

* ``ACT``: a floating tensor that depends on the input data (the activations a spiking network
  carries as spikes); model inputs and embedding lookups start it, every op with an ``ACT`` operand
  continues it;
* ``DYN``: data-dependent but not an activation (token ids, padding masks and what is built from
  them, position ids);
* ``SEL``: an index or mask a spiking operator chose (a top-k's winners) and what is built from it:
  selecting or masking activations by it routes spikes, which is linear;
* ``CTRL``: a decision taken on activations (a comparison), which makes a later selection nonlinear;
* constants: parameters, buffers and what is computed from them alone (RoPE tables, biases).

Calls with no ``ACT`` operand never matter to conversion. Calls with one are linear (reshapes,
sums, products with constants, linear layers: weights reused), a *site* (a nonlinearity, or a
product of two activations, that a spiking operator replaces), or unsupported (reported, and an
error in strict mode). Modules marked ``mbe_opaque`` (the spiking operators, and modules planned for
replacement) are not looked into.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from ..ops.base import SpikingOp

CONST, DYN, SEL, CTRL, ACT = 0, 1, 2, 3, 4

IGNORED = frozenset({
    "__get__", "size", "dim", "numel", "stride", "is_floating_point", "is_contiguous", "data_ptr", "element_size",
    "__len__", "__format__", "__repr__", "item", "tolist", "requires_grad_", "storage_offset", "get_device",
    "__hash__", "_set_grad_enabled", "is_complex", "nelement", "ndimension", "__iter__", "__contains__",
    "__reversed__", "__array__", "untyped_storage", "_is_view", "is_inference", "__index__", "__int__", "__float__",
    "__bool__", "is_nonzero", "has_names", "_has_compatible_shallow_copy_type", "__deepcopy__", "__reduce_ex__",
    "__setstate__", "__getstate__", "numpy", "cpu", "cuda", "share_memory_", "pin_memory", "is_pinned", "equal"})

LINEAR = frozenset({
    # arithmetic that is linear in the activations (products with constants: synaptic weights)
    "add", "sub", "subtract", "rsub", "neg", "negative", "sum", "mean", "cumsum", "embedding", "batch_norm",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "interpolate", "upsample", "trace", "diff",
    # layout, copies and selection by constants or data-independent masks
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "swapaxes", "swapdims", "movedim",
    "moveaxis", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "broadcast_to", "repeat",
    "repeat_interleave", "tile", "contiguous", "clone", "detach", "to", "float", "half", "double", "bfloat16",
    "type", "type_as", "getitem", "setitem", "select", "index_select", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "tensor_split", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "roll", "flip",
    "pad", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "masked_fill",
    "where", "gather", "scatter", "scatter_add", "index_put", "index_add", "masked_scatter", "diagonal", "tril",
    "triu", "unfold", "fold", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "copy", "fill", "zero",
    "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full",
    "new_tensor", "as_strided", "narrow_copy", "unfold_copy", "contiguous_format", "align_to", "atleast_1d",
    "atleast_2d", "atleast_3d", "ravel", "flatten_dense_tensors", "view_as_real", "real", "conj", "resolve_conj",
    "resolve_neg", "dropout_", "identity", "positive"})

COMPARISONS = frozenset({
    "eq", "ne", "gt", "ge", "lt", "le", "greater", "greater_equal", "less", "less_equal", "not_equal", "isnan",
    "isinf", "isfinite", "isposinf", "isneginf", "any", "all", "argmax", "argmin", "argsort", "logical_and",
    "logical_or", "logical_not", "logical_xor", "long", "int", "bool", "short", "byte", "char", "nonzero", "allclose",
    "isclose", "count_nonzero", "signbit"})

# linear in each operand, a product when two operands carry activations (weights: constants)
MULTILINEAR = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                         "conv_transpose3d", "einsum", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "outer",
                         "tensordot", "bilinear", "addcmul", "addcdiv", "lerp", "kron", "inner", "vdot"})
# new tensors that take only the shape, dtype and device of their operand: constants
VALUE_FREE = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
                        "new_full"})
# in-place writes whose destination (the first operand) takes the written activations
DESTINATION = frozenset({"setitem", "copy", "index_put", "masked_scatter", "scatter", "fill"})


_DUNDERS = {"add": "add", "radd": "add", "iadd": "add", "sub": "sub", "isub": "sub", "rsub": "rsub",
            "mul": "mul", "rmul": "mul", "imul": "mul", "matmul": "matmul", "imatmul": "matmul",
            "truediv": "div", "itruediv": "div", "rtruediv": "rdiv", "rdiv": "rdiv", "floordiv": "floor_divide",
            "rfloordiv": "rfloor_divide", "pow": "pow", "ipow": "pow", "rpow": "rpow", "neg": "neg",
            "pos": "positive", "abs": "abs", "getitem": "getitem", "setitem": "setitem", "eq": "eq", "ne": "ne",
            "gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "invert": "logical_not", "and": "logical_and",
            "or": "logical_or", "xor": "logical_xor", "mod": "remainder", "get": "__get__"}


@torch._dynamo.assume_constant_result  # a pure function of the function called: torch.compile folds it
def op_name(func: Callable) -> str:
    """A call's canonical name: ``Tensor.__mul__``/``__rmul__``/``torch.mul``/``Tensor.mul_`` ->
    ``'mul'``; ``__rtruediv__`` (the tensor is the divisor) -> ``'rdiv'``."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        return _DUNDERS.get(name[2:-2], name)
    if name.endswith("_") and not name.startswith("_"):
        return name[:-1]
    return name


@dataclass
class Frame:
    """A module call on the stack: its path, its per-kind counters of sites, and whether it is opaque."""

    path: str
    module: nn.Module
    opaque: bool
    counters: Dict[str, int] = field(default_factory=dict)


def is_opaque(module: nn.Module) -> bool:
    """Spiking operators and blocks compute with float tensors internally: never looked into."""
    return isinstance(module, SpikingOp) or bool(getattr(module, "mbe_opaque", False))


class Session(TorchFunctionMode):
    """One forward of ``root`` under interception; ``dispatch(session, name, func, args, kwargs)``
    handles every call with an activation operand (see :class:`~.sites.SiteTable`)."""

    def __init__(self, root: nn.Module, dispatch: Callable[..., Any], opaque_ids: frozenset = frozenset()) -> None:
        super().__init__()
        self.root, self.dispatch, self.opaque_ids = root, dispatch, opaque_ids
        self.paths = {id(m): p for p, m in root.named_modules(remove_duplicate=False)}
        # eager: weak keys, so the tags keep no activation alive; traced by torch.compile (which traces no weak
        # reference): a plain dict of the trace's tensors, gone with the session at the end of the trace
        self.tags = {} if torch.compiler.is_compiling() else WeakIdKeyDictionary()
        self.stack: List[Frame] = []
        self.root_frame = Frame("", root, False)  # calls in the root's own forward (the session opens inside it)
        self.opaque_depth = 0

    # ---- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        # a traced forward runs on one thread, and its hooks are traced calls: no thread to tell apart
        self.thread = None if torch.compiler.is_compiling() else threading.get_ident()
        # what register_module_forward_(pre_)hook(..., always_call=True) do, keyed by the session rather than
        # a RemovableHandle (whose class counter torch.compile does not trace)
        module_hooks._global_forward_pre_hooks[self] = self._push
        module_hooks._global_forward_hooks[self] = self._pop
        module_hooks._global_forward_hooks_always_called[self] = True
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for hooks in (module_hooks._global_forward_pre_hooks, module_hooks._global_forward_hooks,
                      module_hooks._global_forward_hooks_always_called):
            hooks.pop(self, None)
        super().__exit__(*exc)

    def _push(self, module: nn.Module, args: tuple) -> None:
        if self.thread is not None and threading.get_ident() != self.thread:
            return  # the module hooks are global: another thread's forward is that thread's session's
        path = self.paths.get(id(module))
        opaque = is_opaque(module) or id(module) in self.opaque_ids
        if path is None and not opaque:
            return  # not part of the model (a module built on the fly): its calls belong to the caller
        self.stack.append(Frame(path or "", module, opaque))
        self.opaque_depth += opaque

    def _pop(self, module: nn.Module, args: tuple, output: Any) -> None:
        this_thread = self.thread is None or threading.get_ident() == self.thread
        if this_thread and self.stack and self.stack[-1].module is module:
            frame = self.stack.pop()
            if frame.opaque:
                self.opaque_depth -= 1
                if not self.opaque_depth and self.tag_of(args) == ACT:
                    self.mark(output, ACT)

    # ---- provenance -------------------------------------------------------------------------
    def tag_of(self, value: Any) -> int:
        """The strongest tag among the tensors in ``value`` (one level into lists, tuples and dicts)."""
        if isinstance(value, torch.Tensor):
            return self.tags.get(value, CONST)
        best = CONST
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        for item in items:
            if isinstance(item, torch.Tensor):
                best = max(best, self.tags.get(item, CONST))
            elif isinstance(item, (list, tuple)):
                best = max(best, self.tag_of(item))
        return best

    def mark(self, value: Any, tag: int, decided: int = CTRL) -> None:
        """Tag every tensor in ``value``; floating ones with ``tag``, the others with ``decided`` where
        ``tag`` is ``ACT`` (a decision on activations: ``CTRL``, or ``SEL`` when a spiking operator took it)."""
        if isinstance(value, torch.Tensor):
            self.tags[value] = tag if value.is_floating_point() or tag != ACT else decided
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.mark(item, tag, decided)
        elif isinstance(value, dict):
            for item in value.values():
                self.mark(item, tag, decided)

    def mark_inputs(self, args: tuple, kwargs: dict) -> None:
        """Floating inputs are activations; integer and boolean inputs (ids, masks) are ``DYN``."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                self.tags[value] = ACT if value.is_floating_point() else DYN

    def owner(self) -> Frame:
        """The innermost module call running (a method: torch.compile traces no property of a mode)."""
        return self.stack[-1] if self.stack else self.root_frame

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if self.opaque_depth:
            return func(*args, **kwargs)
        name = op_name(func)
        if name in IGNORED:
            return func(*args, **kwargs)
        tag = max(self.tag_of(args), self.tag_of(kwargs))
        if tag == ACT:
            return self.dispatch(self, name, func, args, kwargs)
        out = func(*args, **kwargs)
        if tag == DYN and name == "embedding":
            self.mark(out, ACT)  # a lookup of constant vectors by data-dependent ids: the input activations
        elif tag:
            self.mark(out, tag)
        return out

