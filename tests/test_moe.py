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


@pytest.mark.parametrize("mode", ["fast", "simulate"])
def test_masked_candidates_stay_silent_and_lose_to_every_finite_score(mode):
    """-inf marks a masked candidate (a grouped router's excluded group): torch.topk's choice among
    the finite scores, no clamp counted, no NaN/Inf error; rows with fewer finite scores than k
    fill the last places with masked ones."""
    x = scores(3, rows=40)
    x[:, 4:] = -float("inf")
    x[::5, 1:] = -float("inf")  # one finite score, k = 2
    op = topk_op(2, 12, mode)
    values, index = op(x)
    op.flush()
    assert int(op.op_stats().clamped) == 0
    sparse = torch.isinf(x[:, 1])
    expected = torch.topk(x[~sparse], 2).indices.sort(-1).values
    assert torch.equal(index[~sparse].sort(-1).values, expected)
    assert bool((index[sparse, 0] == 0).all()) and bool(torch.isinf(values[sparse, 1]).all())


def deepseek(**extra):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=4, topk_group=2, first_k_dense_replace=0, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=16, **extra)).eval()


@pytest.mark.slow
def test_grouped_router_with_score_bias_and_shared_experts_is_spike_driven():
    """DeepSeek-V3 routing: sigmoid scores plus a correction bias, the top-2 sum per group, the best
    groups (a top-k whose indices mask the other groups' scores with -inf), the top-k experts
    among the rest, renormalised and scaled; shared experts beside. The masking by a spiking
    top-k's indices is routing, so the model converts strictly, and it routes each token to the
    ANN's experts wherever the group and expert margins exceed the scores' error."""
    ann = deepseek()
    with torch.no_grad():
        ann.model.layers[0].mlp.gate.e_score_correction_bias.copy_(torch.linspace(-0.05, 0.05, 8))
    snn = convert(ann, T=16, calib_data=[torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(s))
                                         for s in (1, 2)])
    assert snn.spiking_report.fully_spiking and not snn.spiking_report.fallback
    kinds = [e.target for e in snn.spiking_report.replaced if ".mlp.gate." in e.path]
    assert kinds.count("SpikingTopK") == 3 and "SpikingActivation" in kinds and "Quotient" in kinds
    seen = {}
    for name, model in (("ann", ann), ("snn", snn)):
        model.model.layers[0].mlp.gate.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ann(ids)
        snn(ids)
    (ann_logits, ann_weights, ann_index), (snn_logits, snn_weights, snn_index) = seen["ann"], seen["snn"]
    gate = ann.model.layers[0].mlp.gate
    biased = ann_logits.sigmoid() + gate.e_score_correction_bias
    error = 2 * 4.5e-3 + (snn_logits - ann_logits).abs().max()  # the fitted sigmoid's error on [-12, 12], and the logits'
    groups = biased.view(-1, 4, 2).sum(-1)  # two experts a group: the top-2 sum is the group's sum
    g = groups.sort(-1, descending=True).values
    e = biased.sort(-1, descending=True).values
    clear = (g[:, 1] - g[:, 2] > 2 * error) & (e[:, 1] - e[:, 2] > error) & (e[:, 0] - e[:, 1] > error)
    same = (ann_index.sort(-1).values == snn_index.sort(-1).values).all(-1)
    assert clear.sum() >= 8 and bool(same[clear].all()) and same.float().mean() >= 0.8
    torch.testing.assert_close(snn_weights[same], ann_weights[same], rtol=0.05, atol=0.02)


def test_phimoe_sparsemixer_router_is_spike_driven_and_routes_as_the_ann():
    """Phi-MoE's router subclasses nn.Linear and returns (logits, weights, experts): it is not a weight
    layer. Its sparsemixer (top-1 by max, a relative-gap threshold mask, a masked softmax, the second
    expert after masking the first) converts strictly: max as the spiking top-1, the clamp with an
    activation bound and the threshold on rectifier neurons, the mask routing spikes."""
    from transformers import PhimoeConfig, PhimoeForCausalLM
    from spikingjelly_mbe.ops.layers import is_weight_layer
    torch.manual_seed(0)
    ann = PhimoeForCausalLM(PhimoeConfig(vocab_size=96, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, num_local_experts=4,
                                         num_experts_per_tok=2)).eval()
    router = ann.model.layers[0].mlp.router
    assert isinstance(router, torch.nn.Linear) and not is_weight_layer(router)
    assert is_weight_layer(torch.nn.Linear(2, 2)) and is_weight_layer(torch.nn.modules.linear.NonDynamicallyQuantizableLinear(2, 2))
    snn = convert(ann, [torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)], T=16)
    assert snn.spiking_report.fully_spiking and not snn.spiking_report.fallback
    targets = {e.target for e in snn.spiking_report.replaced if ".mlp.router." in e.path}
    assert {"SpikingTopK", "Greater", "Clamp", "SpikingSoftmax"} <= targets
    seen = {}
    for name, model in (("ann", ann), ("snn", snn)):
        model.model.layers[0].mlp.router.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ann_logits, snn_logits = ann(ids).logits, snn(ids).logits
    (logits, _, ann_index), (_, _, snn_index) = seen["ann"], seen["snn"]
    top = logits.sort(-1, descending=True).values
    clear = (top[:, 0] - top[:, 1] > 0.05) & (top[:, 1] - top[:, 2] > 0.05)
    assert clear.sum() >= 16
    assert torch.equal(ann_index[clear], snn_index[clear])  # the first expert, then the second after masking it
    cosine = torch.nn.functional.cosine_similarity(ann_logits.flatten(), snn_logits.flatten(), 0)
    assert cosine >= 0.999
