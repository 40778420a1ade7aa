"""SpikingSoftmax on rows whose maximum is (nearly) tied: a score one ulp below or above the maximum
gives the digits of an exact tie in every mode (Eq. 13's fraction rounding up to 1 carries into the
exponent), so simulate, the eager fast path and the C kernel agree on repeated tokens."""
import importlib.util
import math
import os

import pytest
import torch

from spikingjelly_mbe.kernels import backend
from spikingjelly_mbe.ops import SpikingSoftmax
from spikingjelly_mbe.ops.coding import CODES

BASE_2_CODES = [name for name, c in CODES.items() if c.base == 2]  # ternary: test_ternary_code.py

torch.set_num_threads(1)
NEG_INF = float("-inf")
# the Triton kernel on CPU tensors in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
FAST = ("torch", "c") + (("triton",) if os.environ.get("TRITON_INTERPRET") == "1"
                         and importlib.util.find_spec("triton") is not None else ())


def tied_rows(dtype: torch.dtype) -> torch.Tensor:
    """Per base row: the row with entries 2 and 5 exactly tied at the maximum, entry 5 one ulp below it,
    one ulp above it; then a fully masked row and masked rows whose only finite entries (nearly) tie.
    The other entries sit at ``(x - max) log2(e) = -(n + j 2^-16)``, ``j`` odd: mid-step of the
    fraction's code at T=16 and far from every rounding boundary at T=4 and 8, so moving the maximum by
    one ulp (a few hundredths of a T=16 step) cannot move their digits."""
    g = torch.Generator().manual_seed(5)
    whole = torch.randint(0, 6, (3, 12), generator=g, dtype=torch.float64)
    odd = 2 * torch.randint(0, 2 ** 15, (3, 12), generator=g, dtype=torch.float64) + 1
    top = torch.tensor([4.3, -2.7, 7.9], dtype=torch.float64)
    base = (top[:, None] - (whole + odd * 2.0 ** -16) * math.log(2.0)).to(dtype)
    top = top.to(dtype)
    rows = []
    for row, m in zip(base, top):
        for nudge in (None, NEG_INF, float("inf")):
            r = row.clone()
            r[2] = m
            r[5] = m if nudge is None else torch.nextafter(m, torch.tensor(nudge, dtype=dtype))
            rows.append(r)
    masked = torch.full((4, 12), NEG_INF, dtype=dtype)
    masked[1:, 3] = masked[1:, 8] = 0.75
    masked[2, 8] = torch.nextafter(torch.tensor(0.75, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    masked[3, 8] = torch.nextafter(torch.tensor(0.75, dtype=dtype), torch.tensor(1.0, dtype=dtype))
    return torch.cat([torch.stack(rows), masked])


def forward(T: int, code: str, mode: str, x: torch.Tensor):
    op = SpikingSoftmax(T=T, mode=mode, code=code)
    return op(x), op.op_stats()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("code", BASE_2_CODES)
@pytest.mark.parametrize("T", [4, 8, 16])
def test_a_maximum_tied_within_one_ulp_gives_the_digits_of_an_exact_tie_in_every_mode(T, code, dtype):
    x = tied_rows(dtype)
    simulated, simulated_stats = forward(T, code, "simulate", x)
    outputs = {"simulate": simulated}
    for name in FAST:  # the C and Triton kernels take float32; float64 runs the eager path under every name
        with backend.use(name):
            outputs[name], stats = forward(T, code, "fast", x)
        assert stats == simulated_stats, name
    assert all(torch.equal(outputs["torch"], outputs[name]) for name in FAST)
    # the same digits: a flipped digit moves an output by at least 2^-16 of it
    tolerance = {torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(outputs["torch"], simulated, rtol=tolerance, atol=tolerance * 1e-3)
    for name, out in outputs.items():
        for first in range(0, 9, 3):  # exact tie, one ulp below, one ulp above: the same probabilities
            assert torch.equal(out[first + 1], out[first]), (name, first)
            assert torch.equal(out[first + 2], out[first]), (name, first)
            assert out[first, 2] == out[first, 5]
        assert torch.equal(out[9], torch.zeros_like(out[9]))  # fully masked: zeros
        assert torch.equal(out[11], out[10]) and torch.equal(out[12], out[10])
        assert out[10, 3] == out[10, 8] and out[10].count_nonzero() == 2
