"""Fitted neurons by key: the shipped library (package data), else the project cache, else a fit
made on first use (seed 0, default budget; deterministic) and cached there."""
from __future__ import annotations

import copy
import logging
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..data.assets import cache_dir
from ..neurons.multibasis import positive_int
from .fitted import FittedNeuron, FittedNeuronError
from .routine import fit_neuron
from .targets import TARGETS

LIBRARY_DIR = Path(__file__).with_name("library")
MAX_FIT_T = 32  # the longest spike trains fitted on first use
NAME = re.compile(r"[A-Za-z0-9_]+")  # a target name: no path separators, no dots
log = logging.getLogger(__name__)


def available() -> List[str]:
    """Keys of every shipped fit, e.g. ``['gelu-fs-T16', 'gelu-mbe-N4-T16', ...]``."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.json"))


def fit_key(target: str, kind: str, N: int, T: int) -> str:
    """File stem of a fit, e.g. ``gelu-mbe-N4-T16`` (FS ignores ``N``: ``gelu-fs-T16``)."""
    return f"{target}-fs-T{T}" if kind == "fs" else f"{target}-{kind}-N{N}-T{T}"


def cached_fit(key: str, fit: Callable[[], FittedNeuron], expect: Dict[str, Any],
               shipped: Optional[Path] = None) -> FittedNeuron:
    """The fit ``key``: ``shipped`` (a package file) if present, else the project cache's
    ``fits/<key>.json`` (validated on load and checked against ``expect``), else ``fit()`` now,
    written to the cache atomically. A cached file that fails validation is refitted and replaced."""
    if shipped is not None and shipped.is_file():
        return FittedNeuron.load(shipped, expect=expect)
    path = cache_dir("fits") / f"{key}.json"
    if path.is_file():
        try:
            return FittedNeuron.load(path, expect=expect)
        except FittedNeuronError as error:
            log.warning("refitting %s: the cached file is unusable (%s)", key, error)
    began = time.perf_counter()
    log.warning("fitting %s on first use (not shipped; deterministic, cached in %s)", key, path.parent)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same floating-point reductions, hence the same fit, on every machine
    try:
        fitted = fit()
    finally:
        torch.set_num_threads(threads)
    fitted.save(path)
    log.warning("fitted %s in %.1f s: mse %.3g", key, time.perf_counter() - began, fitted.errors["mse"])
    return fitted


@lru_cache(maxsize=None)
def _load(target: str, kind: str, N: int, T: int) -> FittedNeuron:
    key = fit_key(target, kind, N, T)
    expect = {"target": target, "kind": kind, "T": T, **({} if kind == "fs" else {"N": N})}
    return cached_fit(key, lambda: fit_neuron(target, kind=kind, N=N, T=T, seed=0, progress=True), expect,
                      LIBRARY_DIR / f"{key}.json")


def load_fitted_on(target: str, N: int, T: int, span: float) -> FittedNeuron:
    """An MBE fit of ``target`` on ``[-span, span]`` instead of its registered domain: a range
    reduction for inputs known (from calibration) to stay well inside it. Fitted on first use
    (seed 0) and cached like any unshipped fit; an independent copy."""
    kind, N, T = check_fit_request(target, "mbe", N, T)
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not 0 < span < float("inf"):
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    span = float(span)
    key = f"{fit_key(target, kind, N, T)}-pm{span:g}"
    expect = {"target": target, "kind": kind, "T": T, "N": N, "domain": (-span, span)}
    return copy.deepcopy(cached_fit(key, lambda: fit_neuron(target, kind=kind, N=N, T=T, domain=(-span, span), seed=0,
                                                            progress=True), expect))


def check_fit_request(target: str, kind: str, N: int, T: int) -> Tuple[str, int, int]:
    """``(kind, N, T)`` validated: a registered ``target``, ``kind`` 'mbe' or 'fs', ``1 <= N <= 64``,
    ``1 <= T <= MAX_FIT_T``."""
    if not isinstance(target, str) or not NAME.fullmatch(target):
        raise ValueError(f"target must be a plain name such as 'gelu' (letters, digits, '_'), got {target!r}; "
                         f"registered: {sorted(TARGETS)}")
    if target not in TARGETS:
        raise KeyError(f"unknown target {target!r}; registered: {sorted(TARGETS)} (fit others with fit_neuron)")
    if kind not in ("mbe", "fs"):
        raise ValueError(f"kind must be 'mbe' or 'fs', got {kind!r}")
    for name, value, top in (("N", N, 64), ("T", T, MAX_FIT_T)):
        if positive_int(name, value) > top:
            raise ValueError(f"{name} must be an integer in [1, {top}], got {value!r}")
    return kind, (1 if kind == "fs" else N), T


def load_fitted(target: str, kind: str = "mbe", N: int = 4, T: int = 16) -> FittedNeuron:
    """The fit of ``target`` on its registered domain (FS ignores ``N``): shipped for T in
    {8, 10, 12, 16} and N in {1, 2, 4, 8}; any other ``N``, ``T <= 32`` is fitted on first use
    (seed 0, a few seconds) and cached in the project cache. An independent copy: edits stay local."""
    return copy.deepcopy(_load(target, *check_fit_request(target, kind, N, T)))
