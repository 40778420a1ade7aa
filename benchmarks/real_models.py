"""Real pretrained models, offline: ANN vs MBE-SNN metric at several T, energy report (Eq. 14) and
SpikingJelly 2.0's own recipes side by side, on held-out data (assets: docs/assets.md).

  python benchmarks/real_models.py            # all four models, T in {8, 10, 12, 16} (2 CPU cores, < 60 min)
  python benchmarks/real_models.py --quick    # MiniLM + DINOv2, T in {8, 16}, small subsets (< 5 min)
  python benchmarks/real_models.py --models smollm2 --T 16 --exact-activations --no-recipes   # ablation

Writes to ``--out`` (default ``results/real_models[_quick]``): ``table.md/.csv`` (metric vs T),
``metric_vs_T.png``, ``energy_<model>_{operator,block}.csv/.png`` (at ``--energy-T``) and
``sj_recipes.md/.csv``. Bars at T=16: accuracy loss <= 1 point, perplexity increase <= 5 %.
``--exact-activations`` (ablation) swaps every converted activation neuron for the exact function it
was fitted to, so the table shows what the activation fits cost; it writes no energy report.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import plots, sj_recipes  # noqa: E402
from experiments.config import OPERATOR_OPTIONS, ConvertJob  # noqa: E402
from experiments.convert import build_task  # noqa: E402
from experiments.evaluation import SJ_METHODS, Conversion, convert_for, evaluate  # noqa: E402
from experiments.job import CONF_DIR  # noqa: E402
from experiments.tables import Row, markdown, write_csv  # noqa: E402
from spikingjelly_mbe.energy import EnergyMeter, energy_ratio  # noqa: E402
from spikingjelly_mbe.energy.report import RATIO_COLUMNS  # noqa: E402

RATIO_COLUMN_NAMES = tuple(column for column, _, _ in RATIO_COLUMNS)
from spikingjelly_mbe.models import load_model, review_probe  # noqa: E402
from spikingjelly_mbe.models.evaluate import evaluate_classifier  # noqa: E402
from spikingjelly_mbe.models.tasks import EvalTask  # noqa: E402
from spikingjelly_mbe.ops.coding import CODES, DEFAULT_CODE  # noqa: E402
from spikingjelly_mbe.ops.precision import AUTO, DEFAULT_BUDGET  # noqa: E402

# model -> its conf/model entry; the held-out sets (full: the conf/data defaults, the README table) and
# the --quick caps (reviews, digits, tokens)
CONF_MODELS = {"minilm": "minilm", "dinov2": "dinov2", "gpt2-small": "gpt2_small", "smollm2": "smollm2"}
QUICK_SAMPLES = {"minilm": 100, "dinov2": 50, "gpt2-small": 512, "smollm2": 512}
ACCURACY_BAR, PERPLEXITY_BAR = 1.0, 5.0  # points lost, percent increase, at T=16
ENERGY_COLUMNS = ("energy_strict", "energy_paper", "energy_strict_int8", "energy_strict_ops", "energy_paper_ops")
TABLE_COLUMNS = ("model", "metric", *OPERATOR_OPTIONS, "T", "ann", "snn", "loss", "meets_bar", *ENERGY_COLUMNS, "firing_rate",
                 "convert_s", "eval_s")
SJ_COLUMNS = ("model", "method", "route", "T", "ann", "snn", "status", "convert_s", "eval_s")


def job_config(name: str, quick: bool, conversion: Sequence[str] = ()) -> ConvertJob:
    """The Hydra config of ``experiments.convert model=<name>`` (the same settings as the presets;
    ``conversion``: overrides of its ``conversion`` group, e.g. ``code=binary``)."""
    overrides = [f"model={CONF_MODELS[name]}"] + ([f"data.samples={QUICK_SAMPLES[name]}"] if quick else [])
    overrides += [f"conversion.{o}" for o in conversion]
    GlobalHydra.instance().clear()  # a Hydra app run earlier in this process leaves it initialised
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        import experiments.config  # noqa: F401  (registers the schemas)
        return OmegaConf.to_object(compose(config_name="convert", overrides=overrides))


def measure(name: str, task: EvalTask, c: ConvertJob, Ts: Sequence[int], energy_T: Optional[int], out: Path,
            exact: bool = False) -> List[Row]:
    """The ANN row, then per T: convert (``exact``: with exact activations) and evaluate; energy
    tables at ``energy_T``."""
    rows: List[Row] = []
    k = c.conversion
    for T in tqdm(Ts, desc=f"{name}: T", leave=False):
        conversion = convert_for(task, "mbe", T, k.N, k.activation_N, exact=exact, **k.operator_options())
        result = evaluate(task, conversion)
        if not rows:
            rows.append({"model": name, "metric": task.metric, "T": "ANN", "ann": round(result.ann, 3)})
        bar = ACCURACY_BAR if task.metric == "accuracy" else PERPLEXITY_BAR
        r = result.row()
        energy = energy_report(name, result.meter, T, out) if T == energy_T and result.meter is not None else {}
        rows.append({"model": name, "metric": task.metric, **k.operator_options(), "T": T, "ann": round(result.ann, 3),
                     "snn": round(result.snn, 3), "loss": round(r["loss"], 3),
                     "meets_bar": r["loss"] <= bar if T == 16 else "", **energy,
                     "convert_s": round(conversion.seconds, 1), "eval_s": round(result.seconds, 1)})
        tqdm.write(markdown(rows[-1:], TABLE_COLUMNS).splitlines()[-1])
    return rows


def energy_report(name: str, meter: EnergyMeter, T: int, out: Path) -> Dict[str, float]:
    """Per-operator and per-block tables and bar plots; returns the totals for the main table."""
    for by in ("operator", "block"):
        rows = meter.rows(by)
        write_csv(rows, out / f"energy_{name}_{by}.csv")
        (out / f"energy_{name}_{by}.md").write_text(markdown(rows, (by, "firing_rate", "spikes", "sops", "ann_ops",
                                                                    *RATIO_COLUMN_NAMES, "clamped")))
        plots.layer_bars(rows, by, out / f"energy_{name}_{by}.png", f"{name}, T={T}: energy by {by} (Eq. 14)")
    return {"energy_strict": round(energy_ratio(meter.total()), 4),
            "energy_strict_ops": round(energy_ratio(meter.total(weight_layers=False)), 4),
            "energy_paper": round(meter.ratio("paper"), 4),
            "energy_paper_ops": round(meter.ratio("paper", weight_layers=False), 4),
            "energy_strict_int8": round(meter.ratio(precision="int8"), 4),
            "firing_rate": round(meter.total().firing_rate, 3)}


def boundary_score(a: sj_recipes.Attempt, task: EvalTask) -> float:
    """MiniLM through SpikingJelly's BERT example boundary, scored by the review probe on the task's reviews."""
    _, tokenizer = load_model("minilm")
    probe = review_probe()
    encode = sj_recipes.boundary_sentence_encoder(a, task.model, tokenizer)
    with torch.no_grad():
        return 100 * evaluate_classifier(encode, probe.head, probe.data.test_x[:task.samples],
                                         probe.data.test_y[:task.samples])


def side_by_side(name: str, task: EvalTask, ann: float) -> List[Row]:
    """SpikingJelly's recipes on the model as loaded, and on its documented BERT boundary for MiniLM."""
    rows: List[Row] = []
    for method, recipe in SJ_METHODS.items():
        conversion = convert_for(task, method, 0, 0, None)
        attempts = [("model as loaded", conversion)]
        if name == "minilm":
            _, tokenizer = load_model("minilm")
            boundary = sj_recipes.bert_boundary(task.model)
            calib = sj_recipes.boundary_calibration(task.model, tokenizer, review_probe().data.train_x[:8])
            attempts.append(("SpikingJelly's BERT example boundary",
                             sj_recipes.attempt(recipe, boundary, calib, "SpikingJelly's BERT example boundary")))
        for route, a in attempts:
            row = {"model": name, "method": recipe, "route": route, "T": a.T, "ann": round(ann, 3),
                   "status": a.status, "convert_s": round(a.seconds, 1)}
            began = time.perf_counter()
            try:
                if isinstance(a, Conversion) and a.snn is not None:
                    row["snn"] = round(evaluate(task, a).snn, 3)
                elif isinstance(a, sj_recipes.Attempt) and a.converted is not None:
                    row["snn"] = round(boundary_score(a, task), 3)
            except Exception as error:  # recorded in the table like a conversion failure
                row["status"] += "; evaluation fails: " + sj_recipes.short_error(error)
            row["eval_s"] = round(time.perf_counter() - began, 1)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MiniLM + DINOv2, T in {8, 16}, small held-out subsets")
    ap.add_argument("--models", nargs="+", choices=tuple(CONF_MODELS))
    ap.add_argument("--T", nargs="+", type=int, dest="Ts")
    ap.add_argument("--energy-T", type=int, default=16)
    ap.add_argument("--no-recipes", action="store_true", help="skip SpikingJelly's recipes")
    ap.add_argument("--exact-activations", action="store_true",
                    help="ablation: activations as their exact float targets (no energy report)")
    ap.add_argument("--code", choices=tuple(CODES),
                    help=f"the operands' digit code (default: the conversion default, {DEFAULT_CODE!r})")
    ap.add_argument("--budget", type=lambda v: {"none": "null", AUTO: AUTO}.get(v.lower()) or str(float(v)),
                    help="the calibrated codes' relative rounding noise (default: the conversion default, "
                         f"{DEFAULT_BUDGET!r}; 'none': T digits of each operand's maximum)")
    ap.add_argument("--no-center", action="store_true",
                    help="code the weight layers' inputs around zero, not their channel medians (ablation)")
    ap.add_argument("--no-rectified", action="store_true",
                    help="GELU/SiLU on one fitted neuron of the whole function, not rectifier + residual (ablation)")
    ap.add_argument("--no-norm-exponents", action="store_true",
                    help="norms code each row with the row's exponent alone, not one per element (ablation)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    models = args.models or (["minilm", "dinov2"] if args.quick else list(CONF_MODELS))
    Ts = args.Ts or ([8, 16] if args.quick else [8, 10, 12, 16])
    default = ("real_models_quick" if args.quick else "real_models") + ("_exact_act" if args.exact_activations else "")
    out = args.out or Path("results") / default
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows: List[Row] = []
    sj_rows: List[Row] = []
    for name in tqdm(models, desc="models"):
        settings = (("code", args.code), ("budget", args.budget), ("center_inputs", "false" if args.no_center else None),
                    ("rectified_activations", "false" if args.no_rectified else None),
                    ("norm_exponents", "false" if args.no_norm_exponents else None))
        c = job_config(name, args.quick, [f"{key}={value}" for key, value in settings if value is not None])
        task = build_task(c)
        measured = measure(name, task, c, Ts, None if args.exact_activations else args.energy_T, out,
                           args.exact_activations)
        rows += measured
        if not args.no_recipes:
            method = "MBE (spikingjelly_mbe)" + (", exact activations (ablation)" if args.exact_activations else "")
            sj_rows += [{"model": name, "method": method, "route": "model as loaded", "T": r["T"],
                         "ann": r["ann"], "snn": r["snn"], "status": "converted", "convert_s": r["convert_s"],
                         "eval_s": r["eval_s"]} for r in measured[1:]]
            sj_rows += side_by_side(name, task, measured[0]["ann"])
    write_csv(rows, out / "table.csv")
    (out / "table.md").write_text(markdown(rows, TABLE_COLUMNS))
    snn_rows = [r for r in rows if r["T"] != "ANN"]
    plots.lines(snn_rows, "T", [("loss", "accuracy points lost / perplexity increase %", False)],
                lambda r: f"{r['model']} ({r['metric']})", out / "metric_vs_T.png", "MBE conversion: loss vs T")
    print("\n" + markdown(rows, TABLE_COLUMNS))
    if sj_rows:
        write_csv(sj_rows, out / "sj_recipes.csv")
        (out / "sj_recipes.md").write_text(markdown(sj_rows, SJ_COLUMNS))
        print(markdown(sj_rows, SJ_COLUMNS))
    minutes = (time.perf_counter() - began) / 60
    (out / "wall_time.txt").write_text(f"{minutes:.1f} min on {torch.get_num_threads()} thread(s): {' '.join(sys.argv)}\n")
    print(f"outputs: {out} (wall time {minutes:.1f} min)")
    return out


if __name__ == "__main__":
    main()
