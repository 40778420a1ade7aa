"""benchmarks/code_frontier.py: each code's error and spikes per value against closed forms (uniform
values: the rounding error of a grid of step ``A / L``; the fewest nonzero digits of each level, found by
enumerating every digit vector), and the signed digits' spikes never above the binary ones'."""
import itertools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from code_frontier import coded, frontier  # noqa: E402

DIGITS = {"binary": (2, (0, 1)), "signed": (2, (-1, 0, 1)), "ternary": (3, (-1, 0, 1))}


def fewest_digits(code: str, T: int) -> dict:
    """Each nonnegative level's fewest nonzero digits over every ``T``-digit vector of the code."""
    base, values = DIGITS[code]
    fewest: dict = {}
    for digits in itertools.product(values, repeat=T):
        level = sum(d * base ** k for k, d in enumerate(digits))
        if level >= 0:
            fewest[level] = min(fewest.get(level, T + 1), sum(d != 0 for d in digits))
    return fewest


@pytest.mark.parametrize("code,T", [("binary", 4), ("signed", 3), ("signed", 4), ("signed", 6), ("ternary", 3)])
def test_uniform_values_meet_the_closed_forms(code, T):
    x = torch.linspace(-1.0, 1.0, 400_001, dtype=torch.float64)
    row = coded(x, T, code, 1.0)
    weight = fewest_digits(code, T)
    L = max(weight)  # the top level: 2^T - 1, or (3^T - 1) / 2
    # |x| L rounds to the nearest level: the error is uniform within half a step, RMS step / sqrt(12), and
    # x's RMS is 1 / sqrt(3)
    assert row["rel_rms"] == pytest.approx(1.0 / (2 * L), rel=2e-3)
    # the end levels 0 and L take half a step of |x| each, the others a whole one
    expected = (sum(weight[q] for q in range(1, L)) + (weight[0] + weight[L]) / 2) / L
    assert row["spikes"] == pytest.approx(expected, rel=2e-3)


def test_signed_digits_fire_fewer_spikes_than_binary_for_the_same_values():
    rows = frontier(20_000, [3, 4, 6], ["binary", "signed"], [2.0, 3.0, 4.0])
    by = {(r["distribution"], r["code"], r["T"]): r for r in rows}
    for (distribution, code, T), row in by.items():
        if code == "signed":
            binary = by[(distribution, "binary", T)]
            assert row["rel_rms"] == binary["rel_rms"]  # the same values, so the same range and error
            assert row["spikes"] <= binary["spikes"]
            if T >= 4:
                assert row["spikes"] < binary["spikes"]
