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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sj_recipes  # noqa: E402  (sibling module of this script)

from experiments import plots  # noqa: E402
from experiments.tables import Row, markdown, write_csv  # noqa: E402
from spikingjelly_mbe import convert  # noqa: E402
from spikingjelly_mbe.conversion.calibration import Batch  # noqa: E402
from spikingjelly_mbe.data import load_lee_text  # noqa: E402
from spikingjelly_mbe.energy import RATIO_COLUMNS, EnergyMeter  # noqa: E402
from spikingjelly_mbe.fitting import get_target  # noqa: E402
from spikingjelly_mbe.models import load_model, mnist_probe, perplexity, review_probe, token_stream  # noqa: E402
from spikingjelly_mbe.models.dinov2 import DigitImageProcessor  # noqa: E402
from spikingjelly_mbe.models.evaluate import evaluate_classifier  # noqa: E402
from spikingjelly_mbe.models.heads import lee_test_ids  # noqa: E402
from spikingjelly_mbe.models.minilm import MAX_LENGTH  # noqa: E402
from spikingjelly_mbe.ops import SpikingActivation  # noqa: E402

CONTEXT = 128
# held-out items scored per model (reviews, digits, tokens; None: the whole held-out split). The full
# run takes about 30 min on 2 CPU cores, most of it SpikeZIP's 32-step evaluations
FULL_LIMITS = {"minilm": 1000, "dinov2": None, "gpt2-small": None, "smollm2": 16 * CONTEXT}
QUICK_LIMITS = {"minilm": 100, "dinov2": 50, "tokens": 4 * CONTEXT}
ACCURACY_BAR, PERPLEXITY_BAR = 1.0, 5.0  # points lost, percent increase, at T=16
# whole-model energy under both conventions, int8 reference, and the replaced operators alone (the paper's scope)
ENERGY_COLUMNS = ("energy_strict", "energy_paper", "energy_strict_int8", "energy_strict_ops", "energy_paper_ops")
TABLE_COLUMNS = ("model", "metric", "T", "ann", "snn", "loss", "meets_bar", *ENERGY_COLUMNS, "firing_rate",
                 "convert_s", "eval_s")
SJ_COLUMNS = ("model", "method", "route", "T", "ann", "snn", "status", "convert_s", "eval_s")


@dataclass
class Task:
    """A pretrained model, its held-out metric and unlabeled calibration batches."""

    name: str
    model: nn.Module
    metric: str  # "accuracy" (higher is better, percent) or "perplexity"
    calib: List[Batch]
    score: Callable[[nn.Module], float]
    tokenizer: object = None
    train_texts: Sequence[str] = ()


