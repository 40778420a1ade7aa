"""convert(method="ecmt"): ECMT's operators at the sites conversion by structure finds."""
import pytest
import torch

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.method import GENERAL_BUILDERS, GeneralMethod
from spikingjelly_mbe.conversion.report import UnsupportedNonlinearityError
from spikingjelly_mbe.conversion.sites import SITE_KINDS
from spikingjelly_mbe.conversion.zoo import agreement, build, main_output, make_batch
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.ecmt import ECMTSettings, ExpectationCompensation, MTLinearInput, ProductCompensation, TimeStepped
from spikingjelly_mbe.mbe import OpSettings

torch.set_num_threads(1)


def run(model, batch):
    with torch.no_grad():
        return main_output(model(**batch) if isinstance(batch, dict) else model(batch))


@pytest.fixture(scope="module")
def bert():
    ann = build("bert")
    calib = [make_batch("bert", 4, seed=s) for s in (1, 2)]
    return ann, {T: convert(ann, T=T, calib_data=calib, method="ecmt") for T in (2, 8)}


def test_ecmt_builds_its_operators_at_every_site(bert):
    _, snns = bert
    snn = snns[8]
    assert isinstance(snn, TimeStepped) and snn.T == 8 and snn.ann2snn_recipe == "ecmt_transformer"
    kinds = {type(m) for m in snn.modules()}
    assert {MTLinearInput, ExpectationCompensation, ProductCompensation} <= kinds
    linear = [p for p, m in snn.network.named_modules() if type(m) is torch.nn.Linear]
    wrapped = {p for p, m in snn.network.named_modules() if isinstance(m, MTLinearInput)}
    assert linear and all(p.rsplit(".", 1)[0] in wrapped for p in linear), "every weight layer has an MT neuron"


def test_ecmt_report_says_it_is_not_fully_spiking(bert):
    _, snns = bert
    report = snns[8].spiking_report
    assert snns[8].mbe_report is report  # the 0.1 name
    assert not report.fully_spiking and report.fallback == []
    assert any("Softmax" in op for op in report.float_operations)
    assert "float by the method" in str(report)


def test_ecmt_report_describes_ecmts_operators_not_mbes():
    """Every site of an ECMT model (weight layers, SiLU, RMSNorm, the SwiGLU product, attention) is
    described as ECMT computes it: Expectation Compensation (Theorem 1), MT-coded products (Theorem 2),
    MT neurons; no note names MBE's neurons or its equations."""
    snn = convert(build("llama_lm"), T=3, calib_data=[make_batch("llama_lm", 2)], method="ecmt")
    modules = dict(snn.network.named_modules())
    notes = {e.path: e.note for e in snn.spiking_report.replaced}
    assert not [n for n in notes.values() if "MBE" in n or "(Eq" in n], notes
    theorem = {ExpectationCompensation: "in float inside Expectation Compensation (Theorem 1)",
               ProductCompensation: "MT-coded activations: S_A(t) S_B(t) / t less the earlier outputs (Theorem 2)",
               MTLinearInput: "driven by an MT neuron"}
    kinds = {type(modules[p]) for p in notes}
    assert set(theorem) <= kinds
    for path, note in notes.items():
        assert theorem.get(type(modules[path]), "") in note, (path, note)
    assert any(n.startswith("silu: ") for n in notes.values()) and any(n.startswith("RMSNorm: ") for n in notes.values())


def test_ecmt_converges_to_the_ann_as_T_grows(bert):
    ann, snns = bert
    batch = make_batch("bert", 4, seed=9)
    reference = run(ann, batch)
    cosines = {T: agreement(reference, run(snn, batch))["cosine"] for T, snn in snns.items()}
    assert cosines[8] > cosines[2] and cosines[8] >= 0.98


def test_ecmt_cached_forward_equals_the_whole_sequence():
    """One KV cache per time step: the last token's logits from a cached call equal the uncached ones."""
    ann = build("llama_lm")
    snn = convert(ann, T=3, calib_data=[make_batch("llama_lm", 2)], method="ecmt")
    ids = make_batch("llama_lm", 2)["input_ids"][:, :7]
    with torch.no_grad():
        whole = snn(input_ids=ids, use_cache=False).logits[:, -1]
        prefix = snn(input_ids=ids[:, :6], use_cache=True)
        cached = snn(input_ids=ids[:, 6:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(cached, whole, rtol=1e-4, atol=1e-5)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="method must be one of"):
        convert(build("bert"), calib_data=[make_batch("bert", 2)], method="bogus")


def test_ecmt_energy_charges_its_float_operations_at_e_mac(bert):
    """Both methods meter the same ANN operations; ECMT's float operations cost E_MAC each, its spikes E_AC."""
    ann, snns = bert
    batch = make_batch("bert", 4, seed=9)
    mbe = convert(ann, T=8, calib_data=[make_batch("bert", 4, seed=s) for s in (1, 2)])
    meters = {}
    for name, snn in (("mbe", mbe), ("ecmt", snns[8])):
        with torch.no_grad(), EnergyMeter(snn, 8) as meters[name]:
            snn(**batch)
    ecmt = meters["ecmt"]
    assert ecmt.total().ann_flops == meters["mbe"].total().ann_flops > 0
    assert meters["mbe"].total().float_flops == 0 and ecmt.total().float_flops > 0
    linear = [p for p in ecmt.counts if ecmt.kinds[p] == "MTLinearInput"]
    assert linear and all(ecmt.is_weight_layer(p) for p in linear)
    events = sum(c.sops for c in ecmt.counts.values())
    floats = sum(c.float_flops for c in ecmt.counts.values())
    ops = ecmt.total().ann_flops
    assert ecmt.ratio() == pytest.approx((events * 0.9 + floats * 4.6) / (ops * 4.6))
    linear_ops = sum(ecmt.counts[p].ann_flops for p in linear)
    assert ecmt.total(weight_layers=False).ann_flops == ops - linear_ops


def test_ecmt_recipe_is_convert_with_method_ecmt(bert):
    """SpikingJelly's ModuleConverter with ECMTRecipe gives convert(method="ecmt")'s model, output for output."""
    from spikingjelly.activation_based.ann2snn import ModuleConverter
    from spikingjelly_mbe.conversion import ECMTRecipe
    ann, snns = bert
    calib = [make_batch("bert", 4, seed=s) for s in (1, 2)]
    snn = ModuleConverter(ECMTRecipe(T=8, calibration=calib)).convert(ann)
    assert isinstance(snn, TimeStepped) and snn.ann2snn_recipe == "ecmt_transformer" and snn.T == 8
    batch = make_batch("bert", 4, seed=9)
    assert torch.equal(run(snn, batch), run(snns[8], batch))
    with pytest.raises(ValueError, match="percentile"):
        ECMTRecipe(T=8, calibration=calib, percentile=100.0)


def test_the_general_site_kinds_are_the_declared_builders_mbe_has_them_and_ecmt_leaves_them_unsupported():
    assert {kind.needs for kind in SITE_KINDS.values()} - {""} == set(GENERAL_BUILDERS) - {"on_demand"}
    assert isinstance(OpSettings(), GeneralMethod) and not isinstance(ECMTSettings(), GeneralMethod)

    class Ratio(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) / (self.b(x).abs() + 1)

    batches = [torch.randn(4, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    with pytest.raises(UnsupportedNonlinearityError, match="div"):
        convert(Ratio(), calib_data=batches, method="ecmt", T=4)
    snn = convert(Ratio(), calib_data=batches, method="ecmt", T=4, allow_float_fallback=True)
    assert any(e.source == "div" for e in snn.spiking_report.fallback)
