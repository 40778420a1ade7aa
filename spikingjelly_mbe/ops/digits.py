"""Digits where they matter: ``T`` (the digits, i.e. time steps, of every spike code) as one integer,
or per operator type and per module path.

A mapping ``{"default": 4, "softmax": 6, "norm": 6, "model.layers.0.*": 8}`` has keys of three kinds:

* ``"default"``: every operator no other key covers (required in a mapping);
* an operator type of :data:`OPERATOR_TYPES` (``"softmax"``, ``"norm"``, ``"weight_input"``, ...);
* a module-path pattern (``fnmatch`` glob; it must contain a ``.`` or a wildcard unless a type
  follows it), matched against the path of the module a site builds
  (``model.layers.0.self_attn.spiking_attention``, ``model.layers.0.mlp.down_proj``; the parts of a
  composite such as the attention core take its path), optionally restricted to one type:
  ``"model.layers.0.*:softmax"``, ``"classifier:weight_input"``.

Precedence, the more specific key first: a pattern with a type, then a pattern, then the type, then
``"default"``; among matching patterns of one kind, the one with more literal (non-wildcard)
characters, and of equal ones the later in the mapping.
"""
from __future__ import annotations

import fnmatch
import numbers
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

import torch.nn as nn

from .activation import RectifiedActivation, SpikingActivation
from .coding import MAX_T
from .norm import SpikingGroupNorm, SpikingLayerNorm, SpikingRMSNorm
from .on_demand import FittedOnDemand
from .products import SpikingEinsum, SpikingMatmul, SpikingProduct
from .rectifier import PiecewiseLinear, SpikingMaxPool2d, SpikingReLU
from .roots import SpikingRoot
from .routing import SpikingTopK
from .softmax import SpikingSoftmax
from .weight_input import SpikingWeightInput

Steps = Union[int, Mapping[str, int]]
DEFAULT_KEY = "default"
WILDCARDS = "*?["
# operator type -> the operator classes of that type (the keys a per-type T takes, the report's groups)
OPERATOR_TYPES: Dict[str, Tuple[Type[nn.Module], ...]] = {
    "activation": (SpikingActivation, RectifiedActivation, PiecewiseLinear, SpikingReLU, FittedOnDemand),
    "softmax": (SpikingSoftmax,),
    "norm": (SpikingLayerNorm, SpikingRMSNorm, SpikingGroupNorm),
    "product": (SpikingProduct,),
    "matmul": (SpikingMatmul, SpikingEinsum),
    "root": (SpikingRoot,),
    "weight_input": (SpikingWeightInput,),
    "max_pool": (SpikingMaxPool2d,),
    "topk": (SpikingTopK,),
}
KNOWN_KEYS = (DEFAULT_KEY, *OPERATOR_TYPES)
KEY_HELP = (f"known keys: {', '.join(repr(k) for k in KNOWN_KEYS)}, or a module-path pattern such as "
            "'model.layers.0.*' (optionally ':<type>', e.g. 'model.layers.0.*:softmax')")


def type_of(module: nn.Module) -> Optional[str]:
    """The operator type of ``module`` (a key of :data:`OPERATOR_TYPES`), ``None`` for other modules."""
    return next((kind for kind, classes in OPERATOR_TYPES.items() if isinstance(module, classes)), None)


def _check_value(key: Optional[str], value: object) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= int(value) <= MAX_T:
        return int(value)
    if key is None:
        raise ValueError(f"T must be a positive integer (at most {MAX_T}: the digits of every spike code) or a "
                         f"mapping of them per operator type / module path, e.g. {{'default': 4, 'softmax': 6}}, "
                         f"got {value!r}")
    raise ValueError(f"T[{key!r}] must be a positive integer (at most {MAX_T}: the digits of a spike code), "
                     f"got {value!r}")


def _split(key: str) -> Tuple[str, Optional[str]]:
    """``'pattern:type'`` -> ``('pattern', 'type')``; ``'pattern'`` -> ``('pattern', None)``."""
    pattern, _, kind = key.rpartition(":") if ":" in key else (key, "", "")
    return pattern, kind or None


def check_T(T: object) -> Steps:
    """``T`` as an ``int``, or a mapping checked key by key and copied into a plain ``dict`` (its order
    kept); a bad key or value raises a ``ValueError`` naming ``T``, it and the known keys."""
    if not isinstance(T, Mapping):
        return _check_value(None, T)
    if DEFAULT_KEY not in T:
        raise ValueError(f"T: a per-operator mapping needs a 'default' entry (the digits of every other operator), "
                         f"got {dict(T)!r}; {KEY_HELP}")
    checked: Dict[str, int] = {}
    for key, value in T.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"T: key {key!r} is not a non-empty string; {KEY_HELP}")
        pattern, kind = _split(key)
        plain = key in KNOWN_KEYS
        path_like = "." in pattern or any(c in pattern for c in WILDCARDS) or kind is not None
        if not plain and (not pattern or not path_like or (kind is not None and kind not in OPERATOR_TYPES)):
            raise ValueError(f"T: unknown key {key!r}; {KEY_HELP}")
        checked[key] = _check_value(key, value)
    return checked


