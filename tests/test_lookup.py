"""The fast path of activations: the interval table reproduces the step-by-step simulation exactly."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingjelly_mbe import MBENode, load_fitted
from spikingjelly_mbe.neurons.lookup import NeuronTable, from_order_key, neuron_table, order_key

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def probes(table: NeuronTable, n: int, seed: int) -> torch.Tensor:
    """Random inputs, every breakpoint, the float just below each, and both domain ends."""
    g = torch.Generator().manual_seed(seed)
    uniform = (torch.rand(n, generator=g, dtype=torch.float64) * (table.hi - table.lo) + table.lo).to(table.dtype)
    below = from_order_key(order_key(table.edges) - 1, table.dtype).clamp(table.lo, table.hi)
    ends = torch.tensor([table.lo, table.hi], dtype=table.dtype)
    return torch.cat([uniform, table.edges, below, ends])


def assert_table_is_simulation(node, domain, dtype, seed=0):
    table = NeuronTable(node, domain, dtype)
    x = probes(table, 20_000, seed)
    _, value, count = node.simulate(x, keep_spikes=False)
    looked_up, looked_up_count = table(x.view(-1, 2) if len(x) % 2 == 0 else x)
    assert torch.equal(looked_up_count.flatten(), count.to(dtype))  # spike counts: exactly
    # values: the same spike patterns; only the N-term weighted sum may round differently by batch shape
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(looked_up.flatten(), value, rtol=4 * eps, atol=16 * eps * float(value.abs().max()))
    # the kernels search only unsettled buckets: a settled bucket's inputs all lie in its first candidate
    bucket = (x - table.lo).mul_(table.scale).floor_().to(torch.int32).clamp_(0, len(table.first) - 1)
    settled = table.settled[bucket]
    assert torch.equal(table.index(x)[settled], table.first[bucket][settled])
    return table


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), N=st.integers(1, 4), T=st.integers(1, 10), alpha=st.floats(0.2, 4.0),
       dtype=st.sampled_from(sorted(DTYPES)), width=st.floats(0.5, 20.0))
def test_table_equals_simulation_for_random_neurons(seed, N, T, alpha, dtype, width):
    g = torch.Generator().manual_seed(seed)
    taus = [0.3 + 4 * torch.rand(N, generator=g) for _ in range(3)]
    gain = torch.randn(N, generator=g) * 5
    gain[0] = 0.0 if seed % 7 == 0 else gain[0]  # a basis that never changes
    node = MBENode(*taus, weight=torch.randn(N, generator=g), T=T, alpha=alpha, gain=gain,
                   offset=torch.randn(N, generator=g) * 3, bias=0.25)
    lo = float(torch.randn(1, generator=g)) * 3 + (1000.0 if seed % 5 == 0 else 0.0)  # far from 0: coarse ulps
    node.offset -= gain * (lo - float(torch.randn(1, generator=g)))  # keep the bases active on the domain
    assert_table_is_simulation(node, (lo, lo + width), DTYPES[dtype], seed)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_table_of_the_shipped_gelu_is_exact(dtype):
    fitted = load_fitted("gelu", "mbe", 8, 16)
    table = assert_table_is_simulation(fitted.node(clamp=False), fitted.domain, DTYPES[dtype])
    assert len(table.edges) > 1000  # a real search: thousands of patterns over the domain
    assert bool(table.settled.any()) and not bool(table.settled.all())  # the search skips some buckets, not all
    assert table.edges[0] == fitted.domain[0] and bool((table.edges[1:] > table.edges[:-1]).all())


def test_tables_are_shared_by_identical_neurons():
    fitted = load_fitted("silu", "mbe", 8, 16)
    a = neuron_table(fitted.node(), fitted.domain, torch.float32, torch.device("cpu"))
    b = neuron_table(fitted.node(), fitted.domain, torch.float32, torch.device("cpu"))
    assert a is b


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_order_key_orders_floats_and_inverts(dtype):
    dt = DTYPES[dtype]
    x = torch.cat([torch.randn(5000, dtype=dt) * 10, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0e30], dtype=dt)])
    x = torch.sort(x).values
    keys = order_key(x)
    assert bool((keys[1:] >= keys[:-1]).all())
    same = x[1:] == x[:-1]
    assert torch.equal(keys[1:] == keys[:-1], same)
    assert torch.equal(from_order_key(keys, dt), x + 0.0)  # -0.0 comes back as +0.0
