"""``python -m experiments.convert``: convert one model, compare ANN and SNN, count spikes and energy.

Examples: ``python -m experiments.convert model=gpt2 conversion.T=12``;
``python -m experiments.convert experiment=table4``.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Sequence, Tuple

import hydra
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion import Calibration
from spikingjelly_mbe.conversion.calibration import Batch
from spikingjelly_mbe.conversion.zoo import agreement, build, main_output, make_batch
from spikingjelly_mbe.energy import EnergyMeter

from . import plots
from .config import ConvertJob, Metric
from .job import CONF_DIR, start, write_metrics
from .tables import Row, markdown, write_csv
from .tracking import log_results, open_run

TABLE_COLUMNS = ("model", "T", "N", "activation_N", "metric", "ann", "snn", "cosine", "firing_rate", "energy_strict",
                 "energy_paper", "convert_seconds", "eval_seconds")
METRICS = ("ann", "snn", "cosine", "firing_rate", "energy_strict", "energy_paper", "energy_strict_int8", "sops",
           "ann_flops")


def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return main_output(model(**batch) if isinstance(batch, dict) else model(batch))


def run_both(ann: nn.Module, snn: nn.Module, batches: Sequence[Batch],
             T: int) -> Tuple[torch.Tensor, torch.Tensor, EnergyMeter]:
    """ANN and SNN outputs over ``batches`` and the SNN's counts (operators and weight layers) summed
    over them."""
    ann_out, snn_out = [], []
    with EnergyMeter(snn, T) as meter:
        for batch in tqdm(batches, desc="evaluate", leave=False):
            ann_out.append(forward(ann, batch))
            snn_out.append(forward(snn, batch))
    return torch.cat(ann_out), torch.cat(snn_out), meter


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """``exp`` of the mean next-token cross-entropy."""
    return math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten()).item())


def compare(metric: Metric, ann: torch.Tensor, snn: torch.Tensor, batches: Sequence[Batch]) -> Dict[str, float]:
    """``ann``/``snn`` values of ``metric`` (agreement and cosine take the ANN as reference: 1) and
    the worst per-sample cosine."""
    cosine = agreement(ann, snn)["cosine"]
    if metric is Metric.perplexity:
        ids = torch.cat([b["input_ids"] for b in batches])
        return {"ann": perplexity(ann, ids), "snn": perplexity(snn, ids), "cosine": cosine}
    snn_value = agreement(ann, snn)["argmax"] if metric is Metric.agreement else cosine
    return {"ann": 1.0, "snn": snn_value, "cosine": cosine}


def model_label(c: ConvertJob) -> str:
    return f"{c.model.family.value}-L{c.model.layers}-D{c.model.hidden}"


def build_and_convert(c: ConvertJob) -> Tuple[nn.Module, nn.Module, float]:
    """The ANN, its converted SNN and the seconds the conversion (with calibration) took."""
    family, d = c.model.family.value, c.data
    ann = build(family, layers=c.model.layers, hidden=c.model.hidden, heads=c.model.heads, seed=c.model.seed)
    calib = [make_batch(family, d.calib_size, d.seq_len, seed=d.seed + 1000 + i) for i in range(d.calib_batches)]
    began = time.perf_counter()
    snn = convert(ann, T=c.conversion.T, N=c.conversion.N, activation_N=c.conversion.activation_N, calib_data=calib, mode=c.conversion.mode.value,
                  allow_float_fallback=c.conversion.allow_float_fallback, fx=c.conversion.fx,
                  calibration=Calibration(method=c.conversion.calibration.method.value,
                                          percentile=c.conversion.calibration.percentile))
    return ann, snn, time.perf_counter() - began


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="convert")
def main(cfg: DictConfig) -> None:
    job = start(cfg)
    c: ConvertJob = job.cfg
    label = model_label(c)
    run = open_run(c.logger, job.out_dir, f"{label}-T{c.conversion.T}", job.group, "convert", job.config)
    ann, snn, convert_seconds = build_and_convert(c)
    (job.out_dir / "conversion.txt").write_text(f"{snn.mbe_report}\n")
    batches = [make_batch(c.model.family.value, c.data.batch_size, c.data.seq_len, seed=c.data.seed + i)
               for i in range(c.data.batches)]
    began = time.perf_counter()
    ann_out, snn_out, meter = run_both(ann, snn, batches, c.conversion.T)
    total = meter.total()
    row = {"entry": "convert", "model": label, "T": c.conversion.T, "N": c.conversion.N,
           "activation_N": c.conversion.activation_N,
           "mode": c.conversion.mode.value, "metric": c.model.metric.value,
           **compare(c.model.metric, ann_out, snn_out, batches), "firing_rate": total.firing_rate,
           "energy_strict": meter.ratio("strict"), "energy_paper": meter.ratio("paper"),
           "energy_strict_int8": meter.ratio("strict", precision="int8"), "sops": total.sops,
           "ann_flops": total.ann_flops,
           "convert_seconds": round(convert_seconds, 2), "eval_seconds": round(time.perf_counter() - began, 2),
           "group": job.group}
    layers = meter.rows("path")[:-1]
    write_metrics(job.out_dir, row)
    (job.out_dir / "convert_table.md").write_text(markdown([row], TABLE_COLUMNS))
    write_csv([row], job.out_dir / "convert_table.csv")
    write_csv(layers, job.out_dir / "layers.csv")
    images = {"layers": plots.layer_bars(layers, "path", job.out_dir / "layers.png", f"{label}, T={c.conversion.T}")}
    log_results(run, {k: row[k] for k in METRICS}, {"convert_table": [row], "layers": layers}, images)
    run.finish()
    print(f"\n{markdown([row], TABLE_COLUMNS)}outputs: {job.out_dir}")


if __name__ == "__main__":
    main()
