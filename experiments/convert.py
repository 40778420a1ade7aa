"""``python -m experiments.convert``: convert one model, compare ANN and SNN, count spikes and energy.

Examples: ``python -m experiments.convert model=minilm data=reviews conversion.T=16``;
``python -m experiments.convert experiment=real_quick``; ``model=gpt2 conversion.T=12`` (a small
locally built model). Under ``torchrun --nproc_per_node=K -m experiments.convert ...`` the held-out
batches are split over the K processes and the results reduced (``experiments.evaluation``); rank 0
writes the outputs.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import hydra
from omegaconf import DictConfig, OmegaConf

from spikingjelly_mbe.conversion import Calibration
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.mbe.method import check_codes
from spikingjelly_mbe.models.tasks import EvalBatch, EvalTask, load_data, load_source, make_task
from spikingjelly_mbe.ops.digits import Steps, check_T, default_steps, overrides

from . import plots
from .config import METHOD_COLUMNS, OPERATOR_OPTIONS, ConvertJob, DataSource, ModelSource, plain_value
from .evaluation import Result, close_shard, convert_for, evaluate, init_shard, on_device, resolve_device
from .job import CONF_DIR, start, write_metrics
from .tables import Row, markdown, write_csv, write_text
from .tracking import log_results, open_run

TABLE_COLUMNS = ("model", "data", "method", "T", "T_ops", "N", "activation_N", *OPERATOR_OPTIONS, *METHOD_COLUMNS,
                 "metric",
                 "ann", "snn", "loss", "loss_lo", "loss_hi",
                 "agreement", "cosine", "cosine_mean", "fully_spiking", "T_mean", "firing_rate", "energy_strict",
                 "energy_strict_ops", "energy_paper", "energy_paper_ops",
                 "energy_int8", "samples", "convert_seconds",
                 "eval_seconds")
METRICS = ("ann", "snn", "loss", "loss_lo", "loss_hi", "agreement", "cosine", "T_mean", "firing_rate", "energy_strict", "energy_strict_ops",
           "energy_paper", "energy_paper_ops", "energy_int8", "sops",
           "ann_ops", "eval_seconds")


def model_label(c: ConvertJob) -> str:
    """``gpt2-L2-D32`` for a zoo model, the pretrained name, or ``hf:<folder name>`` / ``timm:<arch>``."""
    m = c.model
    if m.source is ModelSource.zoo:
        return f"{m.family.value}-L{m.layers}-D{m.hidden}"
    if m.source is ModelSource.pretrained:
        if m.name is None:
            raise ValueError("model.name is required for model.source=pretrained: pass model=minilm, dinov2, smollm2 "
                             "or gpt2_small")
        return m.name.value
    return f"hf:{Path(m.path or '?').name}" if m.source is ModelSource.hf else f"timm:{m.arch}"


def zoo_task(c: ConvertJob) -> EvalTask:
    """A small locally built model on generated inputs of its kind, compared by ``model.metric``."""
    family, d = c.model.family.value, c.data
    if d.source is not DataSource.synthetic:
        raise ValueError(f"model={family} (a small locally built model) runs on data=synthetic or data=tiny, got "
                         f"data.source={d.source.value}; the real data sets go with the pretrained models "
                         "(model=minilm, dinov2, smollm2, gpt2_small) or model=hf/timm")
    model = build(family, layers=c.model.layers, hidden=c.model.hidden, heads=c.model.heads, seed=c.model.seed)
    calib = [make_batch(family, d.calib_size, d.seq_len, seed=d.seed + 1000 + i) for i in range(d.calib_batches)]
    batches = [EvalBatch(make_batch(family, d.batch_size, d.seq_len, seed=d.seed + i)) for i in range(d.batches)]
    return EvalTask(model_label(c), model, c.model.metric.value, calib, batches, lambda out, inputs: main_output(out),
                    samples=d.batches * d.batch_size)


def build_task(c: ConvertJob) -> EvalTask:
    """The job's model and held-out data as an :class:`EvalTask`."""
    m, d = c.model, c.data
    if m.source is ModelSource.zoo:
        return zoo_task(c)
    if d.source is DataSource.synthetic:
        raise ValueError(f"model={model_label(c)} needs real data: pass data=reviews, mnist, lee, text_file "
                         "(data.path=...) or image_folder (data.path=...)")
    source = load_source(model_label(c) if m.source is ModelSource.pretrained else m.source.value, m.path,
                         None if m.task is None else m.task.value, m.arch, dict(m.timm_kwargs))
    data = load_data(d.source.value, d.path, d.split_seed, d.image_size)
    samples = d.samples if d.samples is not None else m.samples
    return make_task(source, d.source.value, data, samples, d.batch_size, d.calib_batches, d.calib_size, d.context)


