"""Low-T numerics of the spiking operators against independent references (issue 30): each test
checks an operator's fast-mode output where a systematic error (a bias, not the rounding its own code
bounds) was found, and fails on the code before the fix."""
import pytest
import torch

from spikingjelly_mbe.ops import SpikingSoftmax
from spikingjelly_mbe.ops.coding import CODES


@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("T", [3, 4, 6, 8])
def test_softmax_rows_sum_to_one_when_most_entries_are_far_below_the_maximum(T, code):
    """Rows of 197 logits of SD 2 (a ViT's attention): most probabilities lie far below the row's
    largest. Coded on the grid of the maximum, every ``e`` below half a step read 0, so the rows summed
    to 0.76 / 0.86 / 0.96 / 0.992 on average at T = 3 / 4 / 6 / 8; each ``e`` coded at its own exponent
    keeps ``T`` significant digits and the rows sum to 1 within the codes' rounding (measured 0.998,
    1.0005, 1.0004, 0.9999). Bound: ``2^-T``, below every shortfall before."""
    x = 2.0 * torch.randn(256, 197, generator=torch.Generator().manual_seed(0))
    y, expected = SpikingSoftmax(T=T, code=code)(x), torch.softmax(x, -1)
    assert abs(float(y.sum(-1).mean()) - 1.0) < 2.0 ** -T
    # and the probabilities keep their scale: least-squares slope of y on softmax(x) (0.996 at T=4 before too:
    # the large entries were right, the many small ones 0)
    slope = float((y * expected).sum() / (expected * expected).sum())
    assert abs(slope - 1.0) < 2.0 ** -T
    relative = (y / expected)[expected > 1e-3]  # the small probabilities: mean 0.46 at T=4 before
    assert abs(float(relative.mean()) - 1.0) < 2.0 ** -(T - 1)
