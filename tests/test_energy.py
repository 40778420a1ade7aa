"""Energy accounting (Eq. 14): weight-layer synapses against closed forms and SpikingJelly's MACCounter,
and the report's grouping."""
import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.zoo import build, make_batch
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikingjelly_mbe.energy import (E_AC, E_MAC, EnergyMeter, OpStats, SynapseCounter, ann_macs, block_of,
                                     energy_ratio, input_spikes)
from spikingjelly_mbe.ops import IdentityCoder, SpikingMatmul


def reference_spikes(x: torch.Tensor, T: int) -> int:
    """Binary digits of the nearest of 2^T levels of |x| on [0, max|x|], counted in Python integers."""
    levels, peak = 2 ** T - 1, float(x.abs().max())
    return sum(bin(min(int(abs(v) * levels / peak + 0.5), levels)).count("1") for v in x.flatten().tolist())


@pytest.mark.parametrize("T", [4, 8, 16])
def test_input_spikes_are_the_binary_digits_of_the_quantised_magnitude(T):
    x = torch.tensor([0.5, -1.0, 0.2, 0.0, -0.33, 0.999])
    assert input_spikes(x, T, "binary") == reference_spikes(x, T)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(T))
    assert input_spikes(x, T, "binary") == reference_spikes(x, T)
    assert input_spikes(torch.zeros(5), T, "binary") == 0


class PatchMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 5)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)  # [B, 4, 8]
        return self.fc2(torch.relu(self.fc1(h)))


def test_synapse_counter_charges_spikes_times_fan_out_and_matches_spikingjelly_macs():
    torch.manual_seed(0)
    model, x = PatchMLP().eval(), torch.rand(2, 3, 8, 8)
    with torch.no_grad(), SynapseCounter(model, T=8, code="binary") as counter:
        model(x)
    stats = counter.stats
    patches, B = 4, 2
    assert stats["patch"].ann_flops == B * patches * 8 * 3 * 16
    assert stats["fc1"].ann_flops == B * patches * 8 * 16 and stats["fc2"].ann_flops == B * patches * 16 * 5
    assert stats["patch"].spikes == reference_spikes(x, 8) and stats["patch"].neurons == x.numel()
    assert stats["patch"].sops == stats["patch"].spikes * 8  # each pixel feeds one position per channel
    assert stats["fc1"].sops == stats["fc1"].spikes * 16 and stats["fc2"].sops == stats["fc2"].spikes * 5
    with torch.no_grad():
        assert sum(s.ann_flops for s in stats.values()) == ann_macs(lambda: model(x))
    with torch.no_grad():  # hooks are gone after the block
        model(x)
    assert counter.stats == stats


def test_energy_ratio_is_eq_14_with_horowitz_costs_in_both_conventions():
    # Horowitz (ISSCC 2014, 45 nm): fp32 mult 3.7 + add 0.9 pJ; int8 mult 0.2 + add 0.03 pJ
    assert (E_MAC, E_AC) == (pytest.approx(3.7 + 0.9), 0.9) and energy_ratio(OpStats()) == 0.0
    counts = OpStats(spikes=300, sops=1000, ann_flops=200)
    assert energy_ratio(counts) == pytest.approx(1000 * 0.9 / (200 * 4.6))
    assert energy_ratio(counts, "paper") == pytest.approx(300 * 0.9 / (200 * 4.6))
    assert energy_ratio(counts, precision="int8") == pytest.approx(1000 * 0.03 / (200 * (0.2 + 0.03)))
    with pytest.raises(ValueError, match="convention must be one of"):
        energy_ratio(counts, "loose")
    with pytest.raises(ValueError, match="precision must be one of"):
        energy_ratio(counts, precision="fp16")


def spike_planes(x: torch.Tensor, T: int) -> torch.Tensor:
    """The binary spikes of MBE_Id on ``x >= 0`` (range max x), one plane per step: ``[T, *x.shape]``."""
    code, _ = IdentityCoder(T, float(x.max()), "binary").encode(x, simulate=True)
    return code.spikes.movedim(-1, 0)


