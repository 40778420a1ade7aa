"""A forward of a converted model never waits for the device: no host synchronisation (``.item()``,
``.tolist()``, ``nonzero``, tensor truth tests) on the eager PyTorch fast path and on the Triton
kernels, the paths a GPU takes. Data-dependent counts (spikes, clamps, NaN/Inf inputs) stay device
tensors until someone reads them. On the Triton kernels a forward dispatches few operations: at most
3x the ANN's."""
import importlib.util
import logging
import os
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils._python_dispatch import TorchDispatchMode

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.conversion import set_mode
from spikingjelly_mbe.conversion.recipe import Intercepted
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.kernels import backend
from spikingjelly_mbe.ops import SpikingReLU, collect_stats
from spikingjelly_mbe.ops.base import SpikingOp, flush_checks, set_checks

TRITON = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                            reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it)")

# aten operations that copy a device value to the host (or need its data to size their output)
SYNCS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.is_nonzero.default", "aten.equal.default",
         "aten.masked_select.default", "aten.unique_consecutive.default", "aten._unique2.default",
         "aten.repeat_interleave.Tensor", "aten.item.default", "aten._assert_async.default"}


# operations that compute nothing: views, aliases, detaches (not counted as work)
VIEWS = ("aten.detach", "aten.view", "aten._unsafe_view", "aten.alias", "aten.t.", "aten.expand", "aten.unsqueeze",
         "aten.squeeze", "aten.permute", "aten.transpose", "aten.reshape", "aten.slice", "aten.select",
         "aten.as_strided")


