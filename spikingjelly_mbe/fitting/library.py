"""Fitted neurons by key (:func:`~spikingjelly_mbe.fitting.fitted.fit_key`), in one home: the shipped
library ``fitting/library/`` (package data: the activations' fits and the remainder fits of the
range-reduced functions, keyed with ``split_bits``), else the project cache, else a fit made on
first use (seed 0, default budget; deterministic) and cached there."""
from __future__ import annotations

import copy
import logging
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..cache import cache_dir, check_writable
from ..neurons.multibasis import DEFAULT_N, DEFAULT_T, positive_int
from .fitted import FittedNeuron, FittedNeuronError, fit_key
from .kinds import get_kind
from .targets import SPLIT_TARGETS, TARGETS, Target

LIBRARY_DIR = Path(__file__).with_name("library")
MAX_FIT_T = 32  # the longest spike trains fitted on first use
NAME = re.compile(r"[A-Za-z0-9_]+")  # a target name: no path separators, no dots
log = logging.getLogger(__name__)
Fitter = Callable[..., FittedNeuron]  # fit_neuron's signature
_fitter: List[Optional[Fitter]] = [None]


def fit_on_first_use(fitter: Optional[Fitter]) -> None:
    """Fit what is neither shipped nor cached with ``fitter`` (``fit_neuron``; the package sets it on
    import, so loading fits never imports the optimiser itself); ``None``: such a load raises."""
    _fitter[0] = fitter


def _fit(target: Union[str, Target], **kwargs: Any) -> FittedNeuron:
    if _fitter[0] is None:
        raise LookupError(f"no fit of {target!r} with {kwargs} is shipped or cached, and fitting on first use is off; "
                          "fit it with spikingjelly_mbe.fit_neuron or turn it on with "
                          "spikingjelly_mbe.fitting.library.fit_on_first_use(spikingjelly_mbe.fit_neuron)")
    return _fitter[0](target, **kwargs)


