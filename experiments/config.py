"""Config schemas: dataclasses registered in Hydra's ConfigStore.

Each primary config in ``conf/`` (``fit.yaml``, ``convert.yaml``, ``report.yaml``) starts from
its schema, so a key that is not declared here, a value of the wrong type or an unknown enum value
fails at start-up with Hydra's own error naming it. The ``target`` group gets one option per registered target of
:data:`spikingjelly_mbe.fitting.TARGETS`; ``conf/target/`` adds variants with other domains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from spikingjelly_mbe.conversion import DEFAULTS, METHODS, Calibration
from spikingjelly_mbe.conversion.config import ENGINE_FIELDS
from spikingjelly_mbe.conversion.rotation import MODES as ROTATIONS
from spikingjelly_mbe.conversion.zoo import FAMILIES
from spikingjelly_mbe.fitting import KINDS, TARGETS
from spikingjelly_mbe.fitting.fitted import PROTOCOL_SAMPLES
from spikingjelly_mbe.fitting.routine import RESTARTS
from spikingjelly_mbe.mbe.method import ENERGY_BY
from spikingjelly_mbe.neurons import DEFAULT_N, DEFAULT_T
from spikingjelly_mbe.ops.coding import CODES

CALIBRATION = Calibration()


NeuronKind = Enum("NeuronKind", {name: name for name in KINDS})  # the registered neuron kinds (fitting.KINDS)


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


class Device(Enum):
    """Where a job converts, calibrates and evaluates: ``auto`` is CUDA when present, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OpMode(Enum):
    fast = "fast"
    simulate = "simulate"


CodeChoice = Enum("CodeChoice", {name: name for name in CODES})  # the digit codes of every operator
Rotation = Enum("Rotation", {name: name for name in ROTATIONS})  # convert's rotate= (conversion/rotation.py)
EnergyBy = Enum("EnergyBy", {name: name for name in ENERGY_BY})  # what meets energy_budget (mbe/method.py)


class ModelSource(Enum):
    """Where the model comes from: built locally (``zoo``), a shipped offline pretrained model, or
    the user's own checkpoint (``hf`` folder, ``timm`` state-dict file)."""

    zoo = "zoo"
    pretrained = "pretrained"
    hf = "hf"
    timm = "timm"


class PretrainedName(Enum):
    """The offline pretrained models of docs/assets.md (values: their ``load_model`` names)."""

    minilm = "minilm"
    dinov2 = "dinov2"
    smollm2 = "smollm2"
    gpt2_small = "gpt2-small"


class HFTask(Enum):
    causal_lm = "causal_lm"
    encoder = "encoder"
    image = "image"


class DataSource(Enum):
    """Generated inputs (``synthetic``), the offline data sets, or the user's local files."""

    synthetic = "synthetic"
    reviews = "reviews"
    mnist = "mnist"
    lee = "lee"
    text_file = "text_file"
    image_folder = "image_folder"


# How the model is converted: a registered method of ``convert`` (MBE, the ECMT baseline), or
# SpikingJelly 2.0's TD-equivalent, STA and SpikeZIP-TF recipes.
Method = Enum("Method", {name: name for name in (*METHODS, "sj_td", "sj_sta", "spikezip")}, module=__name__)


class CalibrationMethod(Enum):
    max = "max"
    percentile = "percentile"


TargetName = Enum("TargetName", {name: name for name in TARGETS}, module=__name__)
Family = Enum("Family", {name: name for name in FAMILIES}, module=__name__)


@dataclass
class NeuronConfig:
    """Neuron kind and size; FS ignores ``N``, ``dt`` and ``decay``."""

    kind: NeuronKind = NeuronKind.mbe
    N: int = DEFAULT_N
    T: int = DEFAULT_T
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

    samples: int = PROTOCOL_SAMPLES
    budget: Optional[int] = None
    restarts: int = RESTARTS
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
    """``source=zoo``: a small ``family`` model with fan-in scaled random weights, compared by
    ``metric``. ``pretrained``: the offline model ``name``. ``hf``: a ``save_pretrained`` folder at
    ``path`` read as ``task``; ``timm``: the architecture ``arch`` (``timm_kwargs`` to
    ``create_model``) with the state-dict file at ``path``. ``samples``: this model's default cap on
    the held-out set when ``data.samples`` is null. Real models take their metric from the task."""

    source: ModelSource = ModelSource.zoo
    family: Family = Family.vit
    layers: int = 2
    hidden: int = 32
    heads: int = 2
    seed: int = 0
    metric: Metric = Metric.agreement
    name: Optional[PretrainedName] = None
    path: Optional[str] = None
    task: Optional[HFTask] = None
    arch: Optional[str] = None
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)
    samples: Optional[int] = None