def _literal(pattern: str) -> int:
    return sum(c not in WILDCARDS for c in pattern)


def steps_at(T: Steps, kind: str, path: str = "") -> int:
    """The digits of an operator of type ``kind`` built at module ``path`` under ``T`` (the precedence of
    the module docstring)."""
    if not isinstance(T, Mapping):
        return T
    if kind not in OPERATOR_TYPES:
        raise ValueError(f"unknown operator type {kind!r}; known: {', '.join(OPERATOR_TYPES)}")
    best: Tuple[int, int, int] = (-1, -1, -1)  # (specificity, literal characters, order)
    value = T.get(kind, T[DEFAULT_KEY])
    for order, (key, steps) in enumerate(T.items()):
        if key in KNOWN_KEYS:
            continue
        pattern, only = _split(key)
        if (only is None or only == kind) and fnmatch.fnmatchcase(path, pattern):
            rank = (1 if only is not None else 0, _literal(pattern), order)
            if rank > best:
                best, value = rank, steps
    return value


def resolved_at(T: Steps, path: str) -> Steps:
    """``T`` for the operators built at ``path``: its patterns applied, one entry per operator type (the
    ``int`` itself when every type gets the same digits)."""
    if not isinstance(T, Mapping):
        return T
    per_type = {kind: steps_at(T, kind, path) for kind in OPERATOR_TYPES}
    if len(set(per_type.values())) == 1:
        return next(iter(per_type.values()))
    return {DEFAULT_KEY: T[DEFAULT_KEY], **per_type}


def has_patterns(T: Steps) -> bool:
    return isinstance(T, Mapping) and any(key not in KNOWN_KEYS for key in T)


def values_for(T: Steps, kinds: Tuple[str, ...]) -> Tuple[int, ...]:
    """Every digit count ``T`` may give an operator of one of ``kinds``, whatever its path."""
    if not isinstance(T, Mapping):
        return (T,)
    found = [T.get(kind, T[DEFAULT_KEY]) for kind in kinds]
    found += [v for key, v in T.items() if key not in KNOWN_KEYS and _split(key)[1] in (None, *kinds)]
    return tuple(dict.fromkeys(found))


def default_steps(T: Steps) -> int:
    """The digits of the operators no key of ``T`` singles out."""
    return T[DEFAULT_KEY] if isinstance(T, Mapping) else T


def overrides(T: Steps) -> str:
    """``'softmax=6, norm=6'``: every key of ``T`` beside the default (``''`` for one integer)."""
    return ", ".join(f"{k}={v}" for k, v in T.items() if k != DEFAULT_KEY) if isinstance(T, Mapping) else ""


def unmatched_patterns(T: Steps, paths: Iterable[str]) -> List[str]:
    """The module-path keys of ``T`` that match none of ``paths`` (a misspelt layer name)."""
    if not isinstance(T, Mapping):
        return []
    paths = list(paths)
    return [key for key in T if key not in KNOWN_KEYS
            and not any(fnmatch.fnmatchcase(p, _split(key)[0]) for p in paths)]


def operator_types(model: nn.Module) -> Dict[str, str]:
    """``{path: operator type}`` of the outermost operators of ``model`` (an operator inside another,
    e.g. the rectifier of a max pooling, belongs to the outer one's type)."""
    found: Dict[str, str] = {}
    for path, module in model.named_modules():
        kind = type_of(module)
        if kind is not None and not any(outer == "" or path.startswith(f"{outer}.") for outer in found):
            found[path] = kind
    return found


def steps_of(module: nn.Module) -> Optional[int]:
    """The ``T`` an operator runs at: its own, or, for one assembled from others (a rectified
    activation, a piecewise-linear function, a max pooling), that of its parts; ``None`` for a
    module stepped from outside (ECMT's)."""
    return next((m.T for m in module.modules() if isinstance(getattr(m, "T", None), int)), None)


def digits_by_type(model: nn.Module) -> Dict[str, Dict[int, int]]:
    """``{operator type: {T: how many operators}}`` of ``model``'s outermost operators."""
    counts: Dict[str, Dict[int, int]] = {}
    for path, kind in operator_types(model).items():
        steps = steps_of(model.get_submodule(path))
        counts.setdefault(kind, {})
        counts[kind][steps] = counts[kind].get(steps, 0) + 1
    return counts
