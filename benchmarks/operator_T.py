"""Which operator type costs the loss at a low T: a real model converted at ``--high`` T, with the
operators of one type at a time taken from its ``--low`` T conversion (same calibration batches).

  python benchmarks/operator_T.py --model smollm2 --low 8 --high 16 --quick
  python benchmarks/operator_T.py --model smollm2 --low 4 --high 8 --quick --conversion code=ternary

Each row is the SNN metric with that operator type at the low T and everything else at the high T;
the rows ``T=high`` and ``T=low`` are the two whole conversions. ``--reverse`` asks the opposite
question, which type restores the metric: the low-T model with one type at a time at the high T.
An operator is swapped in place (its state replaced by the other conversion's), so call-level sites
that hold the module see the change too.
Writes ``operator_T_<model>.md/.csv`` and a bar plot ``operator_T_<model>.png`` to ``--out``.
``--low-conversion`` adds overrides for the low conversion alone, so the donor can be a conversion at an
energy (``--low 8 --low-conversion energy_budget=0.15 energy_by=ranges``: which operator type loses the
metric at T=4's energy). Also writes the low-T conversion's own per-site errors on its calibration
batches (``spiking_report.site_errors``) by operator type (``operator_T_<model>_sites.md``) and by type and layer (``..._layers.png``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_models import CONF_MODELS, job_config  # noqa: E402
from experiments import plots  # noqa: E402
from experiments.site_breakdown import by_layer, by_type  # noqa: E402
from experiments.convert import build_task  # noqa: E402
from experiments.evaluation import Conversion, convert_for, evaluate, with_low_T  # noqa: E402
from experiments.tables import Row, markdown, write_csv  # noqa: E402
from spikingjelly_mbe.ops.base import SpikingOp  # noqa: E402


SITE_COLUMNS = ("operator", "sites", "median_error", "worst_error", "worst_site")


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(CONF_MODELS), required=True)
    ap.add_argument("--low", type=int, default=8)
    ap.add_argument("--high", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="the model's small held-out subset")
    ap.add_argument("--reverse", action="store_true", help="the low-T model with one type at a time at the high T")
    ap.add_argument("--out", type=Path, default=Path("results") / "operator_T")
    ap.add_argument("--conversion", nargs="*", default=(), metavar="KEY=VALUE",
                    help="overrides of the conversion group for both conversions, e.g. code=ternary")
    ap.add_argument("--low-conversion", nargs="*", default=(), metavar="KEY=VALUE",
                    help="overrides for the low conversion alone, e.g. energy_budget=0.15 energy_by=ranges")
    args = ap.parse_args(argv)
    if args.low == args.high:
        ap.error(f"--low and --high must differ (both {args.low}): each names one of the two conversions")
    args.out.mkdir(parents=True, exist_ok=True)
    c = job_config(args.model, args.quick, args.conversion)
    task = build_task(c)
    settings = {args.high: c.conversion, args.low: job_config(args.model, args.quick,
                                                              [*args.conversion, *args.low_conversion]).conversion}
    models = {T: convert_for(task, "mbe", T, k.N, k.activation_N, **k.operator_options()).snn
              for T, k in settings.items()}
    kinds = sorted({type(m).__name__ for m in models[args.low].modules() if isinstance(m, SpikingOp)})
    base, donor = (args.low, args.high) if args.reverse else (args.high, args.low)
    candidates = [(f"T={T}", models[T]) for T in (args.high, args.low)]
    candidates += [(kind, with_low_T(models[base], models[donor], kind)) for kind in kinds]
    rows: List[Row] = []
    for name, model in tqdm(candidates, desc=f"{args.model}: operator types"):
        row = evaluate(task, Conversion(model, base, name, 0.0, metered=False)).row()
        rows.append({"model": args.model, ("at_high_T" if args.reverse else "at_low_T"): name, "metric": task.metric,
                     **{key: None if row[key] is None else round(row[key], 4)
                        for key in ("ann", "snn", "loss", "loss_lo", "loss_hi")}})
        tqdm.write(markdown(rows[-1:], tuple(rows[-1])).splitlines()[-1])
    sites = models[args.low].spiking_report.site_errors
    site_stem = args.out / f"operator_T_{args.model}_T{args.low}"
    types = markdown(by_type(sites), SITE_COLUMNS)
    (site_stem.parent / f"{site_stem.name}_sites.md").write_text(types)
    kinds, layers, matrix = by_layer(sites)
    plots.heatmap(matrix, kinds, layers, site_stem.parent / f"{site_stem.name}_layers.png",
                  f"{args.model} at T={args.low}: each site's own error, median per type and layer")
    print(types)
    stem = args.out / f"operator_T_{args.model}{'_reverse' if args.reverse else ''}"
    (stem.with_suffix(".md")).write_text(markdown(rows, tuple(rows[0])))
    write_csv(rows, stem.with_suffix(".csv"))
    plots.bars(rows, "at_high_T" if args.reverse else "at_low_T",
               lambda r: f"{args.model}: T={base}, one type at T={donor}", "loss", stem.with_suffix(".png"),
               f"{args.model}: {task.metric} loss, one operator type at T={donor}", log=False)
    print(markdown(rows, tuple(rows[0])))
    return stem


if __name__ == "__main__":
    main()
