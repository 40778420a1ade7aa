"""Fit the remainder neurons of the range-reduced functions (package data in ``ops/fits``).

``python -m spikingjelly_mbe.ops.build_fits [--targets exp2,reciprocal,rsqrt] [--split-bits 3]
[--N 4] [--T 8 10 12 16] [--jobs 1]`` fits an MBE neuron to each target on its remainder interval
(:meth:`SplitTarget.remainder_domain`) with seed 0 and the default budget, and writes
``<target>-split<b>-mbe-N<N>-T<T>.json``.
"""
from __future__ import annotations

import argparse
import itertools
from concurrent.futures import ProcessPoolExecutor
from typing import Tuple

import torch

from ..fitting import fit_neuron
from .split import SPLIT_TARGETS, fit_path


def fit_one(job: Tuple[str, int, int, int]) -> str:
    target, split_bits, N, T = job
    torch.set_num_threads(1)
    domain = SPLIT_TARGETS[target].remainder_domain(split_bits)
    fitted = fit_neuron(target, kind="mbe", N=N, T=T, domain=domain, seed=0)
    path = fitted.save(fit_path(target, split_bits, N, T))
    return f"{path.name}: domain={domain} max_abs={fitted.errors['max_abs']:.3e} mse={fitted.errors['mse']:.3e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(SPLIT_TARGETS))
    ap.add_argument("--split-bits", type=int, nargs="+", default=[3])
    ap.add_argument("--N", type=int, nargs="+", default=[4])
    ap.add_argument("--T", type=int, nargs="+", default=[8, 10, 12, 16])
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(SPLIT_TARGETS))
    if unknown or any(b < 1 for b in args.split_bits):
        raise SystemExit(f"targets must be among {sorted(SPLIT_TARGETS)} (got unknown {unknown}) and "
                         "split bits >= 1 (split 0 uses the shipped library)")
    jobs = list(itertools.product(targets, args.split_bits, args.N, args.T))
    with ProcessPoolExecutor(args.jobs) as pool:
        for line in pool.map(fit_one, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
