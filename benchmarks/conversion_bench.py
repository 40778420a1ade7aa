"""Conversion benchmark (CPU, one thread).

  python benchmarks/conversion_bench.py --part table   # ANN/SNN agreement vs T on small random-init models
  python benchmarks/conversion_bench.py --part speed   # 6-layer 384-wide encoder, 256 x 128 tokens, fast mode
  python benchmarks/conversion_bench.py --part speed --layers 1 --hidden 32 --heads 2 --sequences 4 --length 8 --batch-size 2
  python benchmarks/conversion_bench.py --device cuda  # models, conversion, calibration and evaluation there

``speed`` times the ANN's evaluation, then conversion (with calibration) plus evaluation of the
SNN, then the ANN's evaluation again, and prints the SNN/ANN time ratios. ``--device`` is ``auto``
(CUDA when present), ``cpu`` or ``cuda``; on the CPU the benchmark runs one thread.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spikingjelly_mbe.conversion import convert
from spikingjelly_mbe.mbe import OpSettings
from spikingjelly_mbe.ops.base import SpikingOp
from spikingjelly_mbe.conversion.zoo import FAMILIES, agreement, build, main_output, make_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.evaluation import resolve_device  # noqa: E402


def on(device: torch.device, batch: Any) -> Any:
    """A batch (a tensor or a dict of them) on ``device``."""
    if isinstance(batch, dict):
        return {k: on(device, v) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def evaluate(model: torch.nn.Module, batches: list) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([main_output(model(**b) if isinstance(b, dict) else model(b)) for b in batches])


def table(samples: int, device: torch.device) -> None:
    print(f"{'family':8}{'T':>4}{'min cosine':>14}{'argmax agree':>14}{'convert s':>11}")
    for family in FAMILIES:
        ann = build(family).to(device)
        calib = [on(device, make_batch(family, 8, seed=100 + s)) for s in range(2)]
        batch = [on(device, make_batch(family, samples, seed=1))]
        reference = evaluate(ann, batch)
        for T in (8, 10, 12, 16):
            start = now(device)
            snn = convert(ann, T=T, calib_data=calib)
            seconds = now(device) - start
            r = agreement(reference, evaluate(snn, batch))
            print(f"{family:8}{T:>4}{r['cosine']:>14.6f}{r['argmax']:>14.4f}{seconds:>11.2f}")


def now(device: torch.device) -> float:
    """The clock, once ``device`` has finished what was queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def operator_seconds(model: torch.nn.Module, batch: dict, device: torch.device) -> dict:
    """Seconds spent in each spiking operator class during one forward."""
    spent: collections.Counter = collections.Counter()
    started: dict = {}
    handles = []
    for m in model.modules():
        if isinstance(m, SpikingOp):
            handles.append(m.register_forward_pre_hook(lambda mod, a: started.__setitem__(mod, now(device))))
            handles.append(m.register_forward_hook(
                lambda mod, a, o: spent.update({type(mod).__name__: now(device) - started[mod]})))
    start = now(device)
    evaluate(model, [batch])
    spent["total forward"] = now(device) - start
    for h in handles:
        h.remove()
    return dict(spent)


def speed(layers: int, hidden: int, heads: int, sequences: int, length: int, batch_size: int,
          device: torch.device) -> None:
    ann = build("bert", layers=layers, hidden=hidden, heads=heads).to(device)
    data = [on(device, make_batch("bert", batch_size, seq_len=length, seed=s)) for s in range(sequences // batch_size)]
    evaluate(ann, data[:1])  # warm-up
    start, cpu = now(device), time.process_time()
    reference = evaluate(ann, data)
    t_ann, cpu_ann = now(device) - start, time.process_time() - cpu
    start = now(device)
    snn = convert(ann, calib_data=data[:2], mode="fast")
    t_convert = now(device) - start
    start, cpu = now(device), time.process_time()
    out = evaluate(snn, data)
    t_snn, cpu_snn = now(device) - start, time.process_time() - cpu
    cpu = time.process_time()
    evaluate(ann, data)  # again, on the heap the SNN ran on (see the CPU time ratios below)
    cpu_ann_again = time.process_time() - cpu
    r = agreement(reference, out)
    settings = OpSettings()
    print(f"encoder {layers}x{hidden}, {sequences} sequences x {length} tokens, batch {batch_size}, T={settings.T}, "
          f"N={settings.N} (activations {settings.activation_N}), fast mode, on {device}"
          + (f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""))
    print(f"ANN eval {t_ann:.2f}s | SNN convert+calibrate {t_convert:.2f}s + eval {t_snn:.2f}s")
    print(f"SNN/ANN time ratio: eval only {t_snn / t_ann:.2f}x, convert+eval {(t_convert + t_snn) / t_ann:.2f}x")
    if device.type == "cpu":  # this process's CPU time: what other processes' load changes least
        print(f"SNN/ANN process CPU time ratio, eval only: {cpu_snn / cpu_ann:.2f}x "
              f"(ANN {cpu_ann:.2f}s, SNN {cpu_snn:.2f}s)")
        # the first ANN evaluation can page-fault in every batch (glibc returns the memory its batches free to
        # the OS, then takes it back), the SNN's, after conversion, does not: the ANN timed again after it
        print(f"SNN/ANN process CPU time ratio against the ANN timed again after the SNN: "
              f"{cpu_snn / cpu_ann_again:.2f}x (ANN {cpu_ann_again:.2f}s)")
    print(f"agreement: min cosine {r['cosine']:.6f}, argmax {r['argmax']:.4f}")
    print("one batch, seconds by operator:", {k: round(v, 2) for k, v in operator_seconds(snn, data[0], device).items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("table", "speed", "all"), default="all")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6, help="the speed part's encoder: layers, width and heads")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where models, conversion, calibration and evaluation run (auto: CUDA when present)")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        ap.error(str(err))
    torch.set_num_threads(1)
    if args.part in ("table", "all"):
        table(args.samples, device)
    if args.part in ("speed", "all"):
        speed(args.layers, args.hidden, args.heads, args.sequences, args.length, args.batch_size, device)


if __name__ == "__main__":
    main()
