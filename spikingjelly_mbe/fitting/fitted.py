"""Fitted neuron parameters as data: a small, versioned JSON file validated on load."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..neurons import FSNode, MBENode, MultiBasisNode
from .targets import Target, get_target

FORMAT = "spikingjelly_mbe.fitted_neuron"
FORMAT_VERSION = 1
EVAL_POINTS = 100_001


class FittedNeuronError(ValueError):
    """A parameter file is corrupt, incomplete or does not match what was asked for."""


def _library_version() -> str:
    from .. import __version__
    return __version__


def _vec(params: Dict[str, Any], key: str, n: int, where: str) -> list:
    v = params.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(e, (int, float)) and math.isfinite(e) for e in v):
        raise FittedNeuronError(f"{where}: params.{key} must be a list of {n} finite numbers")
    return v


@dataclass
class FittedNeuron:
    """A neuron fitted to ``target`` on ``domain``: kind, N, T, parameters and error figures."""

    target: str
    kind: str
    N: int
    T: int
    domain: Tuple[float, float]
    params: Dict[str, Any]
    fit: Dict[str, Any] = field(default_factory=dict)
    errors: Dict[str, float] = field(default_factory=dict)
    version: str = field(default_factory=_library_version)

    def __post_init__(self) -> None:
        self.domain = (float(self.domain[0]), float(self.domain[1]))
        self.validate("FittedNeuron")

    def validate(self, where: str) -> None:
        """Check kinds, sizes and finiteness of every field; raise :class:`FittedNeuronError`."""
        if self.kind not in ("mbe", "fs"):
            raise FittedNeuronError(f"{where}: kind must be 'mbe' or 'fs', got {self.kind!r}")
        if not (isinstance(self.N, int) and isinstance(self.T, int) and self.N >= 1 and self.T >= 1):
            raise FittedNeuronError(f"{where}: N and T must be positive integers, got N={self.N!r}, T={self.T!r}")
        lo, hi = self.domain
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise FittedNeuronError(f"{where}: domain must be finite with lo < hi, got {self.domain}")
        p = self.params
        if not isinstance(p, dict):
            raise FittedNeuronError(f"{where}: params must be a mapping")
        n = 1 if self.kind == "fs" else self.N
        for key in ("gain", "offset"):
            _vec(p, key, n, where)
        if not isinstance(p.get("bias"), (int, float)) or not math.isfinite(p["bias"]):
            raise FittedNeuronError(f"{where}: params.bias must be a finite number")
        if self.kind == "fs":
            for key in ("vth", "reset", "intensity"):
                _vec(p, key, self.T, where)
            return
        _vec(p, "weight", n, where)
        for key in ("alpha", "dt"):
            if not isinstance(p.get(key), (int, float)) or not p[key] > 0:
                raise FittedNeuronError(f"{where}: params.{key} must be a positive number")
        if not isinstance(p.get("decay"), bool):
            raise FittedNeuronError(f"{where}: params.decay must be true or false")
        if p["decay"]:
            for key in ("tau_v", "tau_r", "tau_d"):
                if any(t <= 0 for t in _vec(p, key, n, where)):
                    raise FittedNeuronError(f"{where}: params.{key} must be positive")

    def node(self, step_mode: str = "s", clamp: bool = True) -> MultiBasisNode:
        """Build the SpikingJelly neuron; with ``clamp`` inputs outside the domain are clamped."""
        p, domain = self.params, (self.domain if clamp else None)
        if self.kind == "fs":
            return FSNode(p["vth"], p["reset"], p["intensity"], offset=p["offset"][0], bias=p["bias"],
                          domain=domain, step_mode=step_mode)
        taus = [p.get(k, [1.0] * self.N) for k in ("tau_v", "tau_r", "tau_d")]
        return MBENode(*taus, weight=p["weight"], T=self.T, alpha=p["alpha"], dt=p["dt"], gain=p["gain"],
                       offset=p["offset"], bias=p["bias"], decay=p["decay"], domain=domain, step_mode=step_mode)

    @property
    def key(self) -> str:
        """File stem used by the shipped library, e.g. ``gelu-mbe-N4-T16``."""
        return f"{self.target}-{self.kind}-T{self.T}" if self.kind == "fs" else f"{self.target}-mbe-N{self.N}-T{self.T}"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["domain"] = list(self.domain)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the JSON file atomically (a temporary file in the same folder, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "FittedNeuron") -> "FittedNeuron":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FittedNeuronError(f"{where}: not a fitted-neuron file (format must be {FORMAT!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise FittedNeuronError(f"{where}: format_version {d.get('format_version')!r} is not supported "
                                    f"(this library reads version {FORMAT_VERSION})")
        missing = [k for k in ("target", "kind", "N", "T", "domain", "params") if k not in d]
        if missing:
            raise FittedNeuronError(f"{where}: missing field(s) {missing}")
        domain = d["domain"]
        if not (isinstance(domain, list) and len(domain) == 2 and all(isinstance(v, (int, float)) for v in domain)):
            raise FittedNeuronError(f"{where}: domain must be [lo, hi]")
        try:
            return cls(target=str(d["target"]), kind=d["kind"], N=d["N"], T=d["T"], domain=tuple(domain),
                       params=d["params"], fit=dict(d.get("fit", {})), errors=dict(d.get("errors", {})),
                       version=str(d.get("version", "unknown")))
        except FittedNeuronError as e:
            raise FittedNeuronError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: Union[str, Path], expect: Optional[Dict[str, Any]] = None) -> "FittedNeuron":
        """Read and validate a file; ``expect`` (e.g. ``{'target': 'gelu', 'T': 16}``) must match."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FittedNeuronError(f"{path}: cannot read a fitted-neuron file ({e})") from None
        fitted = cls.from_dict(data, where=str(path))
        for key, want in (expect or {}).items():
            got = fitted.domain if key == "domain" else getattr(fitted, key)
            if (tuple(got) if key == "domain" else got) != (tuple(want) if key == "domain" else want):
                raise FittedNeuronError(f"{path}: {key} is {got!r}, expected {want!r}")
        return fitted


def error_figures(node: MultiBasisNode, target: Union[str, Target], samples: int = 10_000) -> Dict[str, float]:
    """MSE on ``samples`` evenly spaced points (the paper's protocol) and max / mean absolute error
    on a dense grid of the domain, in float64, for a neuron approximating ``target``."""
    tgt = get_target(target)
    node = node.to(torch.float64)
    with torch.no_grad():
        xs = tgt.samples(samples)
        mse = float(((node(xs) - tgt.fn(xs)) ** 2).mean())
        xd = tgt.samples(EVAL_POINTS)
        err = (node(xd) - tgt.fn(xd)).abs()
    return {"mse": mse, "max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "spikes_per_input": node.last_spike_count / node.last_num_inputs}
