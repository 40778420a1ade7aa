"""``python -m experiments.fit``: fit one neuron per job and save it, with its table, plots and W&B run.

Examples: ``python -m experiments.fit neuron=fs target=silu``;
``python -m experiments.fit -m neuron.N=1,2,4 neuron.decay=true,false``; ``experiment=quick``.
"""
from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from spikingjelly_mbe import FittedNeuron, fit_neuron

from . import config  # noqa: F401  (registers the schemas)
from . import plots
from .job import CONF_DIR, start, write_metrics
from .tables import Row, markdown, write_csv, write_text
from .tracking import log_results, open_run

TABLE_COLUMNS = ("target", "neuron", "T", "domain", "mse", "max_abs", "mean_abs", "spikes_per_input", "seconds")
METRICS = ("mse", "max_abs", "mean_abs", "spikes_per_input")


def fit_row(fitted: FittedNeuron, seconds: float, group: str) -> Row:
    """One row of the fit table; :mod:`experiments.report` gathers these across a sweep."""
    decay = bool(fitted.params.get("decay", False))
    lo, hi = fitted.domain
    return {"entry": "fit", "target": fitted.target, "kind": fitted.kind, "N": fitted.N, "T": fitted.T,
            "decay": decay, "neuron": plots.neuron_label(fitted.kind, fitted.N, decay),
            "domain": f"[{lo:g}, {hi:g}]", **{k: fitted.errors[k] for k in METRICS},
            "seconds": round(seconds, 2), "evaluations": fitted.fit.get("evaluations"),
            "seed": fitted.fit.get("seed"), "group": group}


def file_stem(fitted: FittedNeuron) -> str:
    """The library key, marked when decay is off (the key itself does not tell)."""
    return fitted.key + ("" if fitted.params.get("decay", True) else "-nodecay")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="fit")
def main(cfg: DictConfig) -> None:
    job = start(cfg)
    c = job.cfg
    stem = f"{c.target.name.value}-{plots.neuron_label(c.neuron.kind.value, c.neuron.N, c.neuron.decay)}"
    run = open_run(c.logger, job.out_dir, stem.replace(" ", "-"), job.group, "fit", job.config)
    began = time.perf_counter()
    fitted = fit_neuron(c.target.name.value, kind=c.neuron.kind.value, N=c.neuron.N, T=c.neuron.T,
                        domain=None if c.target.domain is None else tuple(c.target.domain),
                        samples=c.fit.samples, seed=c.fit.seed, dt=c.neuron.dt, decay=c.neuron.decay,
                        budget=c.fit.budget, restarts=c.fit.restarts, progress=True)
    row = fit_row(fitted, time.perf_counter() - began, job.group)
    params = fitted.save(job.out_dir / f"{file_stem(fitted)}.json")
    write_metrics(job.out_dir, row)
    write_text(job.out_dir / "fit_table.md", markdown([row], TABLE_COLUMNS))
    write_csv([row], job.out_dir / "fit_table.csv")
    images = {"fit": plots.fit_curve(fitted, c.plot.points, job.out_dir / "fit.png"),
              "raster": plots.spike_raster(fitted, c.plot.raster_inputs, job.out_dir / "raster.png")}
    log_results(run, {k: row[k] for k in (*METRICS, "seconds")}, {"fit_table": [row]}, images,
                [(file_stem(fitted), "fitted-neuron", params)])
    run.finish()
    print(f"\n{markdown([row], TABLE_COLUMNS)}outputs: {job.out_dir}")


if __name__ == "__main__":
    main()
