"""Neurons: step modes, SpingJelly interop, exact binary quantisation, state handling, bad input."""
import logging
import math

import pytest
import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.neuron import FewSpikeNode, FewSpikeTable

from spikingjelly_mbe import FSNode, MBENode
from spikingjelly_mbe.fitting import load_fitted
from spikingjelly_mbe.fitting.routine import _layout
from spikingjelly_mbe.fitting.targets import get_target


def random_mbe(seed: int, N: int = 3, T: int = 8, **kw) -> MBENode:
    g = torch.Generator().manual_seed(seed)
    taus = [0.5 + 3 * torch.rand(N, generator=g) for _ in range(3)]
    return MBENode(*taus, weight=torch.randn(N, generator=g), T=T, alpha=1.5,
                   gain=torch.randn(N, generator=g), offset=torch.randn(N, generator=g), bias=0.3, **kw)


def reference_mbe(node: MBENode, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 4-8 written out with Python loops over bases and steps."""
    out = torch.full_like(x, float(node.bias))
    for n in range(node.N):
        u = node.gain[n] * x + node.offset[n]
        o = torch.zeros_like(x)
        for t in range(node.T):
            vth, r, d = (node.alpha * math.exp(-t * node.dt / float(node.tau[k, n])) for k in range(3))
            s = (u >= vth).to(x.dtype)
            u = u - r * s
            o = o + d * s
        out = out + node.weight[n] * o
    return out


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("seed", range(3))
def test_mbe_matches_written_out_equations(seed, float64_default):
    node = random_mbe(seed)
    x = torch.randn(257, dtype=torch.float64) * 3
    torch.testing.assert_close(node(x), reference_mbe(node, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_step_modes_agree(seed):
    node = random_mbe(seed)
    x = torch.randn(4, 5) * 2
    single = node(x)
    functional.set_step_mode(node, "m")
    parts = torch.randn(node.T, 4, 5)
    parts[-1] += x - parts.sum(0)  # a sequence whose time-sum is x
    seq = node(parts)
    assert seq.shape == (node.T, 4, 5)
    torch.testing.assert_close(seq.sum(0), single, rtol=1e-5, atol=1e-5)


def test_fs_matches_spikingjelly_few_spike_node():
    g = torch.Generator().manual_seed(0)
    T = 10
    table = FewSpikeTable(torch.rand(T, generator=g) * 2, torch.rand(T, generator=g) * 2,
                          torch.randn(T, generator=g))
    ours, theirs = FSNode.from_table(table), FewSpikeNode(table)
    x = torch.randn(1000, generator=g) * 3
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    functional.set_step_mode(ours, "m")
    functional.set_step_mode(theirs, "m")
    x_seq = torch.randn(T, 50, generator=g)
    torch.testing.assert_close(ours(x_seq), theirs(x_seq), rtol=0, atol=1e-6)
    back = ours.to_table()
    for a, b in ((back.theta, table.theta), (back.h, table.h), (back.d, table.d)):
        torch.testing.assert_close(a, b)


def test_fs_with_offset_has_no_table():
    with pytest.raises(ValueError, match="offset"):
        FSNode([1.0], [1.0], [1.0], offset=0.5).to_table()


@pytest.mark.parametrize("T", [8, 16])
def test_binary_initialisation_is_exact_uniform_quantisation(T):
    """The fitting routine's starting point quantises identity on [0, 1) with step 2^-T."""
    layout = _layout("mbe", get_target("identity"), 1, T, 1.0, True)
    theta = torch.as_tensor(layout.initial_point(), dtype=torch.float64)[None]
    g = torch.Generator().manual_seed(T)
    cells = torch.arange(2 ** T, dtype=torch.float64)[torch.randint(0, 2 ** T, (4000,), generator=g)]
    x = (cells + torch.rand(4000, generator=g, dtype=torch.float64)) / 2 ** T  # anywhere in each cell
    o = layout.features(theta, x)[0, :, 0]  # o_0[T] with alpha = max|f| = 1: twice the quantised x
    torch.testing.assert_close(o / 2, torch.floor(x * 2 ** T) / 2 ** T, rtol=0, atol=1e-12)


def test_spike_counts_and_reset_net():
    node = random_mbe(1)
    x = torch.randn(100)
    spikes = node.spikes(x)
    assert spikes.shape == (node.T, 100, node.N)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert node.last_spike_count == int(spikes.sum()) and node.last_num_inputs == 100
    node(x)
    assert node.spike_count == 2 * int(spikes.sum())
    torch.testing.assert_close(node.decode(spikes).sum(0), node(x))
    functional.reset_net(node)
    assert node.spike_count == 0 and node.num_inputs == 0


def test_state_dict_and_dtype_round_trip():
    a, b = random_mbe(2), random_mbe(3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(64)
    torch.testing.assert_close(a(x), b(x))
    assert a.to(torch.float64)(x.double()).dtype == torch.float64


def test_bad_input_raises_clear_errors():
    node = random_mbe(0)
    with pytest.raises(ValueError, match="NaN/Inf"):
        node(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        node(torch.tensor([float("inf")]))
    with pytest.raises(TypeError, match="floating point"):
        node(torch.tensor([1, 2]))
    functional.set_step_mode(node, "m")
    with pytest.raises(ValueError, match=r"\[T=8"):
        node(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one entry per basis"):
        MBENode([1.0, 1.0], [1.0], [1.0], weight=[1.0], T=4)


def test_out_of_domain_inputs_are_clamped_and_counted(caplog):
    node = random_mbe(0, domain=(-1.0, 1.0))
    x = torch.tensor([-5.0, -0.5, 0.0, 0.5, 7.0])
    with caplog.at_level(logging.WARNING):
        y = node(x)
    assert node.clamp_count == 2
    assert "clamped 2 of 5" in caplog.text
    torch.testing.assert_close(y, node(x.clamp(-1, 1)))


def test_no_decay_keeps_parameters_constant():
    node = MBENode([1.0], [1.0], [1.0], weight=[1.0], T=6, alpha=0.25, decay=False)
    assert torch.all(node.vth == 0.25) and torch.all(node.intensity == 0.25)
    # a rate-coded IF neuron: output = alpha * min(T, floor(x / alpha)) for x >= 0
    x = torch.tensor([0.0, 0.3, 0.74, 1.0, 5.0])
    torch.testing.assert_close(node(x), 0.25 * torch.clamp(torch.floor(x / 0.25), max=6))


def test_scaled_node_serves_other_ranges():
    node = random_mbe(4)
    big = node.scaled(in_scale=8.0, out_scale=3.0)
    x = torch.randn(50) * 8
    torch.testing.assert_close(big(x), 3.0 * node(x / 8.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mbe", "fs"])
def test_fitted_nodes_train_in_a_multi_step_network_with_the_targets_gradient(kind):
    """The straight-through gradient of the fitted target by default: the network's gradients are
    those of the same network with the node replaced by ``f(sum_t x[t]) / T`` at every step."""
    from spikingjelly.activation_based import layer
    from spikingjelly_mbe.fitting import TARGETS
    fit = load_fitted("gelu", kind)
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(8, 16), fit.node(), layer.Linear(16, 4))
    functional.set_step_mode(net, "m")
    x = torch.randn(fit.T, 3, 8, requires_grad=True)
    net(x).square().sum().backward()
    spiking = [p.grad.clone() for p in (net[0].weight, net[2].weight)] + [x.grad.clone()]
    with torch.no_grad():
        y_spiking = net[1](net[0](x))
    net.zero_grad()
    x.grad = None
    h = net[0](x).sum(0)
    y = (TARGETS["gelu"].fn(h) / fit.T).expand(fit.T, *h.shape)
    y = y + (y_spiking - y).detach()  # the spiking forward, the target's gradient
    net[2](y).square().sum().backward()
    for got, want in zip(spiking, [net[0].weight.grad, net[2].weight.grad, x.grad]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert spiking[0].abs().sum() > 0


def test_a_node_without_a_surrogate_still_refuses_an_input_that_requires_grad():
    node = load_fitted("gelu").node(surrogate_function=None)
    node.surrogate_function = None
    with pytest.raises(ValueError, match="surrogate_function="):
        node(torch.randn(3, requires_grad=True))
    custom = load_fitted("gelu").node(surrogate_function=torch.sin)
    x = torch.randn(5, requires_grad=True)
    custom(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.cos(x.detach()))
    with pytest.raises(ValueError, match="backend must be one of"):
        load_fitted("gelu").node(backend="cupy")
