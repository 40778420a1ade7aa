"""Vector norms of activations of order 1, 2 and inf, and |x|, as spiking sites: |x| = 2 relu(x) - x on
one rectifier neuron (exact up to its input code), the 1-norm its sum, the inf-norm the spiking
top-1 of |x|; against torch on the same inputs."""

import math

import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("quiet_clamp_warnings")


class Norms(nn.Module):
    def __init__(self, order, dim, keepdim, call):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 12), nn.Linear(12, 3)
        self.order, self.dim, self.keepdim, self.call = order, dim, keepdim, call

    def forward(self, x):
        h = self.fc(x).view(-1, 3, 4)
        if self.call == "linalg":
            n = torch.linalg.vector_norm(h, ord=self.order, dim=self.dim, keepdim=self.keepdim)
        else:
            n = torch.norm(h, p=self.order, dim=self.dim, keepdim=self.keepdim)
        return self.out(h.flatten(1).abs()) + (n.reshape(h.shape[0], -1).sum(-1, keepdim=True) if n.dim() else n)


def batches(seed, n=2):
    return [torch.randn(32, 6, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]


@pytest.mark.parametrize("order, dim, keepdim, call", [(1, -1, False, "linalg"), (math.inf, -1, True, "linalg"),
                                                       (math.inf, (1, 2), False, "norm"), (1, None, False, "norm"),
                                                       (2, 1, False, "norm")])
def test_vector_norms_and_abs_convert_strictly_and_match_torch(order, dim, keepdim, call):
    torch.manual_seed(0)
    ann = Norms(order, dim, keepdim, call).eval()
    snn = convert(ann, batches(1), T=16)
    report = snn.spiking_report
    assert report.fully_spiking and not report.fallback
    notes = {e.source: e.target for e in report.replaced}
    assert notes.get("abs") == "PiecewiseLinear" and notes.get("linalg_vector_norm" if call == "linalg" else "norm") == "VectorNorm"
    x = batches(7, 1)[0]
    with torch.no_grad():
        ref, out = ann(x), snn(x)
        h = ann.fc(x)
        coded = (snn.fc(x) - h).abs().max()  # the weight layer's own input code error
    assert 0 < coded < 0.05
    # each output sums `terms` coded values (12 |h| of a row, all 384 for dim=None; three or one maxima)
    terms = 3 if order == math.inf else 12 if dim is not None else h.numel()
    torch.testing.assert_close(out, ref, rtol=0, atol=float(2 * coded * terms))


def test_abs_entry_is_twice_a_rectifier_minus_the_input():
    from spikingjelly_mbe.activations import ACTIVATIONS
    x = torch.linspace(-3, 3, 601)
    knots, c0, c1 = ACTIVATIONS["abs"].knots()
    assert (knots, c0, c1) == ([(0.0, 2.0)], 0.0, -1.0)
    assert torch.equal(c0 + c1 * x + 2 * torch.relu(x), x.abs())