def test_strict_counts_match_spikingjelly_synop_counter_on_the_spike_trains():
    """SpikingJelly's ``SynOpCounter`` sees the binary spike planes themselves: a weight layer driven by
    them costs ``spikes x fan-out``, a product of two spike matrices its coincidences."""
    torch.manual_seed(0)
    T, layer, x = 8, nn.Linear(24, 10), torch.rand(6, 24)
    with torch.no_grad(), SynapseCounter(layer, T, "binary") as counter:
        layer(x)
    synops = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([synops]):
        layer(spike_planes(x, T).reshape(-1, 24))
    assert counter.stats[""].sops == int(synops.get_total()) > 0
    a, b = torch.rand(5, 12), torch.rand(12, 7)
    op = SpikingMatmul(T, mode="simulate", ranges=(float(a.max()), float(b.max())), code="binary")
    with torch.no_grad():
        op(a, b)
    pa, pb = spike_planes(a, T), spike_planes(b, T)  # [T, 5, 12], [T, 12, 7]
    synops = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([synops]):
        torch.mm(pa.reshape(-1, 12), pb.movedim(0, -1).reshape(12, -1))  # every step pair (i, j)
    assert op.op_stats().sops == int(synops.get_total()) > 0


def test_block_of_reads_the_block_index_of_each_family():
    assert block_of("encoder.layer.3.intermediate.intermediate_act_fn") == "block 3"
    assert block_of("transformer.h.11.attn.c_attn") == "block 11"
    assert block_of("model.layers.0.mlp.gate") == "block 0" and block_of("blocks.2.norm1") == "block 2"
    assert block_of("lm_head") == "outside blocks" and block_of("encoder.layernorm") == "outside blocks"


def test_energy_meter_accumulates_operators_and_weight_layers_over_forwards():
    ann = build("bert", layers=2, hidden=32, heads=4, seed=0)
    batch = make_batch("bert", 2, 12, seed=1)
    snn = convert(ann, T=8, calib_data=[batch])
    with torch.no_grad(), EnergyMeter(snn, 8) as once:
        snn(**batch)
    with torch.no_grad(), EnergyMeter(snn, 8) as twice:
        snn(**batch)
        snn(**batch)
    assert twice.total() == once.total() + once.total()
    kinds = set(once.kinds.values())
    assert {"SpikingWeightInput", "SpikingLayerNorm", "SpikingMatmul", "SpikingSoftmax", "SpikingActivation"} <= kinds
    for by in ("operator", "block", "path"):
        rows = once.rows(by)
        assert rows[-1][by] == "total" and sum(r["sops"] for r in rows[:-1]) == once.total().sops
        assert sum(r["ann_ops"] for r in rows[:-1]) == once.total().ann_flops
    blocks = {r["block"] for r in once.rows("block")}
    assert {"block 0", "block 1", "outside blocks"} <= blocks
    total, ops_only = once.total(), once.total(weight_layers=False)
    linear = sum((c for p, c in once.counts.items() if once.kinds[p] == "SpikingWeightInput"), OpStats())
    assert ops_only + linear == total and linear.sops > 0 and ops_only.sops > 0
    assert once.ratio() == pytest.approx(total.sops * E_AC / (total.ann_flops * E_MAC))
    assert once.ratio(weight_layers=False) == pytest.approx(ops_only.sops * E_AC / (ops_only.ann_flops * E_MAC))
    # paper: each operator's spikes against its FLOPs; weight layers keep spikes x fan-out
    assert once.ratio("paper") == pytest.approx((ops_only.spikes + linear.sops) * E_AC / (total.ann_flops * E_MAC))
    assert once.ratio("paper", weight_layers=False) == pytest.approx(ops_only.spikes * 0.9 / (ops_only.ann_flops * 4.6))
    assert once.ratio(precision="int8") == pytest.approx(total.sops * 0.03 / (total.ann_flops * 0.23))
    last = once.rows("operator")[-1]
    assert last["energy_strict"] == pytest.approx(once.ratio(), abs=1e-4)
    assert last["energy_paper"] == pytest.approx(once.ratio("paper"), abs=1e-4)
    assert last["energy_strict_int8"] == pytest.approx(once.ratio(precision="int8"), abs=1e-4)
    linear_row = next(r for r in once.rows("operator") if r["operator"] == "SpikingWeightInput")
    assert linear_row["energy_strict"] == linear_row["energy_paper"] == pytest.approx(
        linear.sops * 0.9 / (linear.ann_flops * 4.6), abs=1e-4)
    with pytest.raises(ValueError, match="by must be one of"):
        once.rows("layerwise")
