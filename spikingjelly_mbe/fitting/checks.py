"""Checks of fitted-neuron fields read from JSON, and the error they raise."""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class FittedNeuronError(ValueError):
    """A parameter file is corrupt, incomplete or does not match what was asked for."""


def is_number(v: Any) -> bool:
    """A finite JSON number (``true``/``false`` are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_count(v: Any) -> bool:
    """A positive JSON integer (not ``true``, not ``4.0``)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def is_parameter(v: Any) -> bool:
    """A finite number that stays finite in float32, the neurons' working precision."""
    return is_number(v) and abs(v) <= FLOAT32_MAX


def check_vector(params: Dict[str, Any], key: str, n: int, where: str) -> list:
    """``params[key]``, which must be a list of ``n`` parameters."""
    v = params.get(key)
    if not isinstance(v, list) or len(v) != n or not all(is_parameter(e) for e in v):
        raise FittedNeuronError(f"{where}: params.{key} must be a list of {n} finite numbers (within float32)")
    return v


def check_positive(params: Dict[str, Any], key: str, where: str) -> None:
    """``params[key]`` must be a positive parameter."""
    if not (is_parameter(params.get(key)) and params[key] > 0):
        raise FittedNeuronError(f"{where}: params.{key} must be a positive finite number, got {params.get(key)!r}")
