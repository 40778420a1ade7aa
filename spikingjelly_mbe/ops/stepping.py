"""Time-stepped evaluation of an ECMT-converted network (Huang et al., ACM MM 2024).

The network is evaluated ``T`` times on the same analog input; its stateful modules (MT neurons,
expectation compensation) turn each evaluation into one time step, and the network's output is
the mean of its ``T`` step outputs (the running sum divided by ``T``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional


def _add(acc: Any, out: Any, path: str) -> Any:
    """``acc + out`` over matching structures: float tensors are summed (in float32 or wider),
    anything else must be the same at every step."""
    if isinstance(out, torch.Tensor):
        if not isinstance(acc, torch.Tensor) or acc.shape != out.shape:
            raise ValueError(f"run_steps: output {path} changed shape between steps")
        if torch.is_floating_point(out):
            return acc + out
        if not torch.equal(acc, out):
            raise ValueError(f"run_steps: non-float output {path} ({out.dtype}) differs between steps, so it "
                             "cannot be averaged")
        return acc
    if out is None or isinstance(out, (bool, int, float, str)):
        if acc != out:
            raise ValueError(f"run_steps: output {path} differs between steps ({acc!r} vs {out!r})")
        return acc
    if isinstance(out, Mapping):
        if not isinstance(acc, Mapping) or list(acc.keys()) != list(out.keys()):
            raise ValueError(f"run_steps: the fields of output {path} changed between steps")
        return _rebuild(out, {k: _add(acc[k], v, f"{path}.{k}") for k, v in out.items()})
    if isinstance(out, (tuple, list)):
        if len(acc) != len(out):
            raise ValueError(f"run_steps: output {path} changed length between steps")
        return type(out)(_add(a, o, f"{path}[{i}]") for i, (a, o) in enumerate(zip(acc, out)))
    if acc is out:
        return acc
    hint = " (a KV cache: pass use_cache=False)" if "cache" in type(out).__name__.lower() else ""
    raise TypeError(f"run_steps: output {path} is a {type(out).__name__}{hint}; only tensors, numbers, tuples, "
                    "lists, dicts and ModelOutputs can be averaged over the steps")


def _rebuild(template: Mapping, items: dict) -> Mapping:
    """A mapping of ``template``'s type (dict, OrderedDict, HF ``ModelOutput``) holding ``items``."""
    return type(template)(**items) if type(template) is not dict else items


def _start(out: Any) -> Any:
    """The running sum's first value: float tensors widened to at least float32."""
    if isinstance(out, torch.Tensor) and torch.is_floating_point(out):
        return out.to(torch.promote_types(out.dtype, torch.float32))
    if isinstance(out, Mapping):
        return _rebuild(out, {k: _start(v) for k, v in out.items()})
    if isinstance(out, (tuple, list)):
        return type(out)(_start(o) for o in out)
    return out


def _mean(acc: Any, template: Any, T: int) -> Any:
    """``acc / T`` for the float tensors, back in the dtype of the step outputs (``template``)."""
    if isinstance(acc, torch.Tensor) and torch.is_floating_point(acc):
        return (acc / T).to(template.dtype)
    if isinstance(acc, Mapping):
        return _rebuild(acc, {k: _mean(v, template[k], T) for k, v in acc.items()})
    if isinstance(acc, (tuple, list)):
        return type(acc)(_mean(a, o, T) for a, o in zip(acc, template))
    return acc


def run_steps(module: nn.Module, *args: Any, T: int, **kwargs: Any) -> Any:
    """Reset ``module``'s state, call ``module(*args, **kwargs)`` ``T`` times and return the mean
    output (same structure: tensor, tuple, list, dict or HF ``ModelOutput``; non-float entries
    must not change between steps). State and operator counts stay readable afterwards; the next
    call resets them.

    There is no KV cache: ``use_cache=True`` raises, and an HF model whose config enables the cache
    is called with ``use_cache=False`` unless the caller passes ``use_cache`` itself.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (time steps) must be a positive integer, got {T!r}")
    if kwargs.get("use_cache"):
        raise ValueError("run_steps: use_cache=True is not supported: ECMT re-runs the whole input at every step "
                         "and keeps no KV cache; pass use_cache=False")
    if "use_cache" not in kwargs and getattr(getattr(module, "config", None), "use_cache", False):
        kwargs["use_cache"] = False
    functional.reset_net(module)
    acc: Optional[Any] = None
    out: Any = None
    for step in range(T):
        out = module(*args, **kwargs)
        acc = _start(out) if step == 0 else _add(acc, out, "output")
    return _mean(acc, out, T)