def available() -> List[str]:
    """Keys of every shipped fit, e.g. ``['gelu-fs-T16', 'gelu-mbe-N4-T16', ...]``."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.json"))


def cached_fit(key: str, fit: Callable[[], FittedNeuron], expect: Dict[str, Any],
               shipped: Optional[Path] = None) -> FittedNeuron:
    """The fit ``key``: ``shipped`` (a package file) if present, else the project cache's
    ``fits/<key>.json`` (validated on load and checked against ``expect``), else ``fit()`` now,
    written to the cache atomically. A cached file that fails validation, or that an older revision
    of its kind's search made (``fit['revision']``, 1 when absent, against the kind's
    ``search_revision``), is refitted and replaced."""
    if shipped is not None and shipped.is_file():
        return FittedNeuron.load(shipped, expect=expect)
    path = cache_dir("fits") / f"{key}.json"
    if path.is_file():
        try:
            cached = FittedNeuron.load(path, expect=expect)
            revision, current = cached.fit.get("revision", 1), get_kind(cached.kind).search_revision
            if revision == current:
                return cached
            log.warning("refitting %s: the cached fit comes from revision %s of the %s search, now %s", key,
                        revision, cached.kind, current)
        except FittedNeuronError as error:
            log.warning("refitting %s: the cached file is unusable (%s)", key, error)
    check_writable(path)
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


def remainder_domain(target: str, split_bits: int) -> Optional[Tuple[float, float]]:
    """The domain of the fit keyed with ``split_bits``: ``None`` (the target's own) for 0, else the
    remainder interval of the range-reduced function (:class:`~spikingjelly_mbe.fitting.targets.SplitTarget`)."""
    return SPLIT_TARGETS[target].remainder_domain(split_bits) if split_bits else None


@lru_cache(maxsize=None)
def _load(target: str, kind: str, N: int, T: int, split_bits: int) -> FittedNeuron:
    key = fit_key(target, kind, N, T, split_bits)
    domain = remainder_domain(target, split_bits)
    expect = {"target": target, "kind": kind, "T": T, **({} if get_kind(kind).single_basis else {"N": N}),
              **({} if domain is None else {"domain": domain})}
    return cached_fit(key, lambda: _fit(target, kind=kind, N=N, T=T, domain=domain, seed=0, progress=True),
                      expect, LIBRARY_DIR / f"{key}.json")


def load_fitted_on(target: str, N: int, T: int, span: float, kind: str = "mbe") -> FittedNeuron:
    """A fit of ``target`` (a ``kind`` neuron) on ``[-span, span]`` instead of its registered domain:
    a range reduction for inputs known (from calibration) to stay well inside it. Shipped (the zoo's),
    else fitted on first use (seed 0) and cached like any unshipped fit; an independent copy."""
    kind, N, T, _ = check_fit_request(target, kind, N, T)
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not 0 < span < float("inf"):
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    span = float(span)
    expect = {"target": target, "kind": kind, "T": T, **({} if get_kind(kind).single_basis else {"N": N}),
              "domain": (-span, span)}
    key = fit_key(target, kind, N, T, span=span)
    return copy.deepcopy(cached_fit(key, lambda: _fit(target, kind=kind, N=N, T=T, domain=(-span, span), seed=0,
                                                      progress=True), expect, LIBRARY_DIR / f"{key}.json"))


ON_DEMAND_BUDGET = 1500  # candidate evaluations of a fit on demand (one CMA-ES run): seconds, not minutes


def load_fitted_function(target: Target, N: int, T: int) -> FittedNeuron:
    """An MBE fit of an unregistered function (``target.name`` names it and its parameters, e.g.
    ``erf`` or ``elu_1f2e``) on ``target.domain``: shipped (the zoo's), else fitted on first use with
    a small budget (:data:`ON_DEMAND_BUDGET`, seed 0; deterministic) and cached like any unshipped
    fit, keyed by the name, ``N``, ``T`` and the domain."""
    if not NAME.fullmatch(target.name):
        raise ValueError(f"target name must be letters, digits and '_', got {target.name!r}")
    N, T = positive_int("N", N), positive_int("T", T)
    lo, hi = target.domain
    key = f"{fit_key(target.name, 'mbe', N, T)}-on{lo:.17g}_{hi:.17g}"  # exact: domains differ in low bits
    expect = {"target": target.name, "kind": "mbe", "T": T, "N": N, "domain": target.domain}
    return copy.deepcopy(cached_fit(key, lambda: _fit(target, kind="mbe", N=N, T=T, seed=0, restarts=1,
                                                      budget=ON_DEMAND_BUDGET), expect, LIBRARY_DIR / f"{key}.json"))


def check_fit_request(target: str, kind: str, N: int, T: int, split_bits: int = 0) -> Tuple[str, int, int, int]:
    """``(kind, N, T, split_bits)`` validated: a registered ``target`` and ``kind``, ``1 <= N <= 64``
    (1 for a single-basis kind), ``1 <= T <= MAX_FIT_T``, ``0 <= split_bits < T`` (``>= 1`` only for
    a range-reduced target)."""
    if not isinstance(target, str) or not NAME.fullmatch(target):
        raise ValueError(f"target must be a plain name such as 'gelu' (letters, digits, '_'), got {target!r}; "
                         f"registered: {sorted(TARGETS)}")
    if target not in TARGETS:
        raise KeyError(f"unknown target {target!r}; registered: {sorted(TARGETS)} (fit others with fit_neuron)")
    neuron_kind = get_kind(kind)
    for name, value, top in (("N", N, 64), ("T", T, MAX_FIT_T)):
        if positive_int(name, value) > top:
            raise ValueError(f"{name} must be an integer in [1, {top}], got {value!r}")
    if isinstance(split_bits, bool) or not isinstance(split_bits, int) or not 0 <= split_bits < T:
        raise ValueError(f"split_bits must be an integer in [0, T={T}), got {split_bits!r}")
    if split_bits and target not in SPLIT_TARGETS:
        raise ValueError(f"split_bits={split_bits} needs a range-reduced target {sorted(SPLIT_TARGETS)}, got "
                         f"{target!r}; use split_bits=0")
    return neuron_kind.name, neuron_kind.bases(N), T, split_bits


def load_fitted(target: str, kind: str = "mbe", N: int = DEFAULT_N, T: int = DEFAULT_T, split_bits: int = 0) -> FittedNeuron:
    """The fit of ``target`` on its registered domain (a single-basis kind such as FS ignores ``N``):
    shipped for T in {8, 10, 12, 16} and N in {1, 2, 4, 8}, and for T in {3, 4, 5, 6} what a default
    conversion loads (``build_library --low-T``); any other ``N``, ``T <= 32`` is fitted
    on first use (seed 0, a few seconds) and cached in the project cache. ``split_bits >= 1``: the
    remainder neuron of a range-reduced ``exp2``/``reciprocal``/``rsqrt`` (Softmax, the norms),
    shipped for ``split_bits=3``, ``N=4``. An independent copy: edits stay local."""
    return copy.deepcopy(_load(target, *check_fit_request(target, kind, N, T, split_bits)))
