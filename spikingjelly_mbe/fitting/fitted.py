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
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class FittedNeuronError(ValueError):
    """A parameter file is corrupt, incomplete or does not match what was asked for."""


def _library_version() -> str:
    from .. import __version__
    return __version__


def is_number(v: Any) -> bool:
    """A finite JSON number (``true``/``false`` are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_count(v: Any) -> bool:
    """A positive JSON integer (not ``true``, not ``4.0``)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def is_parameter(v: Any) -> bool:
    """A finite number that stays finite in float32, the neurons' working precision."""
    return is_number(v) and abs(v) <= FLOAT32_MAX


def _vec(params: Dict[str, Any], key: str, n: int, where: str) -> list:
    v = params.get(key)
    if not isinstance(v, list) or len(v) != n or not all(is_parameter(e) for e in v):
        raise FittedNeuronError(f"{where}: params.{key} must be a list of {n} finite numbers (within float32)")
    return v


def _positive(params: Dict[str, Any], key: str, where: str) -> None:
    if not (is_parameter(params.get(key)) and params[key] > 0):
        raise FittedNeuronError(f"{where}: params.{key} must be a positive finite number, got {params.get(key)!r}")


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
        if isinstance(self.domain, (list, tuple)) and len(self.domain) == 2 and all(is_number(v) for v in self.domain):
            self.domain = (float(self.domain[0]), float(self.domain[1]))
        self.validate("FittedNeuron")

    def validate(self, where: str) -> None:
        """Check kinds, sizes and finiteness of every field; raise :class:`FittedNeuronError`."""
        if self.kind not in ("mbe", "fs"):
            raise FittedNeuronError(f"{where}: kind must be 'mbe' or 'fs', got {self.kind!r}")
        if not isinstance(self.target, str) or not self.target:
            raise FittedNeuronError(f"{where}: target must be a non-empty name, got {self.target!r}")
        if not (is_count(self.N) and is_count(self.T)):
            raise FittedNeuronError(f"{where}: N and T must be positive integers, got N={self.N!r}, T={self.T!r}")
        if not (isinstance(self.domain, tuple) and len(self.domain) == 2 and all(is_number(v) for v in self.domain)
                and self.domain[0] < self.domain[1]):
            raise FittedNeuronError(f"{where}: domain must be finite with lo < hi, got {self.domain}")
        if not (isinstance(self.fit, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, bool))
                                                                            or is_number(v)) for k, v in self.fit.items())):
            raise FittedNeuronError(f"{where}: fit must map names to numbers, strings, booleans or null")
        if not (isinstance(self.errors, dict) and all(isinstance(k, str) and is_number(v) for k, v in self.errors.items())):
            raise FittedNeuronError(f"{where}: errors must map names to finite numbers, got {self.errors!r}")
        p = self.params
        if not isinstance(p, dict):
            raise FittedNeuronError(f"{where}: params must be a mapping")
        n = 1 if self.kind == "fs" else self.N
        for key in ("gain", "offset"):
            _vec(p, key, n, where)
        if not is_parameter(p.get("bias")):
            raise FittedNeuronError(f"{where}: params.bias must be a finite number")
        if self.kind == "fs":
            for key in ("vth", "reset", "intensity"):
                _vec(p, key, self.T, where)
            return
        _vec(p, "weight", n, where)
        for key in ("alpha", "dt"):
            _positive(p, key, where)
        if not isinstance(p.get("decay"), bool):
            raise FittedNeuronError(f"{where}: params.decay must be true or false")
        for key in ("tau_v", "tau_r", "tau_d"):
            if (p["decay"] or key in p) and any(t <= 0 for t in _vec(p, key, n, where)):
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
        """The file's content; the fields are validated first (they may have been edited)."""
        self.validate("FittedNeuron.to_dict")
        d = asdict(self)
        d["domain"] = list(self.domain)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def save(self, path: Union[str, Path]) -> Path:
        """Validate, then write atomically: a temporary file in the same folder replaces ``path``
        only once it is complete, so a failed write leaves the old file intact."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "FittedNeuron") -> "FittedNeuron":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FittedNeuronError(f"{where}: not a fitted-neuron file (format must be {FORMAT!r})")
        if not is_count(d.get("format_version")) or d["format_version"] != FORMAT_VERSION:
            raise FittedNeuronError(f"{where}: format_version {d.get('format_version')!r} is not supported "
                                    f"(this library reads version {FORMAT_VERSION})")
        missing = [k for k in ("target", "kind", "N", "T", "domain", "params") if k not in d]
        if missing:
            raise FittedNeuronError(f"{where}: missing field(s) {missing}")
        domain = d["domain"]
        if not (isinstance(domain, list) and len(domain) == 2 and all(is_number(v) for v in domain)):
            raise FittedNeuronError(f"{where}: domain must be [lo, hi] (two finite numbers)")
        try:
            return cls(target=d["target"], kind=d["kind"], N=d["N"], T=d["T"], domain=tuple(domain),
                       params=d["params"], fit=d.get("fit", {}), errors=d.get("errors", {}),
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
        except RecursionError:
            raise FittedNeuronError(f"{path}: not a fitted-neuron file (JSON nested too deeply)") from None
        fitted = cls.from_dict(data, where=str(path))
        fields = {"target", "kind", "N", "T", "domain", "params", "fit", "errors", "version"}
        for key, want in (expect or {}).items():
            if key not in fields:
                raise FittedNeuronError(f"expect: unknown field {key!r}; expect= can check {sorted(fields)}")
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
