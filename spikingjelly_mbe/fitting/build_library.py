"""Regenerate the shipped library of fitted neurons (package data, the one home of fitted parameters).

``python -m spikingjelly_mbe.fitting.build_library [--jobs 2] [--only gelu,exp2] [--T 16] [--N 8] [--kinds mbe]``
fits every registered target for T in {8, 10, 12, 16}: every registered kind (MBE with N in
{1, 2, 4, 8}, FS), with the default budget, and writes ``<key>.json`` (:func:`fit_key`) into the library.
The residuals of the rectified activations (:data:`~.targets.RECTIFIED`) only drive MBE neurons
with conversion's basis counts (:data:`RESIDUAL_N`), so only those ship.

``--split-bits 3 --only exp2,reciprocal,rsqrt --N 4 --kinds mbe`` fits the remainder neurons of the
range-reduced functions of Softmax and the norms instead (each on its remainder interval,
:meth:`~spikingjelly_mbe.fitting.targets.SplitTarget.remainder_domain`; ``exp2-split3-mbe-N4-T16.json``).

``--low-T`` fits, for T in :data:`LOW_T`, exactly the neurons a default conversion loads
(:func:`low_t_jobs`): the rectified activations' residuals and tanh with ``ACTIVATION_N`` bases and the
remainder neurons of Softmax and the norms with ``N=4`` and the default ``split_bits`` of that T, with
the spike-aware objective (:data:`LOW_T_SPIKE_TOLERANCE`, ``fit_neuron(spike_tolerance=...)``).

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
from typing import List, Tuple

import torch
from tqdm.auto import tqdm

from ..activations import fitted_activations
from .fitted import fit_key
from .kinds import KINDS
from .library import LIBRARY_DIR, remainder_domain
from ..neurons.multibasis import ACTIVATION_N, DEFAULT_N
from .routine import fit_neuron
from .targets import RECTIFIED, SPLIT_TARGETS, TARGETS, default_split_bits

LIBRARY_T = (8, 10, 12, 16)
LIBRARY_N = (1, 2, 4, 8)
RESIDUAL_N = (DEFAULT_N, ACTIVATION_N)  # a rectified activation's residual: OpSettings' N and activation_N defaults
LOW_T = (3, 4, 5, 6)  # shipped for the neurons of a default conversion alone (low_t_jobs)
SHIPPED_T = tuple(sorted(LIBRARY_T + LOW_T))  # the digit counts a default conversion finds fitted neurons for
LOW_T_WHOLE = ("tanh",)  # activations the real models' default conversions fit whole (MiniLM's pooler)
LOW_T_SPIKE_TOLERANCE = 0.05  # the low-T fits' spike-aware objective: up to 5 % more search MSE for fewer spikes
Job = Tuple[str, str, int, int, int, str, float]  # target, kind, N, T, split_bits, out folder, spike tolerance


BEST_OF_SEEDS = {(a.name, "mbe", 8): a.library_seeds for a in fitted_activations() if a.library_seeds > 1}


def low_t_jobs(out: str) -> List[Job]:
    """For every T in :data:`LOW_T`: each rectified activation's residual and each of
    :data:`LOW_T_WHOLE` on ``ACTIVATION_N`` bases, and each range-reduced function's remainder neuron
    on ``DEFAULT_N`` bases at the default split."""
    return [*((target, "mbe", ACTIVATION_N, T, 0, out, LOW_T_SPIKE_TOLERANCE)
              for T in LOW_T for target in (*RECTIFIED.values(), *LOW_T_WHOLE)),
            *((target, "mbe", DEFAULT_N, T, default_split_bits(T), out, LOW_T_SPIKE_TOLERANCE)
              for T in LOW_T for target in SPLIT_TARGETS)]


def _fit_one(job: Job) -> str:
    target, kind, N, T, split_bits, out, spike_tolerance = job
    torch.set_num_threads(1)
    domain = remainder_domain(target, split_bits)
    fits = [fit_neuron(target, kind=kind, N=N, T=T, domain=domain, seed=seed, spike_tolerance=spike_tolerance)
            for seed in range(BEST_OF_SEEDS.get((target, kind, N), 1))]
    fitted = min(fits, key=lambda f: f.errors["mse"])
    key = fit_key(target, kind, N, T, split_bits)
    fitted.save(Path(out) / f"{key}.json")
    return (f"{key}: seed {fitted.fit['seed']} of {len(fits)}, domain={fitted.domain}, "
            f"mse={fitted.errors['mse']:.3e} max_abs={fitted.errors['max_abs']:.3e} "
            f"spikes/input={fitted.errors['spikes_per_input']:.3f}")


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
    ap.add_argument("--low-T", action="store_true", help=f"the default conversion's neurons at T in {LOW_T} "
                    "(spike-aware; every other option is ignored but --jobs and --out)")
    args = ap.parse_args()
    if args.low_T:
        run(low_t_jobs(args.out), args.jobs)
        return
    targets = [t for t in args.only.split(",") if t] or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; registered: {sorted(TARGETS)}")
    not_split = sorted(set(targets) - set(SPLIT_TARGETS))
    if any(b < 0 for b in args.split_bits) or (any(args.split_bits) and not_split):
        raise SystemExit(f"--split-bits must be >= 0, and >= 1 only with --only among {sorted(SPLIT_TARGETS)} "
                         f"(got {args.split_bits} for {not_split})")
    kinds = sorted({(k, KINDS[k].bases(n)) for k in args.kinds for n in args.N})
    residuals = set(RECTIFIED.values())
    run([(t, k, n, T, b, args.out, 0.0) for t, (k, n), T, b in itertools.product(targets, kinds, args.T, args.split_bits)
         if t not in residuals or (k == "mbe" and n in RESIDUAL_N)], args.jobs)


def run(jobs: List[Job], workers: int) -> None:
    """Fit ``jobs`` on ``workers`` processes, most bases first so the pool stays busy."""
    jobs = sorted(jobs, key=lambda j: -j[2])
    with ProcessPoolExecutor(workers) as pool:
        for line in tqdm(pool.map(_fit_one, jobs), total=len(jobs), desc="library"):
            tqdm.write(line)


if __name__ == "__main__":
    main()
