"""T per operator type and per layer (``convert(..., T={"default": 8, "softmax": 16})``): each operator
built at its own digits, the mixed conversion equal operator by operator to the uniform ones, the
energy meter counting each operator at its own T, and the errors."""
import copy

import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion import set_mode
from spikingjelly_mbe.activations import ACTIVATIONS
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.mbe import OpSettings
from spikingjelly_mbe.ops import SpikingActivation
from spikingjelly_mbe.ops.digits import OPERATOR_TYPES, check_T, operator_types, steps_at, steps_of

MIXED = {"default": 8, "softmax": 16}


@pytest.fixture(scope="module")
def bert():
    ann = build("bert", layers=2, hidden=16, heads=2, seed=0).double()
    return ann, {k: v.double() if v.is_floating_point() else v for k, v in make_batch("bert", 2, 12, seed=1).items()}


@pytest.fixture(scope="module")
def conversions(bert):
    ann, batch = bert
    return {name: convert(ann, [batch], T=T) for name, T in (("mixed", MIXED), (8, 8), (16, 16))}


def test_a_per_type_T_builds_each_operator_with_its_digits():
    T = {"default": 8, "softmax": 16, "norm": 12, "product": 10, "matmul": 12, "root": 10, "weight_input": 16,
         "max_pool": 10, "topk": 12, "activation": 16}
    s = OpSettings(T=T)
    built = {"activation": s.activation(ACTIVATIONS["gelu"], {}), "softmax": s.softmax(-1),
             "norm": s.layer_norm((4,), None, None, 1e-5), "product": s.product(), "matmul": s.einsum("ij,jk->ik"),
             "root": s.root(-0.5), "weight_input": s.linear_input(nn.Linear(4, 4)), "max_pool": s.max_pool(2),
             "topk": s.topk(2)}
    assert set(built) == set(OPERATOR_TYPES)
    for kind, module in built.items():
        assert operator_types(module) == {"": kind}
        assert {m.T for m in module.modules() if isinstance(getattr(m, "T", None), int)} == {T[kind]}, kind
    assert steps_of(s.rms_norm((4,), None, 1e-5)) == 12 and steps_of(s.matmul()) == 12
    assert steps_of(s.piecewise([(0.0, 1.0)])) == 16 and steps_of(OpSettings(T=10).softmax(-1)) == 10


def test_the_more_specific_key_wins():
    T = check_T({"default": 4, "softmax": 6, "model.layers.*": 7, "model.layers.1.*": 8, "model.*.1.*": 9,
                 "model.layers.*:softmax": 10, "model.layers.?.mlp.*": 11})
    assert steps_at(T, "norm", "model.norm") == 4 and steps_at(T, "softmax", "model.norm") == 6
    assert steps_at(T, "norm", "model.layers.0.input_layernorm") == 7
    assert steps_at(T, "norm", "model.layers.1.input_layernorm") == 8  # 'model.layers.1.*' has more literals than '.*.1.*'
    assert steps_at(T, "softmax", "model.layers.1.self_attn.spiking_attention") == 10  # a pattern with its type first
    assert steps_at(T, "weight_input", "model.layers.3.mlp.down_proj") == 11
    tie = check_T({"default": 4, "a.*.c": 5, "a.b.*": 6})  # equally specific: the later key
    assert steps_at(tie, "norm", "a.b.c") == 6 and steps_at(4, "softmax", "anything") == 4


@pytest.mark.parametrize("T, message", [
    ({"default": 8, "sofmax": 16}, "unknown key 'sofmax'.*'softmax'.*'weight_input'"),
    ({"softmax": 16}, "needs a 'default' entry"),
    ({"default": 8, "layers.0.*:sofmax": 16}, "unknown key 'layers.0.\\*:sofmax'"),
    ({"default": 0}, r"T\['default'\] must be a positive integer"),
    ({"default": 8, "norm": 2.5}, r"T\['norm'\] must be a positive integer"),
    ({"default": 8, "norm": True}, r"T\['norm'\] must be a positive integer"),
    ({"default": 8, "norm": 33}, r"T\['norm'\] must be a positive integer \(at most 32"),
    ("eight", "T must be a positive integer .* or a mapping"),
])
def test_bad_keys_and_values_name_T_the_key_and_the_known_keys(T, message):
    with pytest.raises(ValueError, match=message):
        convert(build("gelu_mlp"), [make_batch("gelu_mlp", 4, 8)], T=T)


def test_a_pattern_matching_no_operator_and_a_dict_for_ecmt_are_refused():
    ann, batch = build("gelu_mlp"), make_batch("gelu_mlp", 4, 8)
    with pytest.raises(ValueError, match=r"T: the module-path key\(s\) \['model.layerz.\*'\] match no operator"):
        convert(ann, [batch], T={"default": 8, "model.layerz.*": 16})
    with pytest.raises(ValueError, match="method='ecmt' runs the whole network T times, so T is one integer"):
        convert(ann, [batch], T=MIXED, method="ecmt")


def test_split_bits_must_stay_below_every_T_that_splits():
    with pytest.raises(ValueError, match=r"split_bits must be None or an integer in \[0, T=3\)"):
        OpSettings(T={"default": 8, "softmax": 3}, split_bits=3).validate()
    OpSettings(T={"default": 2, "softmax": 8, "norm": 8, "root": 8}, split_bits=3).validate()
    with pytest.raises(ValueError, match=r"\[0, T=3\)"):
        OpSettings(T={"default": 8, "x.*:norm": 3}, split_bits=3).validate()


