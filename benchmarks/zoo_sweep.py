"""Every zoo family converted under each setting: does the conversion hold at low T and with the options?

  python benchmarks/zoo_sweep.py                         # every family at T=4 and T=3 (2 CPU cores: ~1 min)
  python benchmarks/zoo_sweep.py --settings "T=6 energy_budget=0.2 energy_by='ranges'" "T=4 code='ternary'" \
      --families llama_lm levit --out results/zoo

A setting is ``convert``'s keyword arguments, space-separated ``key=value`` with the values read as Python
literals (``T={'default': 4, 'softmax': 6}``). Each family of :data:`~spikingjelly_mbe.conversion.zoo.ZOO`
(tiny random configs: speed and generality, not accuracy) is converted on two calibration batches of 4 and
run beside its ANN on a third: a row per family and setting gives whether it converted (else the error's
first line), whether it is fully spike-driven (``spiking_report.fully_spiking``), the worst per-sample cosine
of the outputs and the argmax agreement (:func:`~spikingjelly_mbe.conversion.zoo.agreement`), and the seconds
the conversion took. Writes ``zoo_sweep.md/.csv`` and ``zoo_sweep.png`` (``1 - cosine`` per family and setting,
blank where it did not convert) to ``--out``. This sweep found LeViT refused below T=8 (docs/generality.md).
"""
from __future__ import annotations

import argparse
import ast
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import plots  # noqa: E402
from experiments.tables import Row, markdown, write_csv, write_text  # noqa: E402
from spikingjelly_mbe import convert  # noqa: E402
from spikingjelly_mbe.conversion.calibration import run_batch  # noqa: E402
from spikingjelly_mbe.conversion.zoo import ZOO, agreement, build, main_output, make_batch  # noqa: E402

COLUMNS = ("family", "setting", "converted", "fully_spiking", "cosine", "argmax", "convert_s", "error")


def parse_setting(text: str) -> Dict[str, Any]:
    """``"T=6 energy_by='ranges'"`` as ``{'T': 6, 'energy_by': 'ranges'}``; the error names the bad item."""
    options: Dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--settings: {item!r} in {text!r} is not key=value (e.g. T=4 or energy_by='ranges')")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"--settings: the value of {key} in {text!r} must be a Python literal, got {value!r} "
                             "(quote strings: energy_by='ranges')") from None
    return options


def run(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The model's main output tensor on ``batch`` (:func:`~spikingjelly_mbe.conversion.calibration.run_batch`),
    without gradients."""
    with torch.no_grad():
        return main_output(run_batch(model, batch))


def converted_rows(family: str, settings: Sequence[str]) -> List[Row]:
    """``family`` converted with each of ``settings`` (:func:`parse_setting`) and compared with its ANN (built,
    with its batches and its output on the held-out one, once)."""
    ann = build(family)
    calibration, held_out = [make_batch(family, 4, seed=s) for s in (1, 2)], make_batch(family, 4, seed=9)
    reference = run(ann, held_out).float()
    return [converted_row(family, setting, ann, calibration, held_out, reference) for setting in settings]


def converted_row(family: str, setting: str, ann: torch.nn.Module, calibration: List[Any], held_out: Any,
                  reference: torch.Tensor) -> Row:
    """``ann`` converted with ``setting`` on ``calibration`` and its output on ``held_out`` compared with the
    ANN's ``reference``."""
    began = time.perf_counter()
    try:
        snn = convert(ann, calibration, **parse_setting(setting))
    except Exception as error:  # the row records why it did not convert
        return {"family": family, "setting": setting, "converted": False, "fully_spiking": False,
                "cosine": math.nan, "argmax": math.nan, "convert_s": round(time.perf_counter() - began, 2),
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    seconds = time.perf_counter() - began
    found = agreement(reference, run(snn, held_out).float())
    return {"family": family, "setting": setting, "converted": True, "fully_spiking": snn.spiking_report.fully_spiking,
            "cosine": round(found["cosine"], 5), "argmax": round(found["argmax"], 4), "convert_s": round(seconds, 2),
            "error": ""}


def sweep(families: Sequence[str], settings: Sequence[str]) -> List[Row]:
    """:func:`converted_rows` of every family: a row per family and setting."""
    for setting in settings:
        parse_setting(setting)  # a bad setting fails before any conversion
    return [row for family in tqdm(families, desc="zoo families") for row in converted_rows(family, settings)]


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["T=4", "T=3"])
    ap.add_argument("--families", nargs="+", choices=tuple(ZOO), default=list(ZOO))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results") / "zoo")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = sweep(args.families, args.settings)
    stem = args.out / "zoo_sweep"
    table = markdown(rows, COLUMNS)
    write_text(stem.with_suffix(".md"), table)
    write_csv(rows, stem.with_suffix(".csv"))
    by_cell = {(r["family"], r["setting"]): 1.0 - r["cosine"] for r in rows}
    plots.heatmap([[by_cell[(f, s)] for s in args.settings] for f in args.families], args.families, args.settings,
                  stem.with_suffix(".png"), "1 - worst cosine to the ANN (blank: refused)",
                  "1 - cosine (log10)", "setting")
    print(table)
    failed = [r for r in rows if not r["converted"] or not r["fully_spiking"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} converted fully spike-driven" +
          "".join(f"\n  {r['family']} [{r['setting']}]: {r['error'] or 'not fully spike-driven'}" for r in failed))
    return stem


if __name__ == "__main__":
    main()
