"""Error against spikes of the operand codes: how much precision each digit code buys per spike.

    python benchmarks/code_frontier.py                          # Gaussian and Laplace values, T = 3..8
    python benchmarks/code_frontier.py --T 4 6 --codes signed ternary --out results/codes

For each digit code (:data:`~spikingjelly_mbe.ops.coding.CODES`: binary, signed and ternary digits)
and ``T``, values of unit standard deviation are coded by :class:`~spikingjelly_mbe.ops.coding.IdentityCoder`
at the range ``A`` (a multiple of the standard deviation, from ``--ranges``) that gives the least
relative RMS error, clipping against rounding as calibration's ``budget=`` trades them; beyond ``A``
values are clamped. A row gives that error and the mean spikes per value, the code's own counts (Eq. 14
charges each spike once per synapse it reaches, so at a weight layer's input the strict energy is
proportional to it). The signed digits fire the fewest spikes of any binary-weight code of the same value
(the non-adjacent form), so their line is what fewer spikes per value can give at each error. Writes
``code_frontier.md/.csv`` and ``code_frontier.png`` (error against spikes, one line per code and
distribution) to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import plots  # noqa: E402
from experiments.tables import Row, markdown, write_csv, write_text  # noqa: E402
from spikingjelly_mbe.ops.coding import CODES, IdentityCoder  # noqa: E402

def laplace(samples: int, generator: torch.Generator) -> torch.Tensor:
    """Laplace values of scale ``1 / sqrt(2)`` (unit standard deviation), by the inverse CDF."""
    u = torch.rand(samples, generator=generator, dtype=torch.float64) - 0.5
    return -(2.0 ** -0.5) * torch.sign(u) * torch.log1p(-2.0 * u.abs())


DISTRIBUTIONS: Dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {  # unit standard deviation each
    "gaussian": lambda samples, generator: torch.randn(samples, generator=generator, dtype=torch.float64),
    "laplace": laplace,
}


def coded(x: torch.Tensor, T: int, code: str, A: float) -> Row:
    """``x`` coded in ``T`` digits of ``code`` on ``[-A, A]``: the relative RMS error of the code's value
    and its mean spikes per value."""
    value, _ = IdentityCoder(T, A, code).encode(x, simulate=False)
    error = (value.value - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    return {"A": A, "rel_rms": float(error), "spikes": float(value.counts.float().mean())}


def best_range(x: torch.Tensor, T: int, code: str, ranges: Sequence[float]) -> Row:
    """:func:`coded` at the range (``ranges`` times ``x``'s standard deviation) with the least error."""
    scale = float(x.std())
    return min((coded(x, T, code, r * scale) for r in ranges), key=lambda row: row["rel_rms"])


def frontier(samples: int, Ts: Sequence[int], codes: Sequence[str], ranges: Sequence[float], seed: int = 0) -> List[Row]:
    """One row per distribution, code and ``T`` (:func:`best_range`)."""
    generator = torch.Generator().manual_seed(seed)
    rows: List[Row] = []
    for name, sample in DISTRIBUTIONS.items():
        x = sample(samples, generator)
        for code in tqdm(codes, desc=f"{name}: codes"):
            for T in Ts:
                row = best_range(x, T, code, ranges)
                rows.append({"distribution": name, "code": code, "T": T, "A_over_std": round(row["A"] / float(x.std()), 3),
                             "rel_rms": round(row["rel_rms"], 5), "spikes": round(row["spikes"], 4)})
    return rows


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[3, 4, 5, 6, 8])
    ap.add_argument("--codes", nargs="+", choices=tuple(CODES), default=list(CODES))
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--ranges", type=float, nargs="+", default=[1.5 + 0.25 * i for i in range(31)],
                    help="the ranges A tried, in standard deviations of the values")
    ap.add_argument("--out", type=Path, default=Path("results") / "codes")
    args = ap.parse_args(argv)
    rows = frontier(args.samples, args.T, args.codes, args.ranges)
    stem = args.out / "code_frontier"
    table = markdown(rows, tuple(rows[0]))
    write_text(stem.with_suffix(".md"), table)
    write_csv(rows, stem.with_suffix(".csv"))
    plots.lines(rows, "spikes", [("rel_rms", "relative RMS error", True)],
                lambda r: f"{r['distribution']}, {r['code']}", stem.with_suffix(".png"),
                "each code at T = " + ", ".join(map(str, args.T)) + ": error against spikes per value",
                discrete_x=False)
    print(table)
    return stem


if __name__ == "__main__":
    main()
