"""FX graph passes: classify every call of a traced model, then put spiking operators in place of
products between activations, SDPA calls and functional nonlinearities."""
from __future__ import annotations

import operator
from functools import reduce
from typing import Any, Callable, Dict, List, Mapping, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from .blocks import SpikingAttention
from .calibration import Batch
from .operators import OpSettings
from .registry import EXPOSE, ModuleRule
from .report import ConversionReport, Entry

LINEAR_FUNCTIONS = {operator.add, operator.sub, operator.neg, operator.getitem, operator.eq, getattr, torch.add,
                    torch.sub, torch.cat, torch.stack, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                    torch.squeeze, torch.unsqueeze, torch.mean, torch._assert, F.dropout}
LINEAR_METHODS = {"add", "sub", "reshape", "view", "permute", "transpose", "flatten", "expand", "unbind",
                  "contiguous", "size", "split", "chunk", "squeeze", "unsqueeze", "mean", "to", "type_as",
                  "clone", "repeat", "dim"}
PRODUCTS = {operator.mul, torch.mul, "mul"}
MATMULS = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"}
DIVISIONS = {operator.truediv, torch.div, "div"}
SDPA = F.scaled_dot_product_attention
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _bind(node: fx.Node, names: Tuple[str, ...]) -> Dict[str, Any]:
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    return reduce(getattr, target.split("."), gm)


def _layer_norm(node: fx.Node, gm: fx.GraphModule, s: OpSettings) -> nn.Module:
    """``F.layer_norm`` with traced ``weight``/``bias`` attributes -> ``SpikingLayerNorm`` on the same tensors."""
    b = _bind(node, ("input", "normalized_shape", "weight", "bias", "eps"))
    weight, bias = b.get("weight"), b.get("bias")
    if any(t is not None and (not isinstance(t, fx.Node) or t.op != "get_attr") for t in (weight, bias)):
        raise ValueError(f"{node.name}: layer_norm affine parameters must be module attributes")
    ln = nn.LayerNorm(b["normalized_shape"], eps=b.get("eps", 1e-5), elementwise_affine=weight is not None,
                      bias=bias is not None)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            value = _fetch(gm, t.target)
            setattr(ln, name, value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False))
    return s.layer_norm(ln)


NONLINEAR: Dict[Any, Callable[[fx.Node, fx.GraphModule, OpSettings], nn.Module]] = {
    F.gelu: lambda n, gm, s: s.gelu(_bind(n, ("input", "approximate")).get("approximate", "none")),
    F.silu: lambda n, gm, s: s.silu(),
    torch.tanh: lambda n, gm, s: s.tanh(),
    "tanh": lambda n, gm, s: s.tanh(),
    F.softmax: lambda n, gm, s: s.softmax(_bind(n, ("input", "dim"))["dim"]),
    torch.softmax: lambda n, gm, s: s.softmax(_bind(n, ("input", "dim"))["dim"]),
    "softmax": lambda n, gm, s: s.softmax(_bind(n, ("input", "dim"))["dim"]),
    F.layer_norm: _layer_norm,
}


