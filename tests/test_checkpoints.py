"""Calibrated state is model state: ``load_state_dict`` of a saved conversion into a fresh one (the
same settings, other calibration data) restores it bit for bit, through a file loaded with
``weights_only=True`` too; a state from a conversion with other settings is refused by name."""
import copy
import io
import json
import pickle

import pytest
import torch

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.ops import SpikingActivation, SpikingProduct, SpikingWeightInput


def converted(family, seeds, **options):
    return convert(build(family, layers=1), calib_data=[make_batch(family, 2, seed=s) for s in seeds], **options)


def run(model, x):
    with torch.no_grad():
        return main_output(model(**x) if isinstance(x, dict) else model(x))


def through_file(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("family", ["llama_lm", "bert"])
def test_load_state_dict_restores_a_calibration_on_other_data_bit_for_bit(family):
    saved, fresh = converted(family, (1, 2), T=8), converted(family, (3, 4), T=8)
    x = make_batch(family, 2, seed=5)
    expected = run(saved, x)
    assert not torch.equal(run(fresh, x), expected)  # the two calibrations differ
    result = fresh.load_state_dict(through_file(saved.state_dict()))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(run(fresh, x), expected)
    for copied in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert torch.equal(run(copied, x), expected)


def test_a_calibrated_operator_restores_its_ranges_shares_and_steps():
    g = torch.Generator().manual_seed(0)
    batches = [[torch.randn(4, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 1, 1, 100]) for _ in range(2)]
               for _ in range(2)]
    ops = []
    for data in batches:
        op = SpikingProduct(T=8)
        op(data[0], data[1])
        op.finish_calibration()
        ops.append(op)
    a, b = torch.randn(3, 6, generator=g) * 5, torch.randn(3, 6, generator=g) * 5
    assert not torch.equal(ops[1](a, b), ops[0](a, b))
    ops[1].load_state_dict(ops[0].state_dict())
    assert torch.equal(ops[1](a, b), ops[0](a, b))
    assert ops[1].ranges == ops[0].ranges and ops[1].steps == ops[0].steps
    assert all(torch.equal(s1, s0) for s1, s0 in zip(ops[1].shares, ops[0].shares))


def test_a_weight_input_restores_centers_that_the_fresh_one_lacks():
    layer = torch.nn.Linear(4, 3)
    centered, uncentered = SpikingWeightInput(layer, T=8), SpikingWeightInput(layer, T=8, centered=False)
    for op in (centered, uncentered):
        op(torch.randn(16, 4) + 3.0)
        op.finish_calibration()
    x = torch.randn(5, 4) + 3.0
    uncentered.centered = True  # the flag is a setting; the centers themselves are state
    uncentered.load_state_dict(centered.state_dict())
    assert uncentered.channel_centers is not None and torch.equal(uncentered(x), centered(x))


def test_a_fitted_activation_takes_the_saved_fit():
    saved, fresh = SpikingActivation.gelu(T=8, N=8), SpikingActivation.gelu(T=8, N=4)
    x = torch.linspace(-6, 6, 101)
    fresh.load_state_dict(saved.state_dict())
    assert fresh.fitted.N == 8 and torch.equal(fresh(x), saved(x))


@pytest.mark.parametrize("other, named", [({"T": 16}, "T=16 (this model: 8)"),
                                          ({"code": "binary"}, "code='binary' (this model: 'signed')"),
                                          ({"method": "ecmt"}, "method='ecmt' (this model: 'mbe')")])
def test_a_state_from_other_settings_is_refused_naming_them(other, named):
    model = converted("gelu_mlp", (1,), T=8)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        model.load_state_dict(converted("gelu_mlp", (2,), **{"T": 8, **other}).state_dict())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # refused before anything loaded


def without_settings(state, *names):
    """``state`` as saved before the settings ``names`` existed: its settings buffer lacks them."""
    key = next(k for k in state if k.endswith("conversion_settings"))
    settings = json.loads(bytes(state[key].tolist()).decode())
    assert all(name in settings for name in names)
    old = {k: v for k, v in settings.items() if k not in names}
    return {**state, key: torch.tensor(list(json.dumps(old).encode()), dtype=torch.uint8)}


def test_a_state_saved_before_the_neuron_setting_existed_loads_bit_for_bit():
    """A state without ``neuron`` (nor the later ``bias_correction``, ``digit_budget``,
    ``energy_budget``) was converted with MBE neurons, no correction and every site at T: it loads
    into such a conversion and gives the saved model's outputs."""
    saved, fresh = converted("llama_lm", (1, 2), T=8), converted("llama_lm", (3, 4), T=8)
    x = make_batch("llama_lm", 2, seed=5)
    expected = run(saved, x)
    assert not torch.equal(run(fresh, x), expected)
    result = fresh.load_state_dict(through_file(without_settings(saved.state_dict(), "neuron", "bias_correction", "digit_budget",
                                                                  "energy_budget")))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(run(fresh, x), expected)
    assert torch.equal(fresh.state_dict()[next(k for k in fresh.state_dict() if k.endswith("conversion_settings"))],
                       saved.state_dict()[next(k for k in saved.state_dict() if k.endswith("conversion_settings"))])


def test_a_state_saved_before_the_neuron_setting_existed_is_refused_by_another_neuron_kind():
    old = without_settings(converted("gelu_mlp", (1,), T=8).state_dict(), "neuron")
    with pytest.raises(ValueError, match=r"neuron='mbe' \(this model: 'fs'\)"):
        converted("gelu_mlp", (2,), T=8, neuron="fs").load_state_dict(old)


def test_a_state_saved_before_centred_codes_and_probability_exponents_loads_as_they_were_then():
    """A state without ``centered_codes`` and ``probability_exponents`` (saved before they existed) was
    converted with neither: it loads into such a conversion bit for bit, and a default conversion (both
    on) refuses it naming them."""
    plain = dict(T=6, centered_codes=False, probability_exponents=False)
    saved, fresh = converted("llama_lm", (1,), **plain), converted("llama_lm", (2,), **plain)
    old = without_settings(saved.state_dict(), "centered_codes", "probability_exponents")
    x = make_batch("llama_lm", 2, seed=5)
    fresh.load_state_dict(through_file(old))
    assert torch.equal(run(fresh, x), run(saved, x))
    with pytest.raises(ValueError, match=r"centered_codes=False \(this model: True\), probability_exponents=False"):
        converted("llama_lm", (2,), T=6).load_state_dict(old)


def test_an_operator_refuses_a_state_of_another_T():
    with pytest.raises(ValueError, match=r"T=16 \(this operator: 8\)"):
        SpikingProduct(T=8, ranges=(1.0, 1.0)).load_state_dict(SpikingProduct(T=16, ranges=(1.0, 1.0)).state_dict())


def test_a_converted_model_moves_to_float64_and_back():
    model, x = converted("gelu_mlp", (1,), T=8), make_batch("gelu_mlp", 2, seed=5)
    expected = run(model, x)
    wide = copy.deepcopy(model).to(torch.float64)
    torch.testing.assert_close(run(wide, x.double()).float(), expected, atol=1e-2, rtol=0)
    assert torch.equal(run(wide.to(torch.float32), x), expected)