def identical(a, b) -> bool:
    """Tensors equal element by element, containers entry by entry, anything else by ``==``."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def outermost(model: nn.Module) -> dict:
    return {path: model.get_submodule(path) for path in operator_types(model)}


def test_mixed_T_equals_the_uniform_conversions_operator_by_operator(bert, conversions):
    """Every operator of the T={default: 8, softmax: 16} model has the state of the same operator of
    the T=8 conversion (the softmax ones: of the T=16 one) and computes the same numbers on the
    inputs it gets in the mixed model."""
    ann, batch = bert
    mixed = conversions["mixed"]
    ops = outermost(mixed)
    assert {operator_types(mixed)[p] for p in ops} >= {"softmax", "norm", "matmul", "weight_input", "activation"}
    inputs = {}

    def keep(path: str):
        def hook(module, args, out) -> None:
            inputs.setdefault(path, (args, out))
        return hook
    hooks = [m.register_forward_hook(keep(p)) for p, m in ops.items()]
    with torch.no_grad():
        mixed(**batch)
    for h in hooks:
        h.remove()
    for path, op in ops.items():
        donor = conversions[16 if operator_types(mixed)[path] == "softmax" else 8].get_submodule(path)
        assert steps_of(op) == steps_of(donor) == (16 if operator_types(mixed)[path] == "softmax" else 8)
        state, other = op.state_dict(), donor.state_dict()
        assert state.keys() == other.keys()
        for key in state:
            assert identical(state[key], other[key]), (path, key)
        args, out = inputs[path]
        with torch.no_grad():
            torch.testing.assert_close(copy.deepcopy(donor)(*args), out, rtol=0, atol=0)


def test_per_layer_glob_and_the_report(bert):
    ann, batch = bert
    snn = convert(ann, [batch], T={"default": 8, "bert.encoder.layer.1.*": 16, "bert.encoder.layer.1.*:norm": 12})
    for path, kind in operator_types(snn).items():
        expected = (12 if kind == "norm" else 16) if path.startswith("bert.encoder.layer.1.") else 8
        assert steps_of(snn.get_submodule(path)) == expected, path
    digits = snn.spiking_report.digits
    assert digits["norm"] == {8: 3, 12: 2} and digits["softmax"] == {8: 1, 16: 1}
    assert snn.spiking_report.mean_digits()["norm"] == pytest.approx((3 * 8 + 2 * 12) / 5)
    assert "digits per operator type: " in str(snn.spiking_report) and "norm T=8 x3 T=12 x2" in str(snn.spiking_report)


class TwoLayers(nn.Module):
    """Two plain weight layers the meter charges itself, beside one operator at its own T."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 6)
        self.act = SpikingActivation.gelu(T=16, N=4)

    def forward(self, x):
        return self.a(x), self.b(x), self.act(x)


def test_energy_counts_each_weight_layer_and_operator_at_its_own_T():
    """Inputs whose codes are known by hand: per row one full-scale value (T digits in the binary
    and the signed code alike), two powers of two (one digit each) or one and a zero: ``2T + 4``
    spikes per layer, times its fan-out."""
    model, x = TwoLayers(), torch.tensor([[1.0, 0.5, 0.25, 0.0], [-1.0, -0.5, 0.0, 0.25]])
    T = {"default": 8, "b*": 4, "activation": 16}
    with torch.no_grad(), EnergyMeter(model, T) as meter:
        model(x)
    assert meter.counts["a"].sops == (2 * 8 + 4) * 3 and meter.counts["b"].sops == (2 * 4 + 4) * 6
    assert meter.steps("a") == 8 and meter.steps("b") == 4 and meter.steps("act") == 16
    act = meter.counts["act"]
    assert act.neurons > 0 and meter.total().sops == 60 + 72 + act.sops
    rows = {r["type"]: r for r in meter.rows("type")}
    assert rows["weight_input"]["T"] == pytest.approx((8 * 8 + 4 * 8) / 16) and rows["activation"]["T"] == 16
    assert rows["weight_input"]["sops"] == 132 and rows["total"]["spikes"] == meter.total().spikes
    assert rows["total"]["T"] == pytest.approx((8 * 8 + 4 * 8 + 16 * act.neurons) / (16 + act.neurons), abs=1e-3)
    with pytest.raises(ValueError, match=r"T=8, but the model's spiking operators run at T=\[16\]"):
        EnergyMeter(model, 8)


def test_meter_rows_by_type_on_a_mixed_conversion(bert, conversions):
    ann, batch = bert
    with torch.no_grad(), EnergyMeter(conversions["mixed"], MIXED) as meter:
        conversions["mixed"](**batch)
    rows = {r["type"]: r for r in meter.rows("type")}
    assert rows["softmax"]["T"] == 16 and rows["norm"]["T"] == 8 and rows["weight_input"]["T"] == 8
    assert sum(r["sops"] for k, r in rows.items() if k != "total") == rows["total"]["sops"] == meter.total().sops
    assert rows["softmax"]["spikes"] > 0 and 8 < rows["total"]["T"] < 16


def test_simulate_equals_fast_for_a_mixed_T_model(bert, conversions):
    ann, batch = bert
    fast = conversions["mixed"]
    simulated = set_mode(copy.deepcopy(fast), "simulate")
    with torch.no_grad(), EnergyMeter(fast, MIXED) as a:
        y_fast = main_output(fast(**batch))
    with torch.no_grad(), EnergyMeter(simulated, MIXED) as b:
        y_sim = main_output(simulated(**batch))
    torch.testing.assert_close(y_sim, y_fast, rtol=1e-9, atol=1e-9)
    assert a.total() == b.total()


def test_a_mixed_T_state_dict_loads_into_the_same_settings_only(bert, conversions):
    ann, batch = bert
    again = convert(ann, [batch], T=dict(MIXED))
    again.load_state_dict(conversions["mixed"].state_dict())
    with pytest.raises(ValueError, match="T="):
        conversions[8].load_state_dict(conversions["mixed"].state_dict())
