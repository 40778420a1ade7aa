"""Config schemas: dataclasses registered in Hydra's ConfigStore.

Each primary config in ``conf/`` (``fit.yaml``, ``convert.yaml``, ``report.yaml``) starts from
its schema, so a key that is not declared here, a value of the wrong type or an unknown enum value
fails at start-up with Hydra's own error naming it. The ``target`` group gets one option per registered target of
:data:`spikingjelly_mbe.fitting.TARGETS`; ``conf/target/`` adds variants with other domains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from spikingjelly_mbe.conversion import Calibration, OpSettings
from spikingjelly_mbe.conversion.zoo import FAMILIES
from spikingjelly_mbe.fitting import KINDS, TARGETS
from spikingjelly_mbe.ops.coding import CODES

OP_SETTINGS, CALIBRATION = OpSettings(), Calibration()  # the one source of the conversion defaults


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


OperandCode = Enum("OperandCode", {name: name for name in CODES})  # the digit codes of spike-coded operands


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


class Method(Enum):
    """How the model is converted: MBE (this package), the ECMT baseline (``convert(method='ecmt')``),
    or SpikingJelly 2.0's TD-equivalent, STA and SpikeZIP-TF recipes."""

    mbe = "mbe"
    ecmt = "ecmt"
    sj_td = "sj_td"
    sj_sta = "sj_sta"
    spikezip = "spikezip"


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


@dataclass
class ConversionConfig:
    """Arguments of :func:`spikingjelly_mbe.convert`; ``method`` picks the converter (SpikingJelly's
    recipes use their own T), ``exact_activations`` the ablation with float activations."""

    method: Method = Method.mbe
    T: int = OP_SETTINGS.T
    N: int = OP_SETTINGS.N
    activation_N: Optional[int] = OP_SETTINGS.activation_N
    split_bits: Optional[int] = OP_SETTINGS.split_bits
    code: OperandCode = OperandCode(OP_SETTINGS.code)
    budget: Any = OP_SETTINGS.budget  # precision of the calibrated codes: 'auto', a float, or None (T digits of the max)
    center_inputs: bool = OP_SETTINGS.center_inputs  # weight-layer inputs coded around their channel medians
    rectified_activations: bool = OP_SETTINGS.rectified_activations  # GELU/SiLU = rectifier + fitted residual
    norm_exponents: bool = OP_SETTINGS.norm_exponents  # each element a norm codes carries its own exponent
    mode: OpMode = OpMode(OP_SETTINGS.mode)
    allow_float_fallback: bool = False
    exact_activations: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def operator_options(self) -> Dict[str, Any]:
        """The operator options of :func:`spikingjelly_mbe.convert` this config sets, the one list
        every entry point passes on."""
        return dict(split_bits=self.split_bits, code=self.code.value, budget=self.budget,
                    center_inputs=self.center_inputs, rectified_activations=self.rectified_activations,
                    norm_exponents=self.norm_exponents)


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
