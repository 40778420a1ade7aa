"""Fit-quality benchmark for the foundation (paper Fig. 6(a), 6(c) and the GELU bars).

``python benchmarks/fit_table.py [--out fit_table.md]`` prints, from the shipped library, the MSE
and max |error| of every registered target for MBE (N=4) and FS at each T; re-fits GELU on the
paper's protocol and on [-8, 8] with timing and a determinism check; and re-measures the decay
ablation (MBE with/without decay for N in {1, 2, 4, 8}, GELU, T=16).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from spikingjelly_mbe import fit_neuron, load_fitted
from spikingjelly_mbe.fitting import TARGETS
from spikingjelly_mbe.fitting.build_library import LIBRARY_N, LIBRARY_T


def library_table() -> list[str]:
    head = "| target | domain | " + " | ".join(f"T={T} MBE-4 mse / max | T={T} FS mse / max" for T in LIBRARY_T) + " |"
    rows = [head, "|" + "---|" * (2 + 2 * len(LIBRARY_T))]
    for name, target in TARGETS.items():
        cells = []
        for T in LIBRARY_T:
            for kind in ("mbe", "fs"):
                e = load_fitted(name, kind, N=4, T=T).errors
                cells.append(f"{e['mse']:.2e} / {e['max_abs']:.2e}")
        rows.append(f"| {name} | {target.domain} | " + " | ".join(cells) + " |")
    return rows


def basis_table() -> list[str]:
    rows = ["| target | " + " | ".join(f"N={N} mse" for N in LIBRARY_N) + " | FS mse |", "|---|" + "---|" * (len(LIBRARY_N) + 1)]
    for name in TARGETS:
        cells = [f"{load_fitted(name, 'mbe', N=N, T=16).errors['mse']:.2e}" for N in LIBRARY_N]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {load_fitted(name, 'fs', T=16).errors['mse']:.2e} |")
    return rows


def gelu_bars() -> list[str]:
    rows = ["| GELU fit (N=4, T=16, M=10,000) | MSE | max abs | seconds | same seed, same params |", "|---|---|---|---|---|"]
    for domain, bar in (((-120.0, 10.0), 1e-4), ((-8.0, 8.0), 3e-4)):
        start = time.perf_counter()
        first = fit_neuron("gelu", N=4, T=16, domain=domain, seed=0)
        seconds = time.perf_counter() - start
        same = fit_neuron("gelu", N=4, T=16, domain=domain, seed=0).params == first.params
        rows.append(f"| {domain} (bar {bar:g}) | {first.errors['mse']:.2e} | {first.errors['max_abs']:.2e} | {seconds:.1f} | {same} |")
    return rows


def decay_ablation() -> list[str]:
    rows = ["| N | MSE with decay | MSE without decay | ratio |", "|---|---|---|---|"]
    for N in LIBRARY_N:
        with_decay = load_fitted("gelu", "mbe", N=N, T=16).errors["mse"]
        without = fit_neuron("gelu", N=N, T=16, decay=False, seed=0).errors["mse"]
        rows.append(f"| {N} | {with_decay:.2e} | {without:.2e} | {without / with_decay:.0f}x |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sections = [("Shipped library: MBE (N=4) vs FS, same fitting budget", library_table),
                ("Shipped library at T=16: MSE vs number of bases", basis_table),
                ("GELU bars, fitted now", gelu_bars),
                ("Fig. 6(c): decay ablation on GELU (-16, 16), T=16", decay_ablation)]
    parts = []
    for title, make in sections:
        parts.append(f"### {title}\n\n" + "\n".join(make()) + "\n")
        print(parts[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