def owner(node: fx.Node) -> str:
    """Path of the innermost module the call was traced in ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def describe(node: fx.Node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return f"{node.op} {name}"


def propagate_shapes(gm: fx.GraphModule, batch: Batch) -> None:
    """Run one example batch through ``gm`` so every tensor-valued node carries ``tensor_meta``."""
    args = []
    for i, p in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if isinstance(batch, torch.Tensor) and i == 0:
            args.append(batch)
        elif isinstance(batch, Mapping) and p.target in batch:
            args.append(batch[p.target])
        elif p.args:
            args.append(p.args[0])
        else:
            raise ValueError(f"example batch gives no value for input {p.target!r}")
    ShapeProp(gm).propagate(*args)


def _activations(gm: fx.GraphModule) -> Set[fx.Node]:
    """Nodes that depend on an input (the rest are constants built from attributes)."""
    act: Set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in act for a in node.all_input_nodes):
            act.add(node)
    return act


def _kind(node: fx.Node, gm: fx.GraphModule, table: Mapping[type, ModuleRule], act: Set[fx.Node]) -> str | None:
    if node.op == "call_module":
        rule = table.get(type(gm.get_submodule(node.target)))
        return "module" if rule is not None and rule.phase != EXPOSE else None

    def tensor(a: Any) -> bool:
        return isinstance(a, fx.Node) and a in act and isinstance(a.meta.get("tensor_meta"), TensorMetadata)

    key, args = node.target, node.args
    if key is SDPA:
        return "attention"
    if key in MATMULS or key in PRODUCTS:
        both = len(args) >= 2 and tensor(args[0]) and tensor(args[1])
        return ("matmul" if key in MATMULS else "product") if both else "linear"
    if key in DIVISIONS:
        return None if len(args) >= 2 and tensor(args[1]) else "linear"
    if key in NONLINEAR:
        return "nonlinear"
    return "linear" if key in LINEAR_FUNCTIONS or key in LINEAR_METHODS else None


def classify(gm: fx.GraphModule, table: Mapping[type, ModuleRule]) -> Tuple[Dict[fx.Node, str], List[Tuple[str, str]]]:
    """Kind of every call node (``linear``, ``module``, ``product``, ``matmul``, ``attention``,
    ``nonlinear``) and ``(owner path, call)`` of the calls no rule covers. Needs ``propagate_shapes``."""
    act = _activations(gm)
    kinds: Dict[fx.Node, str] = {}
    unknown: List[Tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            kind = _kind(node, gm, table, act)
            if kind is None:
                unknown.append((owner(node), describe(node)))
            else:
                kinds[node] = kind
    return kinds, unknown


def _swap(gm: fx.GraphModule, node: fx.Node, module: nn.Module, name: str, args: tuple, kwargs: dict,
          take: int | None = None) -> str:
    """Install ``module`` next to the call's owner and route the call through it (through output
    ``take`` of it when it returns a tuple); returns its path."""
    base = f"{owner(node)}.{name}" if owner(node) else name
    path, i = base, 1
    while any(p == path for p, _ in gm.named_modules()):
        path, i = f"{base}_{i}", i + 1
    gm.add_submodule(path, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(path, args, kwargs)
        new.meta = dict(node.meta)
        if take is not None:
            new = gm.graph.call_function(operator.getitem, (new, take))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return path


def _sdpa_call(node: fx.Node) -> Tuple[tuple, dict]:
    b = _bind(node, SDPA_ARGS)
    if b.get("dropout_p", 0.0) or b.get("enable_gqa", False):
        raise ValueError(f"{node.name}: spiking attention supports dropout_p=0 and enable_gqa=False only")
    return (b["query"], b["key"], b["value"], b.get("attn_mask")), {"scale": b.get("scale"),
                                                                     "is_causal": b.get("is_causal", False)}


def insert_products(gm: fx.GraphModule, kinds: Dict[fx.Node, str], settings: OpSettings,
                    report: ConversionReport) -> None:
    """Products of two activations -> SpikingProduct/SpikingMatmul; SDPA -> SpikingAttention (Eqs. 9-12)."""
    for node, kind in list(kinds.items()):
        take = None
        if kind == "product":
            module, args, kwargs = settings.product(), tuple(node.args[:2]), {}
        elif kind == "matmul":
            module, args, kwargs = settings.matmul(), tuple(node.args[:2]), {}
        elif kind == "attention":
            module, (args, kwargs), take = SpikingAttention(settings), _sdpa_call(node), 0
        else:
            continue
        source = describe(node)
        path = _swap(gm, node, module, kind, args, kwargs, take)
        del kinds[node]
        report.replaced.append(Entry(path, source, type(module).__name__, "product of two activations"
                                     if kind != "attention" else "attention core: Q K^T, softmax, A V"))


def replace_functions(gm: fx.GraphModule, kinds: Dict[fx.Node, str], settings: OpSettings,
                      report: ConversionReport) -> None:
    """Functional nonlinearities (gelu, silu, tanh, softmax, layer_norm) -> spiking operator modules."""
    for node, kind in list(kinds.items()):
        if kind != "nonlinear":
            continue
        module = NONLINEAR[node.target](node, gm, settings)
        source = describe(node)
        path = _swap(gm, node, module, source.split()[-1], (node.args[0],), {})
        del kinds[node]
        report.replaced.append(Entry(path, source, type(module).__name__))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
