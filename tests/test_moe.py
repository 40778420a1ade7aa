"""Mixture-of-Experts, spike-driven: the top-k selection by counting spikes (simulation against fast
mode, against torch.topk wherever the margin exceeds a code step), the routing of a converted MoE LM
against its ANN, and the experts charged per routed token."""

import pytest
import torch

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.hf_experts import SpikingExperts
from spikingjelly_mbe.conversion.zoo import build, make_batch
from spikingjelly_mbe.ops.routing import SpikingTopK

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("quiet_clamp_warnings")


def scores(seed: int, rows: int = 64, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, n, generator=g)
    x[::4, 1] = x[::4, 5]  # exact ties
    x[1::4, 2] = x[1::4, 6] + 1e-7  # ties at the code's resolution
    return x


def topk_op(k: int, T: int, mode: str, dim: int = -1) -> SpikingTopK:
    op = SpikingTopK(k, dim, T=T, mode=mode)
    op.set_ranges((0.0, 1.0))
    return op


@pytest.mark.parametrize("k, T", [(1, 8), (2, 16), (3, 6)])
def test_counting_selection_equals_fast_mode(k, T):
    x = scores(k)
    simulated, fast = topk_op(k, T, "simulate")(x), topk_op(k, T, "fast")(x)
    assert torch.equal(simulated[1], fast[1]) and torch.equal(simulated[0], fast[0])


@pytest.mark.parametrize("dim", [0, 1])
def test_selection_is_torch_topk_wherever_the_margin_exceeds_a_code_step(dim):
    k, T = 2, 10
    x = scores(7, rows=200).T.contiguous() if dim == 0 else scores(7, rows=200)
    values, index = topk_op(k, T, "simulate", dim)(x)
    ref_values, ref_index = torch.topk(x, k + 1, dim=dim)
    margin = (ref_values.narrow(dim, k - 1, 1) - ref_values.narrow(dim, k, 1)).squeeze(dim)
    clear = margin > 2.0 ** -T
    chosen, expected = index.sort(dim).values, ref_index.narrow(dim, 0, k).sort(dim).values
    same = (chosen == expected).all(dim)
    assert clear.sum() > 100 and bool(same[clear].all())
    assert torch.equal(values, x.gather(dim, index))  # the winners' own scores, routed


def test_moe_lm_routes_tokens_to_the_anns_experts_and_charges_per_routed_token():
    ann = build("qwen2_moe")
    snn = convert(ann, T=16, calib_data=[make_batch("qwen2_moe", 4, seed=s) for s in (1, 2)])
    routing = [r for r in snn.mbe_report.site_errors if r.selection_agreement is not None]
    assert len(routing) == 2 and all(r.selection_agreement == 1.0 for r in routing)
    assert "routing: model.layers.0.mlp.gate.spiking_topk0: SpikingTopK" in str(snn.mbe_report)

    batch = make_batch("qwen2_moe", 4, seed=9)
    seen = {}

    def keep(name):
        return lambda module, args, out: seen.__setitem__(name, out)

    for name, model in (("ann", ann), ("snn", snn)):
        model.model.layers[0].mlp.gate.register_forward_hook(keep(name))
    with torch.no_grad():
        ann(**batch)
        snn(**batch)
    (ann_logits, _, ann_index), (snn_logits, _, snn_index) = seen["ann"], seen["snn"]
    probs = ann_logits.float().softmax(-1)
    top = probs.topk(3, dim=-1).values
    error = (snn_logits.float().softmax(-1) - probs).abs().max(-1).values
    clear = (top[:, 1] - top[:, 2]) > 2 * error + 2.0 ** -15
    assert clear.sum() > 0
    assert torch.equal(ann_index.sort(-1).values[clear], snn_index.sort(-1).values[clear])

    core = snn.model.layers[0].mlp.experts.spiking_experts
    assert isinstance(core, SpikingExperts)
    routed = snn_index.numel()  # tokens x k of the same batch: each (token, expert) pair codes the token once
    hidden = ann.config.hidden_size
    assert sum(int(op.op_stats().neurons) for op in core.gate_up) == routed * hidden
