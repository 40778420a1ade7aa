"""``python -m experiments.report sweep_dir=<multirun folder>``: one table and the sweep's plots.

Gathers every job's ``metrics.json`` (fit or convert) under ``sweep_dir`` into ``<sweep_dir>/report``
(``report.md``, ``report.csv``, PNGs) and logs them as one W&B run in the sweep's group. Fit and
convert multiruns call it by themselves when they end (:class:`ReportCallback`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from spikingjelly_mbe.fitting import get_kind

from . import plots
from .config import METHOD_COLUMNS, OPERATOR_OPTIONS, LoggerConfig
from .convert import TABLE_COLUMNS as CONVERT_COLUMNS
from .fit import TABLE_COLUMNS as FIT_COLUMNS
from .job import CONF_DIR, METRICS_FILE, start
from .tables import Row, columns, markdown, write_csv, write_text
from .tracking import log_results, open_run

REPORT_DIR = "report"
Figures = Callable[[Sequence[Row], Path], Dict[str, Path]]


def gather(sweep_dir: Path) -> List[Row]:
    """Every job's result row, with ``job`` set to its folder relative to ``sweep_dir``."""
    paths = sorted(sweep_dir.rglob(METRICS_FILE), key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s)
                                                                   for s in p.relative_to(sweep_dir).parts])
    return [{"job": str(p.parent.relative_to(sweep_dir)), **json.loads(p.read_text())} for p in paths]


def series_by(rows: Sequence[Row], cols: Sequence[str]) -> Callable[[Row], str]:
    """Label a row by those of ``cols`` that vary across ``rows``."""
    varying = [c for c in cols if len({r.get(c) for r in rows}) > 1]

    def label(row: Row) -> str:
        parts = [v if isinstance(v, str) else f"{c}={v}" for c, v in ((c, row.get(c)) for c in varying)]
        return ", ".join(parts) or "all"
    return label


def fit_figures(rows: Sequence[Row], out: Path) -> Dict[str, Path]:
    """MSE and spikes per input vs N, decay on/off (Fig. 6(b)/(c)); MBE vs FS per target (Fig. 6(a))."""
    figures = {}
    mbe = [r for r in rows if not get_kind(r["kind"]).single_basis]  # the kinds whose N varies
    if len({r["N"] for r in mbe}) > 1:
        panels = [("mse", "MSE", True), ("spikes_per_input", "spikes per input", False)]
        figures["mse_vs_N"] = plots.lines(mbe, "N", panels, series_by(mbe, ("target", "T", "decay")),
                                          out / "mse_vs_N.png", "MSE and spikes vs number of bases N")
    if len({r["kind"] for r in rows}) > 1:
        figures["mbe_vs_fs"] = plots.bars(rows, "target", series_by(rows, ("neuron", "T")), "mse",
                                          out / "mbe_vs_fs.png", "MBE vs FS: MSE per target", log=True)
    return figures


# what a convert sweep may vary besides T
SETTINGS = ("method", "T_ops", "N", "activation_N", *OPERATOR_OPTIONS, *METHOD_COLUMNS, "percentile", "headroom")
OBJECTIVES = ("energy_strict", "loss")  # both minimised: the Pareto front of a convert sweep


def pareto_front(rows: Sequence[Row], objectives: Sequence[str] = OBJECTIVES) -> List[Row]:
    """The rows no other row dominates (at most as large in every objective, smaller in one), sorted
    by the first objective; rows missing an objective are left out."""
    scored = [r for r in rows if all(r.get(k) is not None for k in objectives)]

    def dominates(a: Row, b: Row) -> bool:
        return all(a[k] <= b[k] for k in objectives) and any(a[k] < b[k] for k in objectives)
    front = [r for r in scored if not any(dominates(o, r) for o in scored)]
    return sorted(front, key=lambda r: [r[k] for k in objectives])


