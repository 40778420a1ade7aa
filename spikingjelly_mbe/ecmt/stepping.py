"""Time-stepped evaluation of an ECMT-converted network (Huang et al., ACM MM 2024).

The network is evaluated ``T`` times on the same analog input; its stateful modules (MT neurons,
expectation compensation) turn each evaluation into one time step, and the network's output is
the mean of its ``T`` step outputs (the running sum divided by ``T``).
"""
from __future__ import annotations

import copy
from typing import Any, List, Mapping, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

STEP_CACHES = "ecmt_step_caches"  # the attribute of a KV cache holding the other time steps' caches


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


def _step_caches(cache: Any, T: int) -> List[Any]:
    """One KV cache per time step: ``cache`` (what the caller holds) and the ``T - 1`` others it carries."""
    steps = getattr(cache, STEP_CACHES, None)
    if steps is not None and len(steps) == T - 1:
        return [cache, *steps]
    if cache.get_seq_length() != 0:
        raise NotImplementedError(
            "run_steps: this KV cache was filled outside the time-stepped network, so it holds one set of keys and "
            "values, while an ECMT network needs one per time step (each step sees its own spike increments): "
            "start generation with an empty cache, or pass use_cache=False")
    return [cache] + [copy.deepcopy(cache) for _ in range(T - 1)]


def run_steps(module: nn.Module, *args: Any, T: int, **kwargs: Any) -> Any:
    """Reset ``module``'s state, call ``module(*args, **kwargs)`` ``T`` times and return the mean
    output (same structure: tensor, tuple, list, dict or HF ``ModelOutput``; non-float entries
    must not change between steps). State and operator counts stay readable afterwards; the next
    call resets them.

    An HF model whose config enables the cache is called with ``use_cache=False`` unless the caller
    passes ``use_cache``. A KV cache (``past_key_values``, or ``use_cache=True``) is kept per time step: step ``t`` reads
    and extends the keys and values of step ``t`` of the earlier calls, so a cached forward gives
    what the whole sequence would. The returned cache carries the other steps' caches; pass it back.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (time steps) must be a positive integer, got {T!r}")
    if "use_cache" not in kwargs and getattr(getattr(module, "config", None), "use_cache", False):
        kwargs["use_cache"] = False  # a plain forward keeps no cache unless asked to
    cache = kwargs.get("past_key_values")
    caches = _step_caches(cache, T) if cache is not None else [None] * T
    for m in module.modules():  # SpikingJelly memories only: a model's own modules may have another reset()
        if isinstance(m, base.MemoryModule):
            m.reset()
    acc: Optional[Any] = None
    out: Any = None
    for step in range(T):
        if cache is not None:
            kwargs["past_key_values"] = caches[step]
        out = module(*args, **kwargs)
        if isinstance(out, Mapping) and out.get("past_key_values") is not None:
            caches[step] = out["past_key_values"]
            out["past_key_values"] = caches[0]  # one cache in the averaged output, carrying the others
        acc = _start(out) if step == 0 else _add(acc, out, "output")
    if caches[0] is not None:
        setattr(caches[0], STEP_CACHES, caches[1:])
    return _mean(acc, out, T)


class TimeStepped(nn.Module):
    """The converted network run ``T`` times on the repeated input; the output is the mean over the
    steps (:func:`run_steps`). ``generate`` (a causal LM's) runs every forward so, with or without
    the KV cache."""

    def __init__(self, network: nn.Module, T: int) -> None:
        super().__init__()
        self.network, self.T = network, T

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return run_steps(self.network, *args, T=self.T, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The network's own ``generate`` with every forward time-stepped: it runs on a view of the
        network (the same modules and state) whose calls are :func:`run_steps`."""
        network = self.network
        if not callable(getattr(network, "generate", None)):
            raise AttributeError(f"{type(network).__name__} has no generate(): it is not a generative model")
        stepped = type(f"TimeStepped{type(network).__name__}", (type(network),),
                       {"__call__": lambda view, *a, **k: self(*a, **k)})
        view = object.__new__(stepped)
        view.__dict__ = network.__dict__
        return view.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)  # config, spiking_report, ... of the network