def minilm_task(limit: Optional[int]) -> Task:
    probe = review_probe()
    _, tokenizer = load_model("minilm")  # the probe's tokenizer (local files, < 1 s)
    texts = list(probe.data.train_x[:16])
    calib = [dict(tokenizer(texts[i:i + 8], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
             for i in (0, 8)]
    return Task("minilm", probe.model, "accuracy", calib, lambda m: 100 * probe.evaluate(m, limit=limit),
                tokenizer, probe.data.train_x[:8])


def dinov2_task(limit: Optional[int]) -> Task:
    probe = mnist_probe()
    processor = DigitImageProcessor()
    calib = [processor(probe.data.train_x[i:i + 8]) for i in (0, 8)]
    return Task("dinov2", probe.model, "accuracy", calib, lambda m: 100 * probe.evaluate(m, limit=limit))


def lm_task(name: str, tokens: Optional[int]) -> Task:
    model, tokenizer = load_model(name)
    test = lee_test_ids(tokenizer)[:tokens]
    train = token_stream(tokenizer, load_lee_text().train)
    calib = [{"input_ids": train[i * 4 * CONTEXT:(i + 1) * 4 * CONTEXT].view(4, CONTEXT)} for i in range(2)]
    return Task(name, model, "perplexity", calib, lambda m: perplexity(m, test, CONTEXT))


def build_task(name: str, quick: bool) -> Task:
    if name == "minilm":
        return minilm_task(QUICK_LIMITS["minilm"] if quick else FULL_LIMITS["minilm"])
    if name == "dinov2":
        return dinov2_task(QUICK_LIMITS["dinov2"] if quick else FULL_LIMITS["dinov2"])
    return lm_task(name, QUICK_LIMITS["tokens"] if quick else FULL_LIMITS[name])


class ExactActivation(nn.Module):
    """The function a spiking activation was fitted to, in float (the ``--exact-activations`` ablation)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fn = get_target(target).fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def exact_activations(snn: nn.Module) -> int:
    """Replace every :class:`SpikingActivation` of ``snn`` by its :class:`ExactActivation`; returns how many."""
    names = [name for name, m in snn.named_modules() if isinstance(m, SpikingActivation)]
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = snn.get_submodule(parent) if parent else snn
        setattr(holder, child, ExactActivation(getattr(holder, child).fitted.target))
    return len(names)


def loss(task: Task, ann: float, snn: float) -> float:
    """Accuracy points lost, or perplexity increase in percent."""
    return ann - snn if task.metric == "accuracy" else 100 * (snn / ann - 1)


def measure(task: Task, Ts: Sequence[int], energy_T: Optional[int], out: Path, exact: bool = False) -> List[Row]:
    """ANN metric, then for each T: convert (``exact``: with exact activations), evaluate (with the
    energy meter at ``energy_T``)."""
    began = time.perf_counter()
    ann = task.score(task.model)
    rows = [{"model": task.name, "metric": task.metric, "T": "ANN", "ann": round(ann, 3),
             "eval_s": round(time.perf_counter() - began, 1)}]
    for T in tqdm(Ts, desc=f"{task.name}: T", leave=False):
        began = time.perf_counter()
        snn = convert(task.model, T=T, calib_data=task.calib)
        if exact and not exact_activations(snn):
            raise RuntimeError(f"{task.name}: --exact-activations found no spiking activation to replace")
        converted = time.perf_counter() - began
        began = time.perf_counter()
        if T == energy_T:
            with torch.no_grad(), EnergyMeter(snn, T) as meter:
                value = task.score(snn)
            energy = energy_report(task.name, meter, T, out)
        else:
            value, energy = task.score(snn), {}
        lost = loss(task, ann, value)
        bar = ACCURACY_BAR if task.metric == "accuracy" else PERPLEXITY_BAR
        rows.append({"model": task.name, "metric": task.metric, "T": T, "ann": round(ann, 3), "snn": round(value, 3),
                     "loss": round(lost, 3), "meets_bar": lost <= bar if T == 16 else "", **energy,
                     "convert_s": round(converted, 1), "eval_s": round(time.perf_counter() - began, 1)})
        tqdm.write(markdown(rows[-1:], TABLE_COLUMNS).splitlines()[-1])
    return rows


def energy_report(name: str, meter: EnergyMeter, T: int, out: Path) -> Dict[str, float]:
    """Per-operator and per-block tables and bar plots; returns the totals for the main table."""
    for by in ("operator", "block"):
        rows = meter.rows(by)
        write_csv(rows, out / f"energy_{name}_{by}.csv")
        columns = (by, "firing_rate", "spikes", "sops", "ann_ops", *(c for c, _, _ in RATIO_COLUMNS), "clamped")
        (out / f"energy_{name}_{by}.md").write_text(markdown(rows, columns))
        plots.layer_bars(rows, by, out / f"energy_{name}_{by}.png", f"{name}, T={T}: energy by {by} (Eq. 14)")
    totals = {column: meter.ratio(convention, precision=precision) for column, convention, precision in RATIO_COLUMNS}
    totals.update({f"energy_{convention}_ops": meter.ratio(convention, weight_layers=False)
                   for convention in ("strict", "paper")})
    return {**{k: round(v, 4) for k, v in totals.items()}, "firing_rate": round(meter.total().firing_rate, 3)}


def score_attempt(a: sj_recipes.Attempt, task: Task, quick: bool) -> float:
    """The task metric of a SpikingJelly-converted model, evaluated the way the recipe's examples do."""
    if a.route == "model as loaded":
        if a.style != "repeat":
            raise NotImplementedError(f"{a.style} evaluation of a whole model")
        return task.score(sj_recipes.StepAccumulator(a.converted, a.T))
    limit = (QUICK_LIMITS if quick else FULL_LIMITS)["minilm"]
    encode = sj_recipes.boundary_sentence_encoder(a, task.model, task.tokenizer)
    probe = review_probe()
    with torch.no_grad():
        return 100 * evaluate_classifier(encode, probe.head, probe.data.test_x[:limit], probe.data.test_y[:limit])


def side_by_side(task: Task, ann: float, quick: bool) -> List[Row]:
    """SpikingJelly's recipes on ``task.model`` as loaded, and on its documented BERT boundary for MiniLM."""
    rows: List[Row] = []
    for recipe in sj_recipes.RECIPES:
        attempts = [sj_recipes.attempt(recipe, task.model, task.calib[:1], "model as loaded")]
        if task.name == "minilm":
            boundary = sj_recipes.bert_boundary(task.model)
            calib = sj_recipes.boundary_calibration(task.model, task.tokenizer, task.train_texts)
            attempts.append(sj_recipes.attempt(recipe, boundary, calib, "SpikingJelly's BERT example boundary"))
        for a in attempts:
            row = {"model": task.name, "method": recipe, "route": a.route, "T": a.T, "ann": round(ann, 3),
                   "status": a.status, "convert_s": round(a.seconds, 1)}
            if a.converted is not None:
                began = time.perf_counter()
                try:
                    row["snn"] = round(score_attempt(a, task, quick), 3)
                except Exception as error:  # recorded in the table like a conversion failure
                    row["status"] += "; evaluation fails: " + sj_recipes.short_error(error)
                row["eval_s"] = round(time.perf_counter() - began, 1)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MiniLM + DINOv2, T in {8, 16}, small held-out subsets")
    ap.add_argument("--models", nargs="+", choices=("minilm", "dinov2", "gpt2-small", "smollm2"))
    ap.add_argument("--T", nargs="+", type=int, dest="Ts")
    ap.add_argument("--energy-T", type=int, default=16)
    ap.add_argument("--no-recipes", action="store_true", help="skip SpikingJelly's recipes")
    ap.add_argument("--exact-activations", action="store_true",
                    help="ablation: activations as their exact float targets (no energy report)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    models = args.models or (["minilm", "dinov2"] if args.quick else ["minilm", "dinov2", "gpt2-small", "smollm2"])
    Ts = args.Ts or ([8, 16] if args.quick else [8, 10, 12, 16])
    default = ("real_models_quick" if args.quick else "real_models") + ("_exact_act" if args.exact_activations else "")
    out = args.out or Path("results") / default
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows: List[Row] = []
    sj_rows: List[Row] = []
    for name in tqdm(models, desc="models"):
        task = build_task(name, args.quick)
        measured = measure(task, Ts, None if args.exact_activations else args.energy_T, out, args.exact_activations)
        rows += measured
        if not args.no_recipes:
            method = "MBE (spikingjelly_mbe)" + (", exact activations (ablation)" if args.exact_activations else "")
            sj_rows += [{"model": name, "method": method, "route": "model as loaded", "T": r["T"],
                         "ann": r["ann"], "snn": r["snn"], "status": "converted", "convert_s": r["convert_s"],
                         "eval_s": r["eval_s"]} for r in measured[1:]]
            sj_rows += side_by_side(task, measured[0]["ann"], args.quick)
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
