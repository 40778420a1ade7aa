"""Accuracy and CPU speed of the spiking operators against the float PyTorch ops they replace.

    python benchmarks/ops_bench.py                      # error table (T = 8, 10, 12, 16) and speed
    python benchmarks/ops_bench.py --part errors --T 16 --split-bits 0 3
    python benchmarks/ops_bench.py --part speed --repeats 9
    python benchmarks/ops_bench.py --part speed --clock cpu  # thread CPU time: steadier on a busy machine
    python benchmarks/ops_bench.py --device cuda        # operators and inputs on the GPU

Errors (fast mode, which equals simulate mode to float tolerance; tests/test_ops_*.py check that):
products: max |err| / (A1 A2) with A the calibrated max |operand|; softmax: max |err|; norms:
max |err| / max |reference| (the output scale). Inputs: random, and realistic ones: attention
logits with outlier query/key dimensions (spread of tens) and a causal mask, LayerNorm inputs
with outlier channels. ``split_bits=0`` is the paper's form (one MBE neuron on the whole domain);
it needs the shipped library fits (exp2, reciprocal, rsqrt).

Speed: single thread, batch 8, seq 128, dim 384 (6 heads of 64); the minimum over repeats of
each op, float and spiking timed alternately in the same run, reported as ratios to the float op:
fast mode (the fused kernels: C on the CPU, Triton on CUDA), its PyTorch path
(``kernels.disabled()``) and simulate mode. ``--device`` (``auto``: CUDA when present, ``cpu``,
``cuda``) is where operators and inputs live. Tables (md, csv) and plots (``errors.png``,
``speed.png``) go to ``--out`` (``results/ops``).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from experiments import plots  # noqa: E402
from experiments.evaluation import resolve_device  # noqa: E402
from experiments.tables import Row, columns, markdown, write_csv  # noqa: E402
from spikingjelly_mbe import kernels  # noqa: E402
from spikingjelly_mbe.ops import (SpikingActivation, SpikingLayerNorm, SpikingMatmul,  # noqa: E402
                                  SpikingProduct, SpikingRMSNorm, SpikingSoftmax)

BATCH, SEQ, DIM, HEADS = 8, 128, 384, 6


def outlier_dims(g: torch.Generator, *shape: int, dims: Tuple[int, ...] = (3, 17), gain: float = 8.0) -> torch.Tensor:
    x = torch.randn(*shape, generator=g)
    x[..., list(dims)] *= gain
    return x


def attention_logits(g: torch.Generator, batch: int, causal: bool) -> torch.Tensor:
    d = DIM // HEADS
    q, k = outlier_dims(g, batch, HEADS, SEQ, d), outlier_dims(g, batch, HEADS, SEQ, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(~torch.ones(SEQ, SEQ, dtype=torch.bool).tril(), float("-inf"))
    return scores


def layernorm_input(g: torch.Generator, outliers: bool) -> torch.Tensor:
    h = torch.randn(BATCH, SEQ, DIM, generator=g)
    if outliers:
        h[..., [5, 77, 300]] = h[..., [5, 77, 300]] * 40 + 25
    return h


def calibrated(op, a: torch.Tensor, b: torch.Tensor):
    op.to(a.device)(a, b)
    op.finish_calibration()
    return op


def product_error(op, a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor) -> float:
    A1, A2 = op.ranges
    return float((op(a, b) - reference).abs().max()) / (A1 * A2)


def norm_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.abs().max())


def product_cases(T: int, g: torch.Generator, device: torch.device) -> Dict[str, Callable[[], float]]:
    """Products and matmuls, ranges calibrated by max |operand| (Eq. 9)."""
    a, b = torch.rand(BATCH, SEQ, DIM, generator=g) * 4 - 2, torch.rand(BATCH, SEQ, DIM, generator=g) * 6 - 3
    gate, up = F.silu(outlier_dims(g, BATCH, SEQ, DIM) * 2), outlier_dims(g, BATCH, SEQ, DIM)
    q, k = outlier_dims(g, 2, HEADS, SEQ, DIM // HEADS), outlier_dims(g, 2, HEADS, DIM // HEADS, SEQ)
    a, b, gate, up, q, k = (x.to(device) for x in (a, b, gate, up, q, k))
    return {
        "product, uniform": lambda: product_error(calibrated(SpikingProduct(T), a, b), a, b, a * b),
        "product, SwiGLU gate x up": lambda: product_error(calibrated(SpikingProduct(T), gate, up), gate, up, gate * up),
        "matmul, q k^T with outlier dims": lambda: product_error(calibrated(SpikingMatmul(T), q, k), q, k, q @ k),
    }


def split_cases(T: int, split_bits: int, g: torch.Generator, device: torch.device) -> Dict[str, Callable[[], float]]:
    """Softmax and the norms, whose neurons are range-reduced by ``split_bits``."""
    cases: Dict[str, Callable[[], float]] = {}
    for name, x in (("softmax, N(0, 3^2)", torch.randn(2, HEADS, SEQ, SEQ, generator=g) * 3),
                    ("softmax, attention logits", attention_logits(g, 2, causal=False)),
                    ("softmax, causal attention logits", attention_logits(g, 2, causal=True))):
        cases[name] = lambda x=x.to(device): float((SpikingSoftmax(T=T, split_bits=split_bits).to(device)(x)
                                                    - torch.softmax(x, -1).nan_to_num(0.0)).abs().max())
    ln, rms = torch.nn.LayerNorm(DIM), torch.nn.RMSNorm(DIM, eps=1e-6)
    with torch.no_grad():
        for p in (ln.weight, ln.bias, rms.weight):
            p.normal_(generator=g)
    ln, rms = ln.to(device), rms.to(device)
    for outliers in (False, True):
        h = layernorm_input(g, outliers).to(device)
        label = "outlier channels" if outliers else "N(0, 1)"
        cases[f"layernorm, {label}"] = lambda h=h: norm_error(
            SpikingLayerNorm.from_float(ln, T=T, split_bits=split_bits).to(device)(h), ln(h))
        cases[f"rmsnorm, {label}"] = lambda h=h: norm_error(
            SpikingRMSNorm.from_float(rms, T=T, split_bits=split_bits).to(device)(h), rms(h))
    return cases


def error_table(Ts: List[int], splits: List[int], device: torch.device) -> List[Row]:
    """Max errors of every case at every ``T`` (``error`` None where a fit does not ship); prints the table."""
    print("\n## Errors (fast mode; products: / (A1 A2), softmax: absolute, norms: / max |ref|)\n")
    rows: List[Row] = []
    with torch.no_grad():
        for T in tqdm(Ts, desc="errors: T"):
            for name, measure in product_cases(T, torch.Generator().manual_seed(0), device).items():
                rows.append({"operator": name, "split_bits": "-", "T": T, "error": measure()})
            for b in splits:
                for name, measure in split_cases(T, b, torch.Generator().manual_seed(0), device).items():
                    try:
                        error: Optional[float] = measure()
                    except KeyError:  # a fit that does not ship, e.g. split 0 before the library is built
                        error = None
                    rows.append({"operator": name, "split_bits": str(b), "T": T, "error": error})
    print("| operator, input | split_bits | " + " | ".join(f"T={T}" for T in Ts) + " |")
    print("|---|---|" + "---|" * len(Ts))
    table: Dict[Tuple[str, str], Dict[int, Optional[float]]] = {}
    for row in rows:
        table.setdefault((row["operator"], row["split_bits"]), {})[row["T"]] = row["error"]
    for (name, split), values in table.items():
        cells = ("no fit" if values.get(T) is None else f"{values[T]:.2e}" for T in Ts)
        print(f"| {name} | {split} | " + " | ".join(cells) + " |")
    return rows


CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def fastest(fn: Callable[[], object], repeats: int, device: torch.device, clock: str = "wall") -> float:
    """The shortest of ``repeats`` calls of ``fn`` after one warm-up (each waited for on a CUDA device),
    on ``clock``: ``wall`` time, or this thread's ``cpu`` time (what other processes' load changes least)."""
    now = CLOCKS[clock]

    def timed() -> float:
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - start

    timed()
    return min(timed() for _ in range(repeats))


def speed_table(T: int, repeats: int, simulate_repeats: int, device: torch.device, clock: str = "wall") -> List[Row]:
    g = torch.Generator().manual_seed(0)
    d = DIM // HEADS
    hidden = torch.randn(BATCH, SEQ, DIM, generator=g)
    q, k = torch.randn(BATCH, HEADS, SEQ, d, generator=g), torch.randn(BATCH, HEADS, d, SEQ, generator=g)
    logits = torch.randn(BATCH, HEADS, SEQ, SEQ, generator=g) * 3
    probs, v = torch.softmax(logits, -1), torch.randn(BATCH, HEADS, SEQ, d, generator=g)
    ln, rms = torch.nn.LayerNorm(DIM).to(device), torch.nn.RMSNorm(DIM, eps=1e-6).to(device)
    mlp = torch.randn(BATCH, SEQ, 4 * DIM, generator=g) * 2
    hidden, q, k, logits, probs, v, mlp = (x.to(device) for x in (hidden, q, k, logits, probs, v, mlp))

    def gelu() -> Optional[SpikingActivation]:
        try:
            return SpikingActivation.gelu(T=T)
        except KeyError:
            return None

    cases = [
        ("matmul q k^T [8,6,128,64]@[8,6,64,128]", torch.matmul, SpikingMatmul(T, ranges=(5.0, 5.0)), (q, k)),
        ("matmul p v [8,6,128,128]@[8,6,128,64]", torch.matmul, SpikingMatmul(T, ranges=(1.0, 5.0)), (probs, v)),
        ("softmax [8,6,128,128]", lambda x: torch.softmax(x, -1), SpikingSoftmax(T=T), (logits,)),
        ("layernorm [8,128,384]", ln, SpikingLayerNorm.from_float(ln, T=T), (hidden,)),
        ("rmsnorm [8,128,384]", rms, SpikingRMSNorm.from_float(rms, T=T), (hidden,)),
        ("product [8,128,384]", torch.mul, SpikingProduct(T, ranges=(5.0, 5.0)), (hidden, hidden)),
        ("gelu [8,128,1536]", F.gelu, gelu(), (mlp,)),
    ]
    rows: List[Row] = []
    lines = []
    with torch.no_grad():
        for name, float_op, spiking, inputs in tqdm(cases, desc="speed"):
            if spiking is None:
                lines.append(f"| {name} | n/a: no shipped fit | | | | | |")
                continue
            spiking.to(device).mode = "fast"
            t_float = fastest(lambda: float_op(*inputs), repeats, device, clock)
            t_fast = fastest(lambda: spiking(*inputs), repeats, device, clock)
            with kernels.disabled():
                t_eager = fastest(lambda: spiking(*inputs), repeats, device, clock)
            t_float = min(t_float, fastest(lambda: float_op(*inputs), repeats, device, clock))  # re-time: load drifts
            spiking.mode = "simulate"
            t_sim = fastest(lambda: spiking(*inputs), simulate_repeats, device, clock)
            lines.append(f"| {name} | {t_float * 1e3:.2f} | {t_fast * 1e3:.2f} | {t_fast / t_float:.1f}x | "
                         f"{t_eager / t_float:.1f}x | {t_sim * 1e3:.0f} | {t_sim / t_float:.0f}x |")
            for path, seconds in (("fast (kernels)", t_fast), ("fast (PyTorch path)", t_eager), ("simulate", t_sim)):
                rows.append({"operator": name.split(" [")[0], "path": path, "ms": seconds * 1e3,
                             "ratio": seconds / t_float, "float_ms": t_float * 1e3})
    where = f"CPU, {torch.get_num_threads()} thread(s)" if device.type == "cpu" else str(device)
    print(f"\n## Speed, {where}, T={T}, {clock} clock: ratio to the float op\n")
    print("| operator | float ms | fast ms | fast / float | PyTorch fast path / float | simulate ms | simulate / float |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return rows


def error_plot(rows: List[Row], path: Path) -> None:
    """Error vs T: products, then Softmax and the norms by ``split_bits``; the issue's 1e-3 bar dashed."""
    groups = [("products and matmuls", "-")] + [(f"Softmax and norms, split_bits={b}", b)
                                               for b in sorted({r["split_bits"] for r in rows} - {"-"})]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.6), sharey=True, squeeze=False)
    for ax, (title, split) in zip(axes[0], groups):
        for name in sorted({r["operator"] for r in rows if r["split_bits"] == split}):
            points = sorted((r["T"], r["error"]) for r in rows if r["split_bits"] == split and r["operator"] == name)
            ax.plot(*zip(*points), "o-", label=name)
        ax.axhline(1e-3, color="k", ls="--", lw=1, label="bar at T=16 (1e-3)")
        ax.set(yscale="log", xlabel="T", title=title, xticks=sorted({r["T"] for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("max error (products / A1 A2, norms / max |ref|)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(error_rows: List[Row], speed_rows: List[Row], out: Path) -> None:
    """Tables (md, csv) and plots (PNG) of both parts under ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    if error_rows:
        measured = [r for r in error_rows if r["error"] is not None]
        (out / "errors.md").write_text(markdown(error_rows, columns(error_rows)))
        write_csv(error_rows, out / "errors.csv")
        error_plot(measured, out / "errors.png")
    if speed_rows:
        (out / "speed.md").write_text(markdown(speed_rows, columns(speed_rows)))
        write_csv(speed_rows, out / "speed.csv")
        plots.bars(speed_rows, "operator", lambda r: r["path"], "ratio", out / "speed.png",
                   f"time / float op, CPU, {torch.get_num_threads()} thread(s)", log=True)
    print(f"\ntables and plots: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "errors", "speed"], default="all")
    ap.add_argument("--T", type=int, nargs="+", default=[8, 10, 12, 16])
    ap.add_argument("--split-bits", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--simulate-repeats", type=int, default=1)
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall time, or this thread's CPU time (on the CPU: what other processes' load changes least)")
    ap.add_argument("--out", type=Path, default=Path("results/ops"), help="tables and plots go here")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where operators and inputs live (auto: CUDA when present)")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        ap.error(str(err))
    if args.clock == "cpu" and device.type == "cuda":
        ap.error("--clock cpu times the host thread, not the GPU: pass --clock wall with --device cuda")
    torch.set_num_threads(1)
    error_rows = error_table(args.T, args.split_bits, device) if args.part in ("all", "errors") else []
    speed_rows = (speed_table(16 if 16 in args.T else args.T[-1], args.repeats, args.simulate_repeats, device,
                              args.clock)
                  if args.part in ("all", "speed") else [])
    save(error_rows, speed_rows, args.out)


if __name__ == "__main__":
    main()
