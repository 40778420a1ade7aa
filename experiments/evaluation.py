"""The one home of a conversion experiment: convert a task's model (MBE, SpikingJelly's recipes, or an
ablation), run ANN and SNN on the held-out batches with the energy meter (Eq. 14), and reduce the
tallies, in one process or sharded over ``torch.distributed`` ranks.

Used by ``experiments.convert`` (Hydra) and ``benchmarks/real_models.py``. Sharding is by batch
(rank ``r`` of ``W`` evaluates batches ``r, r + W, ...``), every batch is computed exactly as in one
process, and the per-batch tallies are folded in batch order on every rank, so ``W`` processes give
the very numbers of one process; spike and operation counts are integers and add up exactly.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion import DEFAULTS, METHODS, Calibration
from spikingjelly_mbe.conversion.config import method_fields
from spikingjelly_mbe.energy import EnergyMeter, OpStats, energy_ratio
from spikingjelly_mbe.fitting import get_target
from spikingjelly_mbe.models.paired import loss_interval
from spikingjelly_mbe.models.tasks import EvalTask, Sums, agreement, metric_loss, metric_value, paired, tally
from spikingjelly_mbe.fitting.targets import RECTIFIED
from spikingjelly_mbe.ops import RectifiedActivation, SpikingActivation
from spikingjelly_mbe.ops.digits import Steps

from . import sj_recipes

# conversion.method -> SpikingJelly recipe it runs (the methods of METHODS go through spikingjelly_mbe.convert)
SJ_METHODS = {"sj_td": "TransformerTDEquivalentRecipe", "sj_sta": "STATransformerRecipe",
              "spikezip": "SpikeZIPTFQANNRecipe"}


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel evaluation (``world == 1``: the whole set)."""

    rank: int = 0
    world: int = 1

    def indices(self, n: int) -> range:
        return range(self.rank, n, self.world)


