"""Fitted neuron parameters as data: a small, versioned JSON file validated on load."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ..neurons import MultiBasisNode
from ..version import __version__
from .checks import FittedNeuronError, check_vector, is_count, is_number, is_parameter
from .kinds import get_kind
from .targets import TARGETS, Target, get_target

FORMAT = "spikingjelly_mbe.fitted_neuron"
FORMAT_VERSION = 1
EVAL_POINTS = 100_001
PROTOCOL_SAMPLES = 10_000  # evenly spaced points of the paper's fit and MSE protocol (M)


def fit_key(target: str, kind: str, N: int, T: int, split_bits: int = 0, span: Optional[float] = None) -> str:
    """The one format of a fit's key (its file stem in the library and the cache): ``gelu-mbe-N4-T16``;
    a single-basis kind omits ``N`` (``gelu-fs-T16``); a remainder fit of a range-reduced function
    names its ``split_bits`` (``exp2-split3-mbe-N4-T16``); a fit on ``[-span, span]`` ends ``-pm4``."""
    parts = [target, *([f"split{split_bits}"] if split_bits else []), kind,
             *([] if get_kind(kind).single_basis else [f"N{N}"]), f"T{T}", *([] if span is None else [f"pm{span:g}"])]
    return "-".join(parts)


class TargetFunction:
    """A registered target's float function by name (what a node pickles, the function is looked up
    in :data:`~.targets.TARGETS` when called): a fitted node's default straight-through gradient."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return TARGETS[self.name].fn(x)

    def __repr__(self) -> str:
        return f"TargetFunction({self.name!r})"


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
    version: str = field(default_factory=lambda: __version__)

    def __post_init__(self) -> None:
        if isinstance(self.domain, (list, tuple)) and len(self.domain) == 2 and all(is_number(v) for v in self.domain):
            self.domain = (float(self.domain[0]), float(self.domain[1]))
        self.validate("FittedNeuron")

    def validate(self, where: str) -> None:
        """Check kinds, sizes and finiteness of every field; raise :class:`FittedNeuronError`."""
        try:
            kind = get_kind(self.kind)
        except ValueError as error:
            raise FittedNeuronError(f"{where}: {error}") from None
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
        for key in ("gain", "offset"):
            check_vector(p, key, kind.bases(self.N), where)
        if not is_parameter(p.get("bias")):
            raise FittedNeuronError(f"{where}: params.bias must be a finite number")
        kind.check_params(p, kind.bases(self.N), self.T, where)

    def node(self, step_mode: str = "s", clamp: bool = True, backend: str = "torch",
             surrogate_function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> MultiBasisNode:
        """Build the SpikingJelly neuron; with ``clamp`` inputs outside the domain are clamped.
        ``backend`` as SpikingJelly's neurons (``'torch'`` | ``'triton'``); ``surrogate_function``,
        whose gradient the backward pass uses, defaults to the fitted target's function
        (straight-through), when the target is registered."""
        node = get_kind(self.kind).node(self.params, self.N, self.T, self.domain if clamp else None, step_mode)
        node.backend = backend
        node.surrogate_function = surrogate_function or (TargetFunction(self.target) if self.target in TARGETS else None)
        return node

    @property
    def key(self) -> str:
        """The key of this target, kind, ``N`` and ``T`` (:func:`fit_key`), e.g. ``gelu-mbe-N4-T16``."""
        return fit_key(self.target, self.kind, self.N, self.T)

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


def error_figures(node: MultiBasisNode, target: Union[str, Target], samples: int = PROTOCOL_SAMPLES) -> Dict[str, float]:
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