def result_row(c: ConvertJob, task: EvalTask, T: Steps, status: str, convert_seconds: float, result: Result,
               group: str, fully_spiking: bool = False) -> Row:
    """The job's row; a per-operator ``T`` is its default digits in ``T`` and the other keys in ``T_ops``
    (``T_mean``: the digits per coded value the meter saw)."""
    return {"entry": "convert", "model": model_label(c), "data": c.data.source.value,
            "method": c.conversion.method.value + ("+exact_act" if c.conversion.exact_activations else ""),
            "T": default_steps(T), "T_ops": overrides(T), "N": c.conversion.N, "activation_N": c.conversion.activation_N,
            **c.conversion.operator_options(), **c.conversion.method_columns(),
            "percentile": c.conversion.calibration.percentile if c.conversion.calibration.method.value == "percentile"
            else None, "headroom": c.conversion.calibration.headroom, "mode": c.conversion.mode.value,
            **result.row(), "fully_spiking": fully_spiking, "status": status,
            "convert_seconds": round(convert_seconds, 2), "group": group}


def steps_label(row: Row) -> str:
    """``'4'`` or, for a per-operator ``T``, ``'4 (softmax=6, norm=6)'``."""
    return f"{row['T']} ({row['T_ops']})" if row.get("T_ops") else str(row["T"])


def write_outputs(out_dir: Path, row: Row, result: Result, report: str) -> Dict[str, Path]:
    """``metrics.json``, the one-row table, ``conversion.txt`` and, when metered, the energy tables
    and plots by module path, operator type and block; returns the PNGs."""
    write_metrics(out_dir, row)
    write_text(out_dir / "convert_table.md", markdown([row], TABLE_COLUMNS))
    write_csv([row], out_dir / "convert_table.csv")
    write_text(out_dir / "conversion.txt", f"{report or row['status']}\n")
    images: Dict[str, Path] = {}
    if result.meter is not None:
        for by, name in (("path", "layers"), ("operator", "energy_operator"), ("type", "energy_type"),
                         ("block", "energy_block")):
            rows = result.meter.rows(by)
            write_csv(rows, out_dir / f"{name}.csv")
            images[name] = plots.layer_bars(rows[:-1] if by == "path" else rows, by, out_dir / f"{name}.png",
                                            f"{row['model']}, T={steps_label(row)}: by {by}")
    return images


def check_conversion(cfg: DictConfig) -> None:
    """The options the schema types loosely, ``conversion.T`` (an int or a per-operator mapping) and
    ``conversion.code`` and ``conversion.operand_code``, checked before anything loads."""
    T = cfg.conversion.T
    T = check_T(OmegaConf.to_container(T) if isinstance(T, DictConfig) else T)
    check_codes(plain_value(cfg.conversion.code), cfg.conversion.get("operand_code"), T)  # code: a CodeChoice


def run(cfg: DictConfig) -> Tuple[float, float]:
    """One job; returns the objectives of the Optuna sweep: (loss, whole-model energy ratio)."""
    check_conversion(cfg)
    shard = init_shard()
    job = start(cfg)
    c: ConvertJob = job.cfg
    task = on_device(build_task(c), resolve_device(c.device.value))
    k = c.conversion
    conversion = convert_for(task, k.method.value, k.T, k.N, k.activation_N, k.mode.value,
                             k.allow_float_fallback, Calibration(method=k.calibration.method.value,
                                                                 percentile=k.calibration.percentile,
                                                                 headroom=k.calibration.headroom),
                             k.exact_activations, **k.operator_options(), **k.method_options())
    result = evaluate(task, conversion, shard)
    allocated = k.digit_budget is not None or k.energy_budget is not None  # its T mapping: the nominal T's row
    row = result_row(c, task, k.T if allocated else conversion.T, conversion.status, conversion.seconds, result, job.group,
                     conversion.fully_spiking)
    if shard.rank == 0:
        run_ = open_run(c.logger, job.out_dir, f"{row['model']}-{row['method']}-T{steps_label(row)}", job.group,
                        "convert", job.config)
        images = write_outputs(job.out_dir, row, result, conversion.report)
        tables: Dict[str, Any] = {"convert_table": [row]}
        if result.meter is not None:
            tables.update(energy_operator=result.meter.rows("operator"), energy_type=result.meter.rows("type"),
                          energy_block=result.meter.rows("block"))
        log_results(run_, {k_: row[k_] for k_ in METRICS if row.get(k_) is not None}, tables, images)
        run_.finish()
        print(f"\n{markdown([row], TABLE_COLUMNS)}outputs: {job.out_dir} ({row['eval_seconds'] + row['convert_seconds']:.1f} s)")
    if row["snn"] is None:
        return float("inf"), float("inf")
    return row["loss"], row.get("energy_strict") or 0.0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="convert")
def app(cfg: DictConfig) -> Tuple[float, float]:
    try:
        return run(cfg)
    finally:
        close_shard()


def main() -> None:
    """Entry point; under torchrun, ranks above 0 keep their Hydra folder and logs out of the run's."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        app()
        return
    scratch = Path(tempfile.gettempdir()) / f"sjmbe-convert-rank{rank}-{os.getpid()}"
    sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                 "hydra/hydra_logging=disabled"]
    try:
        app()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