def close_shard() -> None:
    """Leave the process group :func:`init_shard` joined (a rank that exits with it open can abort in
    gloo's teardown: "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


def init_shard() -> Shard:
    """Join the process group that ``torchrun`` describes in the environment (gloo: the models run
    on CPU), or a one-process shard when not launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cpu``; ``cuda`` (an error naming the fix when absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda, but torch sees no CUDA device: pass device=cpu or device=auto")
    return torch.device(name)


def on_device(task: EvalTask, device: torch.device) -> EvalTask:
    """``task`` with its model, head, calibration and held-out batches on ``device`` (conversion,
    calibration and evaluation then run there)."""
    def move(batch: Any) -> Any:
        if isinstance(batch, dict):
            return {k: move(v) for k, v in batch.items()}
        return batch.to(device) if isinstance(batch, torch.Tensor) else batch

    batches = [replace(b, inputs=move(b.inputs), labels=move(b.labels)) for b in task.batches]
    head = None if task.head is None else task.head.to(device)
    return replace(task, model=task.model.to(device), head=head, calib=[move(b) for b in task.calib], batches=batches)


@dataclass
class Conversion:
    """What ``convert_for`` made: the model to evaluate (``None`` when the recipe failed), its
    timesteps (the model's own: the per-site mapping when ``digit_budget`` or ``energy_budget`` allocated it), a status line, whether its spiking operators are metered and whether every
    operation between the weight layers is spike-driven (``spiking_report.fully_spiking``; ``False``
    for SpikingJelly's recipes here, which keep float nonlinearities or float values)."""

    snn: Optional[nn.Module]
    T: Steps
    status: str
    seconds: float
    metered: bool = True
    report: str = ""
    fully_spiking: bool = False


class ExactActivation(nn.Module):
    """The function a spiking activation was fitted to, in float (the exact-activations ablation)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fn = get_target(target).fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def exact_activations(snn: nn.Module) -> int:
    """Replace every :class:`SpikingActivation` and :class:`RectifiedActivation` of ``snn`` by the
    :class:`ExactActivation` of the function it computes; returns how many."""
    whole = {residual: target for target, residual in RECTIFIED.items()}
    found = {name: (whole[m.residual.fitted.target] if isinstance(m, RectifiedActivation) else m.fitted.target)
             for name, m in snn.named_modules() if isinstance(m, (SpikingActivation, RectifiedActivation))}
    names = [n for n in found if not any(n.startswith(f"{other}.") for other in found)]  # outermost only
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = snn.get_submodule(parent) if parent else snn
        setattr(holder, child, ExactActivation(found[name]))
    return len(names)


def convert_for(task: EvalTask, method: str, T: Steps, N: int, activation_N: Optional[int], mode: str = "fast",
                allow_float_fallback: bool = False, calibration: Optional[Calibration] = None,
                exact: bool = False, **options: Any) -> Conversion:
    """Convert ``task.model`` with ``method``: ``mbe`` (``spikingjelly_mbe.convert``, ``exact``:
    then swap the activations for their exact targets), ``ecmt`` (the ECMT baseline,
    ``convert(method='ecmt')``) or a SpikingJelly recipe of :data:`SJ_METHODS` at its usual T (failures
    are recorded, not raised). ``options``: the operator options of ``convert`` (``code``, ``budget``,
    ``split_bits``...; a Hydra job's are ``ConversionConfig.operator_options()`` and
    ``method_options()``), their defaults when left out; options at their defaults that ``method``
    does not use are not passed."""
    began = time.perf_counter()
    if method in SJ_METHODS:
        a = sj_recipes.attempt(SJ_METHODS[method], task.model, task.calib[:1], "model as loaded")
        if a.converted is not None and a.style != "repeat":
            return Conversion(None, a.T, f"{a.status}; its first-step evaluation needs the BERT boundary "
                                         "(benchmarks/real_models.py)", a.seconds, False)
        snn = None if a.converted is None else sj_recipes.StepAccumulator(a.converted, a.T)
        return Conversion(snn, a.T, a.status, a.seconds, False)
    if method not in METHODS:
        raise ValueError(f"conversion.method must be one of {[*METHODS, *SJ_METHODS]}, got {method!r}")
    options = dict(T=T, N=N, activation_N=activation_N, mode=mode, **options)
    own = method_fields(method)
    options = {k: v for k, v in options.items() if k in own or v != getattr(DEFAULTS, k)}
    snn = convert(task.model, task.calib, allow_float_fallback=allow_float_fallback, calibration=calibration,
                  method=method, **options)
    status = "converted"
    if exact:
        replaced = exact_activations(snn)
        if not replaced:
            raise RuntimeError(f"{task.name}: conversion.exact_activations found no spiking activation to replace")
        status = f"converted, {replaced} activations exact (ablation)"
    return Conversion(snn, snn.time_steps, status, time.perf_counter() - began, not exact, str(snn.spiking_report),
                      snn.spiking_report.fully_spiking and not exact)


def _fold(records: Sequence[Sums]) -> Sums:
    """Sum tallies in order; ``*_min`` keys take the minimum."""
    out: Sums = {}
    for sums in records:
        for key, value in sums.items():
            out[key] = (min if key.endswith("_min") else float.__add__)(out[key], value) if key in out else value
    return out


def _gather(local: Any, shard: Shard) -> List[Any]:
    if shard.world == 1:
        return [local]
    everything: List[Any] = [None] * shard.world
    dist.all_gather_object(everything, local)
    return everything


@dataclass
class Result:
    """ANN and SNN metric, their comparison and the merged energy counts of one evaluation."""

    metric: str
    ann: float
    snn: Optional[float]
    comparison: Sums
    meter: Optional[EnergyMeter]
    seconds: float
    samples: int
    world: int

    def row(self) -> Dict[str, Any]:
        """Metric, loss (with its paired 95 % interval, ``loss_lo``/``loss_hi``), agreement, cosine and
        energy columns (energy empty when not metered)."""
        c = self.comparison
        interval = loss_interval(self.metric, c) or (None, None)
        row: Dict[str, Any] = {"metric": self.metric, "ann": self.ann, "snn": self.snn,
                               "loss": None if self.snn is None else metric_loss(self.metric, self.ann, self.snn),
                               "loss_lo": interval[0], "loss_hi": interval[1],
                               "agreement": c["same"] / c["top1"] if c.get("top1") else None,
                               "cosine": c.get("cosine_min"),
                               "cosine_mean": c["cosine_sum"] / c["samples"] if c.get("samples") else None}
        if self.meter is not None:
            total, ops = self.meter.total(), self.meter.total(weight_layers=False)
            row.update(T_mean=self.meter.mean_steps(self.meter.counts), firing_rate=total.firing_rate,
                       energy_strict=energy_ratio(total),
                       energy_strict_ops=energy_ratio(ops), energy_paper=self.meter.ratio("paper"),
                       energy_paper_ops=self.meter.ratio("paper", weight_layers=False),
                       energy_int8=self.meter.ratio(precision="int8"), spikes=total.spikes, sops=total.sops,
                       ann_ops=total.ann_flops, clamped=total.clamped)
        return {**row, "samples": self.samples, "eval_seconds": round(self.seconds, 2), "processes": self.world}


def evaluate(task: EvalTask, conversion: Conversion, shard: Shard = Shard()) -> Result:
    """ANN and (when it converted) SNN over this shard's batches, tallies gathered from every rank
    and folded in batch order; the energy meter's counts are summed over ranks."""
    began = time.perf_counter()
    snn, records = conversion.snn, []
    meter = EnergyMeter(snn, conversion.T) if snn is not None and conversion.metered else None
    bar = tqdm(shard.indices(len(task.batches)), desc=f"{task.name}: evaluate", leave=False, disable=shard.rank > 0)
    with meter if meter is not None else contextlib.nullcontext():
        for i in bar:
            batch = task.batches[i]
            ann = task.features(task.model, batch)
            if snn is None:
                records.append((i, tally(task, batch, ann), {}, {}))
                continue
            out = task.features(snn, batch)
            records.append((i, tally(task, batch, ann), tally(task, batch, out),
                            {**agreement(task, ann, out), **paired(task, batch, ann, out)}))
    local = (records, {} if meter is None else {p: (vars(s), meter.kinds[p]) for p, s in meter.counts.items()})
    gathered = _gather(local, shard)
    ordered = sorted((r for recs, _ in gathered for r in recs), key=lambda r: r[0])
    ann_sums, snn_sums, comparison = (_fold([r[k] for r in ordered]) for k in (1, 2, 3))
    if meter is not None:
        meter.counts, meter.kinds = {}, {}
        for _, counts in gathered:
            for path, (stats, kind) in counts.items():
                meter.counts[path] = meter.counts.get(path, OpStats()) + OpStats(**stats)
                meter.kinds[path] = kind
    ann = metric_value(task.metric, ann_sums, {})
    value = None if snn is None else metric_value(task.metric, snn_sums, comparison)
    return Result(task.metric, ann, value, comparison, meter, time.perf_counter() - began, task.samples, shard.world)


def with_low_T(high: nn.Module, low: nn.Module, kind: str) -> nn.Module:
    """A copy of ``high`` whose ``kind`` operators carry the state of ``low``'s at the same paths."""
    mixed = copy.deepcopy(high)
    donors = dict(low.named_modules())
    for path, m in mixed.named_modules():
        if type(m).__name__ == kind and type(donors.get(path)).__name__ == kind:
            m.__dict__.update(copy.deepcopy(donors[path]).__dict__)
    return mixed
