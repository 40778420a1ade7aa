"""CONTRIBUTING.md's walkthroughs, performed: each registers a new thing in a temporary registry (the
one table its kind has) and converts or runs a model with it, against the float computation."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spikingjelly_mbe import convert
from spikingjelly_mbe.activations import ACTIVATIONS, Activation, arg
from spikingjelly_mbe.conversion import METHODS, sites
from spikingjelly_mbe.fitting import FittedNeuron, fit_neuron
from spikingjelly_mbe.fitting.kinds import KINDS, FSKind
from spikingjelly_mbe.neurons import FSNode
from spikingjelly_mbe.ops import SpikingActivation
from spikingjelly_mbe.ops.base import DEFAULT_MODE, DEFAULT_T
from spikingjelly_mbe.ops.rectifier import SpikingReLU

torch.set_num_threads(1)
LAMBDA = 0.5


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), 0))


def test_adding_an_activation_is_one_entry_of_the_activation_table(monkeypatch):
    """Softshrink = (x + l) - relu(x + l) + relu(x - l): an entry with its exact rectifier form,
    module class and call; the module and the functional call both convert, fully spike-driven."""
    entry = Activation("softshrink", lambda x, lambd=LAMBDA: F.softshrink(x, lambd),
                       "softshrink = (x + l) - relu(x + l) + relu(x - l) on rectifier neurons",
                       knots=lambda lambd=LAMBDA: ([(-lambd, -1.0), (lambd, 1.0)], lambd, 1.0),
                       classes={"torch.nn:Softshrink": lambda m: {"lambd": m.lambd}},
                       calls={"softshrink": lambda a, k: {"lambd": arg(a, k, 1, "lambd", LAMBDA)}}, fingerprint=False)
    monkeypatch.setitem(ACTIVATIONS, entry.name, entry)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(F.softshrink(self.fc1(x), LAMBDA))

    torch.manual_seed(0)
    x = torch.randn(32, 8)
    for ann in (nn.Sequential(nn.Linear(8, 16), nn.Softshrink(LAMBDA), nn.Linear(16, 4)), Functional()):
        snn = convert(ann, [x])
        report = snn.spiking_report
        assert report.fully_spiking and any(e.source in ("Softshrink", "softshrink") for e in report.replaced)
        with torch.no_grad():
            assert cosine(snn(x), ann(x)) > 0.999


class SpikingMaximum(nn.Module):
    """``max(a, b) = a + relu(b - a)`` on one rectifier neuron (the operator of the walkthrough)."""

    mbe_opaque = True

    def __init__(self, T: int = DEFAULT_T, mode: str = DEFAULT_MODE) -> None:
        super().__init__()
        self.relu = SpikingReLU(T, mode)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + self.relu(b - a)


def test_adding_an_operator_is_a_site_kind_and_its_call(monkeypatch):
    """``torch.maximum`` of two activations: a SITE_KINDS entry (how to build and call the operator)
    and the call's name in SIMPLE_SITES; the model converts strictly, with the operator at the site."""
    monkeypatch.setitem(sites.SITE_KINDS, "maximum", sites.SiteKind(
        lambda s, c: SpikingMaximum(s.T, s.mode), lambda m, c: m(sites.arg(c, 0, "input"), sites.arg(c, 1, "other")),
        "max(a, b) = a + relu(b - a) on a rectifier neuron"))
    monkeypatch.setitem(sites.SIMPLE_SITES, "maximum", "maximum")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.out(torch.maximum(self.fc1(x), self.fc2(x)))

    torch.manual_seed(0)
    ann, x = nn.Sequential(Block()), torch.randn(32, 8)
    snn = convert(ann, [x])
    assert snn.spiking_report.fully_spiking
    assert isinstance(snn[0].spiking_maximum0, SpikingMaximum)
    with torch.no_grad():
        assert cosine(snn(x), ann(x)) > 0.999


class WalkFSNode(FSNode):
    """The walkthrough's new neuron (an FS neuron under its own class)."""


class WalkFSKind(FSKind):
    """The kind ``'fs_walk'``: FS's search and parameters, built as a :class:`WalkFSNode`."""

    name, node_class = "fs_walk", WalkFSNode

    def node(self, params, N, T, domain, step_mode):
        return WalkFSNode(params["vth"], params["reset"], params["intensity"], offset=params["offset"][0],
                          bias=params["bias"], domain=domain, step_mode=step_mode)


def test_adding_a_neuron_kind_is_one_entry_of_KINDS(monkeypatch, tmp_path):
    """A registered kind is fitted, saved and loaded by name, and its neuron drives a spiking activation
    in a model, within the fit's own error of the target function."""
    kind = WalkFSKind()
    monkeypatch.setitem(KINDS, kind.name, kind)
    fitted = fit_neuron("tanh", kind=kind.name, T=8, budget=200, restarts=1, seed=0)
    fitted.save(tmp_path / "tanh.json")
    loaded = FittedNeuron.load(tmp_path / "tanh.json")
    assert loaded.kind == kind.name and isinstance(loaded.node(), WalkFSNode)
    model = nn.Sequential(nn.Linear(4, 4), SpikingActivation(loaded))
    x = torch.randn(64, 4)
    with torch.no_grad():
        error = (model(x) - torch.tanh(model[0](x))).abs().max()
    assert 0 < error <= 1.5 * fitted.errors["max_abs"]


@dataclasses.dataclass(frozen=True)
class FloatMethod:
    """A method whose every operator is the float computation (the walkthrough's new method): each site
    kind of :class:`~spikingjelly_mbe.conversion.SpikingMethod`, built from the float references."""

    T: int = DEFAULT_T
    mode: str = DEFAULT_MODE

    fully_spiking = False
    float_ops = ("every operation: the float reference",)
    linear_input_note = "the float weight layer"

    def validate(self) -> None:
        pass

    def activation(self, entry, params):
        return Float(lambda x: entry.reference(x, **params))

    def narrowed(self, entry, params, span):
        return None

    def norm(self, norm, shape, weight, bias, eps):
        return Float(lambda x: norm.reference(x, weight, bias, eps))

    def softmax(self, dim):
        return nn.Softmax(dim)

    def max_pool(self, kernel_size, stride=None, padding=0):
        return nn.MaxPool2d(kernel_size, stride, padding)

    def product(self):
        return Float(torch.mul)

    def matmul(self):
        return Float(torch.matmul)

    def linear_input(self, layer):
        return layer

    def network(self, model):
        return model


class Float(nn.Module):
    mbe_opaque = True

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_adding_a_method_is_one_registration(monkeypatch):
    """A class with the site kinds of the protocol, registered in METHODS, converts a Transformer through
    the same engine: every site built by it, the output the ANN's."""
    from spikingjelly_mbe.conversion import SpikingMethod
    from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
    assert isinstance(FloatMethod(), SpikingMethod)
    monkeypatch.setitem(METHODS, "float", FloatMethod)
    ann = build("bert")
    batch = make_batch("bert", 4, seed=1)
    snn = convert(ann, [batch], method="float", T=4)
    assert snn.ann2snn_recipe == "float_transformer" and snn.spiking_report.replaced
    assert {e.target for e in snn.spiking_report.replaced} >= {"Float", "Linear"}
    with torch.no_grad():
        torch.testing.assert_close(main_output(snn(**batch)), main_output(ann(**batch)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="method='float' does not use code"):
        convert(ann, [batch], method="float", code="binary")