def by_T(rows: Sequence[Row]) -> List[Row]:
    """One row per model and setting: the ANN, then per T the SNN metric and the strict whole-model
    energy ratio (``'74.2 / 0.31'``), and whether the method is fully spike-driven (the side-by-side
    table of a sweep over T and methods)."""
    label = series_by(rows, SETTINGS)
    grouped: Dict[Tuple[str, str], List[Row]] = {}
    for r in rows:
        grouped.setdefault((r["model"], label(r)), []).append(r)
    table = []
    for (model, setting), members in grouped.items():
        row: Row = {"model": model, "setting": setting, "metric": members[0]["metric"], "ann": members[0]["ann"]}
        for r in sorted(members, key=lambda r: r["T"]):
            energy = "" if r.get("energy_strict") is None else f" / {r['energy_strict']:.3g}"
            row[f"T={r['T']}"] = f"{r['snn']:.4g}{energy}"
        row["fully_spiking"] = members[0].get("fully_spiking")
        table.append(row)
    return table


def convert_figures(rows: Sequence[Row], out: Path) -> Dict[str, Path]:
    """Per metric, ANN and SNN vs T for each model (Table 4); firing rate and energy vs T; when T
    does not vary, loss and energy per setting; the Pareto front of loss and energy."""
    figures: Dict[str, Path] = {}
    rows = [r for r in rows if r.get("snn") is not None]
    if not rows:
        return figures
    setting = series_by(rows, SETTINGS)
    model = series_by(rows, ("model", *SETTINGS))
    if len({r["T"] for r in rows}) > 1:
        pivot = by_T(rows)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "by_T.md", "SNN metric / strict E_SNN/E_ANN per T\n\n" + markdown(pivot, columns(pivot)))
        ann_label = series_by(rows, ("model",))
        for metric in sorted({r["metric"] for r in rows}):
            points = [{"T": r["T"], "value": r["snn"], "series": f"{model(r)} SNN"} for r in rows if r["metric"] == metric]
            points += [{"T": r["T"], "value": r["ann"], "series": f"{ann_label(r)} ANN"}
                       for r in rows if r["metric"] == metric]
            figures[f"{metric}_vs_T"] = plots.lines(points, "T", [("value", metric, metric == "perplexity")],
                                                    lambda p: p["series"], out / f"{metric}_vs_T.png",
                                                    f"{metric} of ANN and SNN vs timesteps T")
        metered = [r for r in rows if r.get("energy_strict") is not None]
        if metered:
            panels = [("firing_rate", "firing rate", False),
                      ("energy_strict", "energy SNN / ANN, strict (Eq. 14)", False),
                      ("energy_paper", "energy SNN / ANN, paper's convention (Eq. 14)", False)]
            figures["energy_vs_T"] = plots.lines(metered, "T", panels, model, out / "energy_vs_T.png",
                                                 "Firing rate and whole-model energy vs T")
    elif len({setting(r) for r in rows}) > 1:
        figures["loss_by_setting"] = plots.bars(rows, "model", setting, "loss", out / "loss_by_setting.png",
                                                "Loss (accuracy points / perplexity %) per setting", log=False)
    front = pareto_front(rows)
    if len(rows) > 1 and front:
        label = series_by(rows, ("model", "T", *SETTINGS))
        write_csv(front, out / "pareto.csv")
        write_text(out / "pareto.md", markdown(front, ("job", "model", "T", *SETTINGS, *OBJECTIVES)))
        figures["pareto"] = plots.pareto([r for r in rows if r.get("energy_strict") is not None], front, label,
                                         OBJECTIVES, out / "pareto.png")
    figures.update(frontiers(rows, out))
    return figures


FRONTIER_COLUMNS = ("model", "point", "T", "T_ops", "T_mean", "loss", "loss_lo", "loss_hi", "energy_strict", "on_front",
                    "job")


def points_of(rows: Sequence[Row], model: str) -> List[Row]:
    """``model``'s jobs with both objectives measured."""
    return [r for r in rows if r["model"] == model and all(r.get(k) is not None for k in OBJECTIVES)]