class SyncCounter(TorchDispatchMode):
    """Counts every aten operation that synchronises with the host, by name, and the operations that
    compute (not :data:`VIEWS`); a custom op (a Triton kernel, ``sjmbe::``) is one operation: the mode
    does not see what it dispatches inside."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = {}
        self.computing = 0
        self.custom = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCS:
            self.syncs[name] = self.syncs.get(name, 0) + 1
        self.computing += not name.startswith(VIEWS)
        self.custom += func.namespace == "sjmbe"
        return func(*args, **(kwargs or {}))


def forward(model, batch):
    return model(**batch) if isinstance(batch, dict) else model(batch)


@pytest.fixture(scope="module")
def converted():
    models = {}
    for family in ("llama_lm", "bert"):
        ann = build(family, layers=1)
        models[family] = (ann, convert(ann, T=8, calib_data=[make_batch(family, 2, seed=s) for s in (1, 2)]))
    return models


@pytest.mark.parametrize("family", ["llama_lm", "bert"])
def test_a_converted_forward_on_the_torch_path_never_synchronises(family, converted):
    ann, snn = converted[family]
    x = make_batch(family, 2, seed=3)
    counter = SyncCounter()
    with kernels.disabled(), torch.no_grad():
        expected = main_output(forward(snn, x))
        with counter:
            out = main_output(forward(snn, x))
    assert counter.syncs == {}
    assert torch.equal(out, expected)  # the counted forward computed what an uncounted one does
    with torch.no_grad():
        reference = main_output(forward(ann, x))
    cosine = torch.nn.functional.cosine_similarity(out.flatten(1), reference.flatten(1))
    assert float(cosine.min()) > 0.99
    stats = collect_stats(snn)  # read after the forward: real counts
    assert sum(s.spikes for s in stats.values()) > 0


@pytest.mark.parametrize("family", ["llama_lm", "bert"])
def test_on_the_c_backend_a_converted_forward_never_synchronises(family, converted):
    """The CPU's default backend too: the query, key and value (and a gate and its up projection) share one
    input code, found by comparing their ranges and centres on the host, not with ``torch.equal``."""
    _, snn = converted[family]
    if kernels.library() is None:
        pytest.skip("no C compiler: the kernels are not built")
    x = make_batch(family, 2, seed=3)
    counter = SyncCounter()
    with backend.use("c"), torch.no_grad():
        expected = main_output(forward(snn, x))
        with counter:
            out = main_output(forward(snn, x))
    assert counter.syncs == {} and counter.computing > 0
    assert torch.equal(out, expected)


@TRITON
@pytest.mark.parametrize("family", ["llama_lm", "bert"])
def test_on_triton_a_converted_forward_never_synchronises_and_is_the_torch_path_in_few_operations(family, converted):
    """No host synchronisation, at most 3x the ANN's operations; bit for bit and with the same statistics as the eager path (itself the step-by-step simulation
    up to float32 rounding: one spike may flip), each Triton kernel one operation."""
    ann, snn = converted[family]
    x = make_batch(family, 2, seed=3)
    float_ops = SyncCounter()
    with torch.no_grad(), float_ops:
        forward(ann, x)
    results = {}
    for name, mode in (("torch", "fast"), ("triton", "fast"), ("torch", "simulate")):
        functional.reset_net(set_mode(snn, mode))
        counter = SyncCounter()
        with backend.use(name), torch.no_grad(), counter:
            out = main_output(forward(snn, x))
        results[name, mode] = out, collect_stats(snn), counter
    set_mode(snn, "fast")
    (eager, eager_stats, _), (fused, fused_stats, counted) = results["torch", "fast"], results["triton", "fast"]
    assert torch.equal(fused, eager) and fused_stats == eager_stats
    simulated, simulated_stats, _ = results["torch", "simulate"]
    torch.testing.assert_close(simulated, fused, rtol=1e-5, atol=1e-5 * float(fused.abs().max()))
    spikes = [sum(s.spikes for s in stats.values()) for stats in (simulated_stats, fused_stats)]
    assert abs(spikes[0] - spikes[1]) <= 1e-3 * spikes[0]
    assert counted.custom > 0 and counted.syncs == {}
    assert float_ops.computing > 10 and counted.computing <= 3 * float_ops.computing, (counted.computing,
                                                                                        float_ops.computing)


def test_a_bias_corrected_weight_layer_never_synchronises():
    from spikingjelly_mbe.conversion.calibration import Calibration, calibrate
    from spikingjelly_mbe.ops import SpikingWeightInput
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 5, 8, generator=g).square() for _ in range(2)]
    op = SpikingWeightInput(torch.nn.Linear(8, 4), T=4, bias_correction=True)
    calibrate(op, Calibration(data=batches))
    set_checks(op, "deferred")
    assert op.rounding_bias is not None
    with kernels.disabled(), torch.no_grad():
        op(batches[0])
        counter = SyncCounter()
        with counter:
            op(batches[1])
    assert counter.syncs == {}


def test_the_counter_sees_a_synchronisation():
    counter = SyncCounter()
    with counter:
        float(torch.ones(3).sum())
        bool((torch.ones(2) > 0).any())
    assert counter.syncs == {"aten._local_scalar_dense.default": 2}


def test_deferred_checks_report_nan_and_clamps_when_read(caplog):
    """Under deferred checks (what conversion sets) a NaN input does not stop the forward; the next
    flush raises naming the input and the count. Clamps warn there too, with their total."""
    relu = SpikingReLU(T=8, A=1.0)
    set_checks(relu, "deferred")
    x = torch.tensor([0.5, float("nan"), 3e38, 1.0])  # 3e38 > 2^127 * 1 (the largest shift): clamped
    with kernels.disabled(), caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.ops"):
        counter = SyncCounter()  # from the first forward: the coder's constants are rounded when its range is set
        with counter:
            relu(x)
        assert counter.syncs == {} and not caplog.records
        with pytest.raises(ValueError, match="input contains 1 NaN/Inf value"):
            relu.op_stats()
        assert len(caplog.records) == 1 and "clamped 1 inputs beyond the largest power-of-two shift" in caplog.text
        relu(x[[0, 2, 3]])
        relu(x[[0, 2, 3]])
        assert relu.op_stats().clamped == 3  # since the last reset: three forwards
        assert len(caplog.records) == 2 and "clamped 2 inputs beyond" in caplog.records[1].getMessage()
        flush_checks(relu)  # reported once
        assert len(caplog.records) == 2


def test_eager_checks_raise_before_computing():
    relu = SpikingReLU(T=8, A=1.0)
    assert relu.checks == "eager"
    with kernels.disabled(), pytest.raises(ValueError, match="input contains 1 NaN/Inf value"):
        relu(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="checks must be one of"):
        relu.checks = "never"


def test_conversion_defers_the_checks_of_every_operator(converted):
    ops = [m for m in converted["llama_lm"][1].modules() if isinstance(m, SpikingOp)]
    assert ops and all(op.checks == "deferred" for op in ops)


@pytest.mark.parametrize("family, name", [("bert", "c"), ("llama_lm", "c"),
                                          pytest.param("bert", "triton", marks=(TRITON, pytest.mark.slow))])
def test_torch_compile_captures_a_converted_model_in_one_graph(converted, family, name):
    """No graph break inside the spiking operators, on the CPU's default backend (``c``: a trace takes
    the eager ``torch`` path, whose bits the C kernels reproduce) and on the Triton kernels (custom
    ops), nor in the run-time interception of a decoder's call-level sites (its products, attention and
    norms: a Session opened in the forward's own frame): ``fullgraph=True`` raises at the first one.
    Three batches with the statistics read after each: one graph computes them all, with the eager
    outputs and statistics (for Triton those of the eager ``torch`` path, which its kernels give bit
    for bit: the Triton test above; an interpreted forward fewer). Reading them starts fresh tallies,
    so every call enters with the structure the guards saw; left unread, the second call finds the
    first's running sums and compiles once more, and the third reuses that graph (docs/backends.md).
    (Triton under its interpreter on the encoder alone, one batch: 45 s more for the decoder, 12 s
    for each further batch.)"""
    _, snn = converted[family]
    assert isinstance(snn.__dict__.get("forward"), Intercepted) == (family == "llama_lm")
    batches = [make_batch(family, 2, seed=seed) for seed in ((3,) if name == "triton" else (3, 4, 5))]
    graphs = []

    def counting(graph: torch.fx.GraphModule, inputs: list) -> Callable[..., object]:
        graphs.append(graph)
        return graph.forward

    with torch.no_grad():
        with backend.use("torch" if name == "triton" else name):
            expected = [(main_output(forward(snn, x)), collect_stats(snn)) for x in batches]
        try:
            compiled = torch.compile(snn, backend=counting, fullgraph=True)
            with backend.use(name):
                for x, (eager, stats) in zip(batches, expected):
                    assert torch.equal(main_output(compiled(**x)), eager)
                    assert collect_stats(snn) == stats
                assert len(graphs) == 1
                if name != "triton":  # statistics left unread
                    for x, (eager, _) in zip(batches, expected):
                        assert torch.equal(main_output(compiled(**x)), eager)
                    assert len(graphs) == 2
        finally:
            torch._dynamo.reset()


class PaddedProduct(nn.Module):
    """A weight layer, ``F.pad`` of its output along the tokens, and the product of that activation with
    itself (a call-level matmul site after a call dynamo does not route), as timm's Swin pads its windows."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(self.proj(x), (0, 0, 1, 1))
        return h @ h.transpose(-1, -2)


def test_torch_compile_runs_a_model_with_calls_dynamo_would_not_route_eagerly():
    """Dynamo does not hand ``F.pad`` to the interception, so the product after it would compute in
    float in a compiled graph: compiled, the model runs eagerly with the eager outputs, and
    ``fullgraph=True`` refuses it, saying why."""
    torch.manual_seed(0)
    batches = [torch.randn(2, 5, 8) for _ in range(2)]
    snn = convert(PaddedProduct(), T=8, calib_data=batches)
    assert snn.forward.table.untraced == {"<root>: F.pad"}
    with torch.no_grad():
        expected = snn(batches[1])
        assert not torch.equal(expected, PaddedProduct.forward(snn, batches[1]))  # the spiking product ran
        try:
            assert torch.equal(torch.compile(snn, backend="eager")(batches[1]), expected)
            torch._dynamo.reset()  # the frames compiled above would be reused
            with pytest.raises(Exception, match="dynamo does not hand to the run-time interception"):
                torch.compile(snn, backend="eager", fullgraph=True)(batches[1])
        finally:
            torch._dynamo.reset()
