"""Regenerate the shipped library of fitted neurons (package data, the one home of fitted parameters).

``python -m spikingjelly_mbe.fitting.build_library [--jobs 2] [--only gelu,exp2] [--T 16] [--N 8] [--kinds mbe]``
fits every registered target for T in {8, 10, 12, 16}: every registered kind (MBE with N in
{1, 2, 4, 8}, FS), with the default budget, and writes ``<key>.json`` (:func:`fit_key`) into the library.
The residuals of the rectified activations (:data:`~.targets.RECTIFIED`) only drive MBE neurons
with conversion's basis counts (:data:`RESIDUAL_N`), so only those ship.

``--split-bits 3 --only exp2,reciprocal,rsqrt --N 4 --kinds mbe`` fits the remainder neurons of the
range-reduced functions of Softmax and the norms instead (each on its remainder interval,
:meth:`~spikingjelly_mbe.fitting.targets.SplitTarget.remainder_domain`; ``exp2-split3-mbe-N4-T16.json``).

Seeds: 0, except for the 8-basis activation neurons that conversion uses by default
(:data:`BEST_OF_SEEDS`, from each activation's ``library_seeds``): their fit MSE varies across
seeds, so they keep the lowest-MSE fit of the first ``library_seeds`` seeds. The choice uses only the fit's own
objective on the target function, no model or data.
"""
from __future__ import annotations

import argparse
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Tuple

import torch
from tqdm.auto import tqdm

from ..activations import fitted_activations
from .fitted import fit_key
from .kinds import KINDS
from .library import LIBRARY_DIR, remainder_domain
from .routine import fit_neuron
from .targets import RECTIFIED, SPLIT_TARGETS, TARGETS

LIBRARY_T = (8, 10, 12, 16)
LIBRARY_N = (1, 2, 4, 8)
RESIDUAL_N = (4, 8)  # a rectified activation's residual: OpSettings' N and activation_N defaults


BEST_OF_SEEDS = {(a.name, "mbe", 8): a.library_seeds for a in fitted_activations() if a.library_seeds > 1}


def _fit_one(job: Tuple[str, str, int, int, int, str]) -> str:
    target, kind, N, T, split_bits, out = job
    torch.set_num_threads(1)
    domain = remainder_domain(target, split_bits)
    fits = [fit_neuron(target, kind=kind, N=N, T=T, domain=domain, seed=seed)
            for seed in range(BEST_OF_SEEDS.get((target, kind, N), 1))]
    fitted = min(fits, key=lambda f: f.errors["mse"])
    key = fit_key(target, kind, N, T, split_bits)
    fitted.save(Path(out) / f"{key}.json")
    return (f"{key}: seed {fitted.fit['seed']} of {len(fits)}, domain={fitted.domain}, "
            f"mse={fitted.errors['mse']:.3e} max_abs={fitted.errors['max_abs']:.3e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--T", type=int, nargs="*", default=list(LIBRARY_T))
    ap.add_argument("--N", type=int, nargs="*", default=list(LIBRARY_N), help="MBE basis counts")
    ap.add_argument("--kinds", nargs="*", choices=sorted(KINDS), default=list(KINDS))
    ap.add_argument("--split-bits", type=int, nargs="*", default=[0],
                    help="0: each target's own domain; b >= 1: the remainder fits of exp2, reciprocal, rsqrt")
    ap.add_argument("--out", default=str(LIBRARY_DIR))
    args = ap.parse_args()
    targets = [t for t in args.only.split(",") if t] or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; registered: {sorted(TARGETS)}")
    not_split = sorted(set(targets) - set(SPLIT_TARGETS))
    if any(b < 0 for b in args.split_bits) or (any(args.split_bits) and not_split):
        raise SystemExit(f"--split-bits must be >= 0, and >= 1 only with --only among {sorted(SPLIT_TARGETS)} "
                         f"(got {args.split_bits} for {not_split})")
    kinds = sorted({(k, KINDS[k].bases(n)) for k in args.kinds for n in args.N})
    # most bases first so the pool stays busy
    residuals = set(RECTIFIED.values())
    jobs = sorted(((t, k, n, T, b, args.out) for t, (k, n), T, b in
                   itertools.product(targets, kinds, args.T, args.split_bits)
                   if t not in residuals or (k == "mbe" and n in RESIDUAL_N)), key=lambda j: -j[2])
    with ProcessPoolExecutor(args.jobs) as pool:
        for line in tqdm(pool.map(_fit_one, jobs), total=len(jobs), desc="library"):
            tqdm.write(line)


if __name__ == "__main__":
    main()