def frontier_table(rows: Sequence[Row]) -> List[Row]:
    """Per model, every metered job as a point (its T and settings), loss and strict whole-model
    energy, and whether it is on that model's Pareto front; sorted by model and energy."""
    table: List[Row] = []
    for name in sorted({r["model"] for r in rows}):
        mine = points_of(rows, name)
        front, label = {id(r) for r in pareto_front(mine)}, series_by(mine, ("T", *SETTINGS))
        table += [{"model": name, "point": label(r), "T": r["T"], "T_ops": r.get("T_ops") or "",
                   "T_mean": r.get("T_mean"), "loss": r["loss"], "loss_lo": r.get("loss_lo"), "loss_hi": r.get("loss_hi"),
                   "energy_strict": r["energy_strict"],
                   "on_front": id(r) in front, "job": r.get("job")}
                  for r in sorted(mine, key=lambda r: [r[k] for k in OBJECTIVES])]
    return table


def frontiers(rows: Sequence[Row], out: Path) -> Dict[str, Path]:
    """When a sweep covers several models, or varies more than T (``experiment=frontier``): per model,
    loss against strict energy for each of its jobs (T and settings), the non-dominated ones joined
    (``frontier_<model>.png``), and every point with its place on the front (``frontier.md/.csv``)."""
    figures: Dict[str, Path] = {}
    models = sorted({r["model"] for r in rows})
    if len(models) < 2 and len({series_by(rows, SETTINGS)(r) for r in rows}) < 2:
        return figures
    table = frontier_table(rows)
    if not table:
        return figures
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, out / "frontier.csv")
    write_text(out / "frontier.md", "Loss vs strict whole-model E_SNN/E_ANN per model; on_front: no other "
               "point is as good in both and better in one\n\n" + markdown(table, FRONTIER_COLUMNS))
    for name in models:
        mine = points_of(rows, name)
        front = pareto_front(mine)
        if len(mine) > 1 and front:
            figures[f"frontier_{name}"] = plots.pareto(mine, front, series_by(mine, ("T", *SETTINGS)), OBJECTIVES,
                                                       out / f"frontier_{name}.png", f"{name}: loss vs energy")
    return figures


ENTRIES: Dict[str, Tuple[Tuple[str, ...], Figures]] = {"fit": (("job", *FIT_COLUMNS), fit_figures),
                                                       "convert": (("job", *CONVERT_COLUMNS), convert_figures)}


def build_report(sweep_dir: Path, logger: LoggerConfig) -> Path:
    """Write ``report.md``, ``report.csv`` and plots to ``<sweep_dir>/report``, log them to W&B
    and print the table; returns the report folder."""
    rows = gather(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no {METRICS_FILE} under {sweep_dir}: is it a multirun folder of experiments.fit "
                                "or experiments.convert?")
    out = sweep_dir / REPORT_DIR
    sections, images = [f"# Report: {sweep_dir}\n"], {}
    for entry, (cols, figures) in ENTRIES.items():
        subset = [r for r in rows if r.get("entry") == entry]
        if subset:
            found = figures(subset, out)
            images.update(found)
            sections += [f"## {entry} ({len(subset)} jobs)\n", markdown(subset, cols)]
            sections += [f"![{key}]({path.name})\n" for key, path in found.items()]
    write_text(out / "report.md", "\n".join(sections))
    write_csv(rows, out / "report.csv")
    tables = {"report": rows}
    converted = [r for r in rows if r.get("entry") == "convert" and r.get("snn") is not None]
    if len(converted) > 1:
        tables.update(pareto=pareto_front(converted), frontier=frontier_table(converted))
    run = open_run(logger, out, "report", rows[0]["group"], "report", {"sweep_dir": str(sweep_dir)})
    log_results(run, {"jobs": len(rows)}, tables, images)
    run.finish()
    print("\n".join(sections[1:]) + f"\nreport: {out}")
    return out


class ReportCallback(Callback):
    """Hydra callback: gather the multirun into its report when all jobs are done."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        build_report(Path(config.hydra.sweep.dir), OmegaConf.to_object(config.logger))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    job = start(cfg)
    build_report(Path(job.cfg.sweep_dir), job.cfg.logger)


if __name__ == "__main__":
    main()
