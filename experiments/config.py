"""Config schemas: dataclasses registered in Hydra's ConfigStore.

Each primary config in ``conf/`` (``fit.yaml``, ``report.yaml``) starts from its schema, so a key
that is not declared here, a value of the wrong type or an unknown enum value fails at start-up
with Hydra's own error naming it. The ``target`` group gets one option per registered target of
:data:`spikingjelly_mbe.fitting.TARGETS`; ``conf/target/`` adds variants with other domains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from spikingjelly_mbe.fitting import TARGETS


class NeuronKind(Enum):
    mbe = "mbe"
    fs = "fs"


class WandbMode(Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


TargetName = Enum("TargetName", {name: name for name in TARGETS}, module=__name__)


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
class ReportJob(JobConfig):
    """``experiments.report``: gather the jobs of a multirun folder."""

    name: str = "report"
    sweep_dir: str = MISSING


def register() -> None:
    """Store the schemas and the registered targets in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="fit_schema", node=FitJob)
    cs.store(name="report_schema", node=ReportJob)
    for name in TARGETS:
        cs.store(group="target", name=name, node=TargetConfig(name=TargetName[name]))


register()
