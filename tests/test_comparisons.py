"""Comparisons, extrema and clamps of activations as spiking sites: a comparison is the spike of a
rectifier neuron driven by the difference, so selecting by it routes spikes; max/min along a
dimension is the spiking top-1; max/min of two activations and clamps with activation bounds are
one rectifier each. Checked against torch wherever the margin exceeds a code step."""

import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.report import UnsupportedNonlinearityError

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("quiet_clamp_warnings")

T = 16


def layer_error(ann: nn.Module, snn: nn.Module, x: torch.Tensor) -> float:
    """The largest error of the two spike-driven weight layers' outputs (their inputs' codes): the
    margin a comparison of them needs to be decided as in float."""
    with torch.no_grad():
        return max(float((snn.get_submodule(n)(x) - ann.get_submodule(n)(x)).abs().max()) for n in ("a", "b"))


class Gated(nn.Module):
    """A hand-written leaky ReLU and three more comparisons, with a constant and an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        leaky = torch.where(a > 0.25, a, 0.1 * a)
        masked = a.masked_fill(a <= b, -1.0)
        return leaky + masked + torch.where(b >= 0, b, 0.0) + (a < b).float() * 2.0


def batches(seed: int, n: int = 2):
    return [torch.randn(64, 4, generator=torch.Generator().manual_seed(seed + i)) * 2 for i in range(n)]


def clear(model: nn.Module, x: torch.Tensor, margin: float) -> torch.Tensor:
    """Rows where every compared difference exceeds ``margin``."""
    with torch.no_grad():
        a, b = model.a(x), model.b(x)
    return (((a - 0.25).abs() > margin) & ((a - b).abs() > margin) & (b.abs() > margin)).all(-1)


def test_comparisons_convert_strictly_and_select_as_torch_where_the_margin_is_clear():
    torch.manual_seed(0)
    ann = Gated().eval()
    snn = convert(ann, batches(1), T=T)
    report = snn.spiking_report
    assert report.fully_spiking and not report.fallback
    assert sum(e.target == "Greater" for e in report.replaced) == 4
    x = batches(7, 1)[0]
    with torch.no_grad():
        ref, out = ann(x), snn(x)
    error = layer_error(ann, snn, x)
    assert 0 < error < 0.05
    rows = clear(ann, x, 2 * error)
    assert rows.sum() > 10
    torch.testing.assert_close(out[rows], ref[rows], rtol=0, atol=4 * error)  # the same selections: only the layers' error


class Extrema(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        top, where = a.max(dim=-1, keepdim=True)
        low = torch.min(b, -1)
        return (torch.maximum(a, b) + torch.min(a, b) + a.clamp(min=b) + b.clamp(max=a) + top
                + low.values[:, None] + where.float() + low.indices[:, None].float())


def test_extrema_and_activation_bounded_clamps_equal_torch_up_to_the_code_steps():
    torch.manual_seed(1)
    ann = Extrema().eval()
    snn = convert(ann, batches(3), T=T)
    assert snn.spiking_report.fully_spiking and not snn.spiking_report.fallback
    kinds = sorted(e.target for e in snn.spiking_report.replaced if e.target != "SpikingWeightInput")
    assert kinds == ["Clamp", "Clamp", "Extremum", "Extremum", "SpikingTopK", "SpikingTopK"]
    x = batches(9, 1)[0]
    with torch.no_grad():
        ref, out = ann(x), snn(x)
        a, b = ann.a(x), ann.b(x)
    sa, sb = a.sort(-1, descending=True).values, b.sort(-1).values
    error = layer_error(ann, snn, x)
    rows = (sa[:, 0] - sa[:, 1] > 2 * error) & (sb[:, 1] - sb[:, 0] > 2 * error)  # the argmax / argmin are clear
    assert rows.sum() > 20 and 0 < error < 0.05
    torch.testing.assert_close(out[rows], ref[rows], rtol=0, atol=8 * error)  # five extrema, each within the layers' error


def test_comparisons_of_activations_with_each_other_refuse_equality():
    """Equality of activations has no margin to spike on: it stays a decision in float, refused strictly
    when it selects."""
    class Equal(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            a = self.a(x)
            return torch.where(a == a.round(), a, 0.0)

    with pytest.raises(UnsupportedNonlinearityError, match="where"):
        convert(Equal().eval(), batches(5), T=8)
