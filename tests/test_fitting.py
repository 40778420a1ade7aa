"""Fitting: the paper's error bars, determinism, parameter files and the shipped library."""
import json

import pytest
import torch
import torch.nn.functional as F

from spikingjelly_mbe import FittedNeuron, FittedNeuronError, available, fit_neuron, load_fitted
from spikingjelly_mbe.fitting import TARGETS
from spikingjelly_mbe.fitting.build_library import LIBRARY_N, LIBRARY_T


def independent_mse(fitted: FittedNeuron, fn, lo: float, hi: float, n: int = 10_000) -> float:
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    with torch.no_grad():
        return float(((fitted.node().double()(x) - fn(x)) ** 2).mean())


@pytest.fixture(scope="module")
def gelu_paper_fit():
    return fit_neuron("gelu", N=4, T=16, domain=(-120, 10), samples=4000, budget=3000, seed=0)


def test_gelu_mbe_beats_paper_bar_on_paper_protocol(gelu_paper_fit):
    assert independent_mse(gelu_paper_fit, F.gelu, -120, 10) <= 1e-4


def test_gelu_mbe_beats_bar_where_curvature_dominates():
    fitted = fit_neuron("gelu", N=4, T=16, domain=(-8, 8), samples=4000, budget=3000, seed=0)
    assert independent_mse(fitted, F.gelu, -8, 8) <= 3e-4


def test_same_seed_gives_identical_parameters(gelu_paper_fit):
    again = fit_neuron("gelu", N=4, T=16, domain=(-120, 10), samples=4000, budget=3000, seed=0)
    assert again.params == gelu_paper_fit.params


def test_reported_errors_match_an_independent_measurement(gelu_paper_fit):
    assert gelu_paper_fit.errors["mse"] == pytest.approx(independent_mse(gelu_paper_fit, F.gelu, -120, 10), rel=1e-6)


def test_fs_fit_and_callable_target():
    fitted = fit_neuron(lambda x: x ** 2, kind="fs", T=8, domain=(0, 1), samples=2000, budget=600)
    assert fitted.kind == "fs" and fitted.N == 1
    assert independent_mse(fitted, lambda x: x ** 2, 0, 1) < 1e-2  # binary start alone gives ~1e-2


def test_no_decay_ablation_is_worse_than_decay():
    kw = dict(N=2, T=16, samples=2000, budget=1500)
    with_decay, without = fit_neuron("gelu", **kw), fit_neuron("gelu", decay=False, **kw)
    assert with_decay.errors["mse"] < without.errors["mse"]


def test_bad_targets_are_rejected():
    with pytest.raises(KeyError, match="registered"):
        fit_neuron("softplus")
    with pytest.raises(ValueError, match="domain"):
        fit_neuron(torch.sin)
    with pytest.raises(ValueError, match="not finite"):
        fit_neuron(torch.log, domain=(0, 1), budget=10)
    with pytest.raises(ValueError, match="kind"):
        fit_neuron("gelu", kind="lif")


def test_save_load_round_trip(tmp_path, gelu_paper_fit):
    path = gelu_paper_fit.save(tmp_path / "g.json")
    back = FittedNeuron.load(path, expect={"target": "gelu", "N": 4, "T": 16})
    assert back.params == gelu_paper_fit.params and back.domain == (-120.0, 10.0)
    x = torch.linspace(-10, 10, 101)
    torch.testing.assert_close(back.node()(x), gelu_paper_fit.node()(x))


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.update(format="something-else"), "not a fitted-neuron file"),
    (lambda d: d.update(format_version=99), "format_version"),
    (lambda d: d.pop("params"), "missing field"),
    (lambda d: d["params"].update(weight=[1.0]), "params.weight must be a list of 4"),
    (lambda d: d["params"].update(tau_v=[1.0, -1.0, 1.0, 1.0]), "tau_v must be positive"),
    (lambda d: d.update(domain=[3, 1]), "lo < hi"),
    (lambda d: d.update(kind="lif"), "kind"),
])
def test_corrupt_files_raise_clear_errors(tmp_path, gelu_paper_fit, corrupt, message):
    data = gelu_paper_fit.to_dict()
    corrupt(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FittedNeuronError, match=message):
        FittedNeuron.load(path)


def test_truncated_and_mismatched_files(tmp_path, gelu_paper_fit):
    path = gelu_paper_fit.save(tmp_path / "g.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(FittedNeuronError, match="cannot read"):
        FittedNeuron.load(path)
    path = gelu_paper_fit.save(tmp_path / "g.json")
    with pytest.raises(FittedNeuronError, match="T is 16, expected 8"):
        FittedNeuron.load(path, expect={"T": 8})


def test_library_ships_every_registered_combination():
    keys = set(available())
    for target in TARGETS:
        for T in LIBRARY_T:
            assert f"{target}-fs-T{T}" in keys
            for N in LIBRARY_N:
                assert f"{target}-mbe-N{N}-T{T}" in keys


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_library_errors_hold_when_remeasured(target):
    fitted = load_fitted(target, "mbe", N=4, T=16)
    lo, hi = fitted.domain
    assert fitted.errors["mse"] == pytest.approx(independent_mse(fitted, TARGETS[target].fn, lo, hi), rel=1e-3, abs=1e-12)


def test_library_rejects_what_cannot_be_fitted_on_first_use():
    with pytest.raises(ValueError, match=r"N must be an integer in \[1, 64\]"):
        load_fitted("gelu", "mbe", N=0, T=16)
    with pytest.raises(ValueError, match="kind must be"):
        load_fitted("gelu", "lif", N=4, T=16)
