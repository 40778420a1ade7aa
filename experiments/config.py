"""Config schemas: dataclasses registered in Hydra's ConfigStore.

Each primary config in ``conf/`` (``fit.yaml``, ``convert.yaml``, ``report.yaml``) starts from
its schema, so a key that is not declared here, a value of the wrong type or an unknown enum value
fails at start-up with Hydra's own error naming it. The ``target`` group gets one option per registered target of
:data:`spikingjelly_mbe.fitting.TARGETS`; ``conf/target/`` adds variants with other domains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from spikingjelly_mbe.conversion.zoo import FAMILIES
from spikingjelly_mbe.fitting import TARGETS


class NeuronKind(Enum):
    mbe = "mbe"
    fs = "fs"


class WandbMode(Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Metric(Enum):
    """How ANN and SNN are compared: top-1 agreement with the ANN's prediction, perplexity of the
    next token, or the worst per-sample cosine similarity of the outputs."""

    agreement = "agreement"
    perplexity = "perplexity"
    cosine = "cosine"


class OpMode(Enum):
    fast = "fast"
    simulate = "simulate"


class CalibrationMethod(Enum):
    max = "max"
    percentile = "percentile"


TargetName = Enum("TargetName", {name: name for name in TARGETS}, module=__name__)
Family = Enum("Family", {name: name for name in FAMILIES}, module=__name__)


@dataclass
class NeuronConfig:
    """Neuron kind and size; FS ignores ``N``, ``dt`` and ``decay``."""

    kind: NeuronKind = NeuronKind.mbe
    N: int = 4
    T: int = 16
    dt: float = 1.0
    decay: bool = True


@dataclass
class TargetConfig:
    """A registered target; ``domain: null`` keeps its registered domain."""

    name: TargetName = TargetName.gelu
    domain: Optional[List[float]] = None


@dataclass
class FitSettings:
    """Arguments of :func:`spikingjelly_mbe.fit_neuron` beyond the neuron and target."""

    samples: int = 10_000
    budget: Optional[int] = None
    restarts: int = 3
    seed: int = 0


@dataclass
class PlotSettings:
    """Points of the fitted-curve plot and inputs shown in the spike raster."""

    points: int = 2001
    raster_inputs: int = 4


@dataclass
class LoggerConfig:
    """W&B run settings; ``group: null`` groups a sweep's runs by experiment name and sweep folder."""

    mode: WandbMode = WandbMode.offline
    project: str = "spikingjelly_mbe"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    """A small model of ``family`` built locally with fan-in scaled random weights, and its metric."""

    family: Family = Family.vit
    layers: int = 2
    hidden: int = 32
    heads: int = 2
    seed: int = 0
    metric: Metric = Metric.agreement


@dataclass
class DataConfig:
    """Generated inputs of the model's kind: ``batches`` x ``batch_size`` to evaluate on, and
    ``calib_batches`` x ``calib_size`` other ones to calibrate the product ranges."""

    batches: int = 2
    batch_size: int = 32
    seq_len: int = 16
    calib_batches: int = 2
    calib_size: int = 8
    seed: int = 1


@dataclass
class CalibrationConfig:
    method: CalibrationMethod = CalibrationMethod.max
    percentile: float = 99.99


@dataclass
class ConversionConfig:
    """Arguments of :func:`spikingjelly_mbe.convert`."""

    T: int = 16
    N: int = 4
    activation_N: Optional[int] = 8
    mode: OpMode = OpMode.fast
    fx: bool = False
    allow_float_fallback: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class JobConfig:
    """What every entry point has: a name (the W&B group of its sweeps), threads and the logger."""

    name: str = "job"
    threads: int = 1
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class FitJob(JobConfig):
    """``experiments.fit``: fit one neuron to one target."""

    name: str = "fit"
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    fit: FitSettings = field(default_factory=FitSettings)
    plot: PlotSettings = field(default_factory=PlotSettings)


@dataclass
class ConvertJob(JobConfig):
    """``experiments.convert``: convert one model and compare it with its ANN."""

    name: str = "convert"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    conversion: ConversionConfig = field(default_factory=ConversionConfig)


@dataclass
class ReportJob(JobConfig):
    """``experiments.report``: gather the jobs of a multirun folder."""

    name: str = "report"
    sweep_dir: str = MISSING


def register() -> None:
    """Store the schemas and the registered targets in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="fit_schema", node=FitJob)
    cs.store(name="convert_schema", node=ConvertJob)
    cs.store(name="report_schema", node=ReportJob)
    for name in TARGETS:
        cs.store(group="target", name=name, node=TargetConfig(name=TargetName[name]))


register()