@dataclass
class DataConfig:
    """``synthetic``: generated inputs of the model's kind, ``batches`` x ``batch_size`` to evaluate
    on and ``calib_batches`` x ``calib_size`` other ones to calibrate the product ranges (``seed``).
    Otherwise a held-out set (``path`` for local files) split with ``split_seed``, of which the first
    ``samples`` items are scored (texts, images, or tokens for a causal LM; null: the model's default,
    else all) in batches of ``batch_size``; ``context``: tokens per LM window and calibration sequence;
    ``image_size``: side images of ``image_folder`` are resized to."""

    source: DataSource = DataSource.synthetic
    samples: Optional[int] = None
    path: Optional[str] = None
    batches: int = 2
    batch_size: int = 32
    seq_len: int = 16
    calib_batches: int = 2
    calib_size: int = 8
    seed: int = 1
    split_seed: int = 0
    context: int = 128
    image_size: int = 224


@dataclass
class CalibrationConfig:
    """Product ranges (Eq. 9): max or percentile of |operand|, times ``headroom`` (>= 1)."""

    method: CalibrationMethod = CalibrationMethod(CALIBRATION.method)
    percentile: float = CALIBRATION.percentile
    headroom: float = CALIBRATION.headroom


# the options of ``convert`` whose values Hydra checks against a closed set
CHOICES: Dict[str, type] = {"method": Method, "code": CodeChoice, "mode": OpMode, "neuron": NeuronKind,
                            "rotate": Rotation, "energy_by": EnergyBy}
# the options every entry point passes beside T, N and activation_N (the result tables' columns): the
# engine's own beyond the method and the fallback (``rotate``), then MBE's operator options
OPERATOR_OPTIONS = tuple(name for name, _, _ in ENGINE_FIELDS if name not in ("method", "allow_float_fallback")) + \
    tuple(f.name for f in dataclasses.fields(METHODS["mbe"]) if f.name not in ("T", "N", "mode", "activation_N"))
# the options of the other methods (ECMT's n and percentile) as result columns, ``<method>_<option>``
# (``ecmt_percentile`` is not the calibration's ``percentile``)
METHOD_COLUMNS: Dict[str, str] = {f"{method}_{f.name}": f.name for method, settings in METHODS.items() if method != "mbe"
                                  for f in dataclasses.fields(settings)
                                  if f.name not in {g.name for g in dataclasses.fields(METHODS["mbe"])}}


def _schema_field(f: dataclasses.Field) -> tuple:
    """``convert``'s option ``f`` as a Hydra schema field: an Enum for a closed set, ``Any`` for the budget,
    ``fisher_ranges`` (a bool or ``'auto'``) and for ``T`` (an int or a mapping per operator type / module path, ``conversion.T='{default:4,softmax:6}'``,
    checked when a job starts, before anything loads: :func:`experiments.convert.check_conversion`)."""
    if f.name in CHOICES:
        return f.name, CHOICES[f.name], field(default=CHOICES[f.name](f.default))
    kind = {"budget": Any, "T": Any, "fisher_ranges": Any}.get(f.name, f.type)
    return f.name, kind, field(default=f.default)


def _operator_options(self) -> Dict[str, Any]:
    """The operator options of :func:`spikingjelly_mbe.convert` this config sets, the one list
    every entry point passes on."""
    return {name: plain_value(getattr(self, name)) for name in OPERATOR_OPTIONS}


def _method_options(self) -> Dict[str, Any]:
    """``n`` and ``percentile`` and every other option of a method other than MBE (ECMT's), as
    :func:`spikingjelly_mbe.convert` takes them."""
    return {name: plain_value(getattr(self, name)) for name in dict.fromkeys(METHOD_COLUMNS.values())}


def _method_columns(self) -> Dict[str, Any]:
    """:data:`METHOD_COLUMNS` with this config's values (``{'ecmt_n': 2, 'ecmt_percentile': 90.0}``)."""
    return {column: plain_value(getattr(self, name)) for column, name in METHOD_COLUMNS.items()}


def plain_value(value: Any) -> Any:
    """A choice's value (``CodeChoice.ternary`` -> ``'ternary'``); anything else as it is."""
    return value.value if isinstance(value, Enum) else value


# Arguments of :func:`spikingjelly_mbe.convert`, derived from its ConversionConfig (every option and
# default written once there); ``method`` may also pick a SpikingJelly recipe (its own T),
# ``exact_activations`` the ablation with float activations.
ConversionConfig = dataclasses.make_dataclass(
    "ConversionConfig", [_schema_field(f) for f in dataclasses.fields(DEFAULTS)] + [
        ("exact_activations", bool, field(default=False)),
        ("calibration", CalibrationConfig, field(default_factory=CalibrationConfig))],
    namespace={"operator_options": _operator_options, "method_options": _method_options,
               "method_columns": _method_columns,
               "__doc__": "Arguments of spikingjelly_mbe.convert (its ConversionConfig's fields and defaults), "
                          "a SpikingJelly recipe by method, and the exact-activations ablation."})
ConversionConfig.__module__ = __name__


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
    device: Device = Device.auto
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
