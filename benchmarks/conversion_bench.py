"""Conversion benchmark (CPU, one thread).

  python benchmarks/conversion_bench.py --part table   # ANN/SNN agreement vs T on small random-init models
  python benchmarks/conversion_bench.py --part speed   # 6-layer 384-wide encoder, 256 x 128 tokens, fast mode

``speed`` times the ANN's evaluation, then conversion (with calibration) plus evaluation of the
SNN, and prints the SNN/ANN time ratio (target <= 3x).
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

from spikingjelly_mbe.conversion import convert
from spikingjelly_mbe.mbe import OpSettings
from spikingjelly_mbe.ops.base import SpikingOp
from spikingjelly_mbe.conversion.zoo import FAMILIES, agreement, build, main_output, make_batch


def evaluate(model: torch.nn.Module, batches: list) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([main_output(model(**b) if isinstance(b, dict) else model(b)) for b in batches])


def table(samples: int) -> None:
    print(f"{'family':8}{'T':>4}{'min cosine':>14}{'argmax agree':>14}{'convert s':>11}")
    for family in FAMILIES:
        ann = build(family)
        calib = [make_batch(family, 8, seed=100 + s) for s in range(2)]
        batch = [make_batch(family, samples, seed=1)]
        reference = evaluate(ann, batch)
        for T in (8, 10, 12, 16):
            start = time.perf_counter()
            snn = convert(ann, T=T, calib_data=calib)
            seconds = time.perf_counter() - start
            r = agreement(reference, evaluate(snn, batch))
            print(f"{family:8}{T:>4}{r['cosine']:>14.6f}{r['argmax']:>14.4f}{seconds:>11.2f}")


def operator_seconds(model: torch.nn.Module, batch: dict) -> dict:
    """Seconds spent in each spiking operator class during one forward."""
    spent: collections.Counter = collections.Counter()
    started: dict = {}
    handles = []
    for m in model.modules():
        if isinstance(m, SpikingOp):
            handles.append(m.register_forward_pre_hook(lambda mod, a: started.__setitem__(mod, time.perf_counter())))
            handles.append(m.register_forward_hook(
                lambda mod, a, o: spent.update({type(mod).__name__: time.perf_counter() - started[mod]})))
    start = time.perf_counter()
    evaluate(model, [batch])
    spent["total forward"] = time.perf_counter() - start
    for h in handles:
        h.remove()
    return dict(spent)


def speed(sequences: int, length: int, batch_size: int) -> None:
    ann = build("bert", layers=6, hidden=384, heads=6)
    data = [make_batch("bert", batch_size, seq_len=length, seed=s) for s in range(sequences // batch_size)]
    evaluate(ann, data[:1])  # warm-up
    start = time.perf_counter()
    reference = evaluate(ann, data)
    t_ann = time.perf_counter() - start
    start = time.perf_counter()
    snn = convert(ann, calib_data=data[:2], mode="fast")
    t_convert = time.perf_counter() - start
    start = time.perf_counter()
    out = evaluate(snn, data)
    t_snn = time.perf_counter() - start
    r = agreement(reference, out)
    settings = OpSettings()
    print(f"encoder 6x384, {sequences} sequences x {length} tokens, batch {batch_size}, T={settings.T}, "
          f"N={settings.N} (activations {settings.activation_N}), fast mode, {torch.get_num_threads()} thread(s)")
    print(f"ANN eval {t_ann:.2f}s | SNN convert+calibrate {t_convert:.2f}s + eval {t_snn:.2f}s")
    print(f"SNN/ANN time ratio: eval only {t_snn / t_ann:.2f}x, convert+eval {(t_convert + t_snn) / t_ann:.2f}x")
    print(f"agreement: min cosine {r['cosine']:.6f}, argmax {r['argmax']:.4f}")
    print("one batch, seconds by operator:", {k: round(v, 2) for k, v in operator_seconds(snn, data[0]).items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("table", "speed", "all"), default="all")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part in ("table", "all"):
        table(args.samples)
    if args.part in ("speed", "all"):
        speed(args.sequences, args.length, args.batch_size)


if __name__ == "__main__":
    main()
