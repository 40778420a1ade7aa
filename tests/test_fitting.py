"""Fitting: the paper's error bars, determinism, parameter files and the shipped library."""
import json

import pytest
import torch
import torch.nn.functional as F

from spikingjelly_mbe import FittedNeuron, FittedNeuronError, available, fit_neuron, load_fitted
from spikingjelly_mbe.fitting import KINDS, SPLIT_TARGETS, TARGETS, fit_key
from spikingjelly_mbe.fitting.kinds import MBEKind
from spikingjelly_mbe.fitting.targets import RECTIFIED
from spikingjelly_mbe.fitting.build_library import LIBRARY_N, LIBRARY_T, RESIDUAL_N


def independent_mse(fitted: FittedNeuron, fn, lo: float, hi: float, n: int = 10_000) -> float:
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    with torch.no_grad():
        return float(((fitted.node().double()(x) - fn(x)) ** 2).mean())


@pytest.fixture(scope="module")
def gelu_paper_fit():
    return fit_neuron("gelu", N=4, T=16, domain=(-120, 10), samples=4000, budget=3000, seed=0)


def test_gelu_mbe_beats_paper_bar_on_paper_protocol(gelu_paper_fit):
    assert independent_mse(gelu_paper_fit, F.gelu, -120, 10) <= 1e-4


@pytest.mark.slow  # a full-budget fit
def test_gelu_mbe_beats_bar_where_curvature_dominates():
    fitted = fit_neuron("gelu", N=4, T=16, domain=(-8, 8), samples=4000, budget=3000, seed=0)
    assert independent_mse(fitted, F.gelu, -8, 8) <= 3e-4


@pytest.mark.slow  # a second full-budget fit
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


def test_fit_key_is_the_one_file_name_format():
    assert fit_key("gelu", "mbe", 4, 16) == "gelu-mbe-N4-T16"
    assert fit_key("gelu", "fs", 4, 16) == "gelu-fs-T16"  # one basis: N is not part of the key
    assert fit_key("exp2", "mbe", 4, 12, split_bits=3) == "exp2-split3-mbe-N4-T12"
    assert fit_key("gelu", "mbe", 8, 12, span=4.0) == "gelu-mbe-N8-T12-pm4"
    assert load_fitted("silu", "fs", N=3, T=8).key == "silu-fs-T8"


def test_library_ships_every_registered_combination():
    keys = set(available())
    residuals = set(RECTIFIED.values())
    for target in TARGETS:
        for T in LIBRARY_T:
            for kind in KINDS if target not in residuals else ("mbe",):
                for N in LIBRARY_N if target not in residuals else RESIDUAL_N:
                    assert fit_key(target, kind, N, T) in keys
    for target in SPLIT_TARGETS:  # the remainder neurons of Softmax and the norms, in the same home
        for T in LIBRARY_T:
            assert fit_key(target, "mbe", 4, T, split_bits=3) in keys


@pytest.mark.parametrize("target, domain", [("exp2", (0.0, 0.125)), ("reciprocal", (1.0, 1.125)),
                                            ("rsqrt", (1.0, 1.375))])
def test_remainder_fits_are_keyed_with_split_bits(target, domain):
    """2^b = 8 segments: exp2 on [0, 1/8]; v^p on [1, 1 + (width / 8) / lo] (width 1 and 3, lo 1)."""
    fitted = load_fitted(target, "mbe", N=4, T=12, split_bits=3)
    assert fitted.domain == domain and fitted.N == 4 and fitted.T == 12
    assert fitted.errors["mse"] == pytest.approx(independent_mse(fitted, TARGETS[target].fn, *domain), rel=1e-3,
                                                 abs=1e-14)
    with pytest.raises(ValueError, match=r"split_bits must be an integer in \[0, T=12\)"):
        load_fitted(target, "mbe", N=4, T=12, split_bits=12)
    with pytest.raises(ValueError, match="split_bits=3 needs a range-reduced target"):
        load_fitted("gelu", "mbe", N=4, T=12, split_bits=3)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_registered_kind_fits_saves_loads_and_builds_its_node(tmp_path, kind):
    fitted = fit_neuron(lambda x: x ** 2, kind=kind, N=2, T=6, domain=(0, 1), samples=500, budget=120)
    assert fitted.kind == kind and fitted.N == KINDS[kind].bases(2)
    node = FittedNeuron.load(fitted.save(tmp_path / f"{kind}.json")).node()
    assert type(node) is KINDS[kind].node_class
    assert fitted.errors["mse"] == pytest.approx(independent_mse(fitted, lambda x: x ** 2, 0, 1), rel=1e-3)


def test_a_new_kind_is_one_registry_entry(monkeypatch, tmp_path):
    """A kind registered under a new name (here: MBE's parametrisation) flows through fitting, the
    file format, keys and node building with no other change."""
    class Renamed(MBEKind):
        name = "mbe_renamed"
    monkeypatch.setitem(KINDS, "mbe_renamed", Renamed())
    new = fit_neuron("tanh", kind="mbe_renamed", N=2, T=6, samples=500, budget=120)
    old = fit_neuron("tanh", kind="mbe", N=2, T=6, samples=500, budget=120)
    assert new.params == old.params and new.key == "tanh-mbe_renamed-N2-T6"
    back = FittedNeuron.load(new.save(tmp_path / "new.json"), expect={"kind": "mbe_renamed"})
    x = torch.linspace(-8, 8, 301)
    torch.testing.assert_close(back.node()(x), old.node()(x))


@pytest.mark.parametrize("call", [lambda: fit_neuron("gelu", kind="lif"), lambda: load_fitted("gelu", "lif"),
                                  lambda: fit_key("gelu", "lif", 4, 16)])
def test_unknown_kind_names_the_argument_and_the_registered_kinds(call):
    with pytest.raises(ValueError, match=r"kind must be one of \['fs', 'mbe'\] \(the registered neuron kinds"):
        call()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_library_errors_hold_when_remeasured(target):
    fitted = load_fitted(target, "mbe", N=4, T=16)
    lo, hi = fitted.domain
    assert fitted.errors["mse"] == pytest.approx(independent_mse(fitted, TARGETS[target].fn, lo, hi), rel=1e-3, abs=1e-12)


def test_library_rejects_what_cannot_be_fitted_on_first_use():
    with pytest.raises(ValueError, match="N must be >= 1"):
        load_fitted("gelu", "mbe", N=0, T=16)
    with pytest.raises(ValueError, match=r"N must be an integer in \[1, 64\]"):
        load_fitted("gelu", "mbe", N=65, T=16)
    with pytest.raises(ValueError, match="kind must be"):
        load_fitted("gelu", "lif", N=4, T=16)


# The original FS-neurons authors' published swish parameters (Stoeckl & Maass 2021, repository
# christophstoeckl/FS-neurons, fs_weights.py: K=16 steps on [-8, 12]) and their ReLU neuron (K=10,
# alpha=25: thresholds, resets and outputs 25 * 2^-(t+1)), as data: the bar the signed FS search must
# approach / meet on the same target, domain and K.
PUBLISHED_SWISH = dict(
    h=[0.7844085, 1.7550646, 1.4212719, 1.9244663, 1.4400164, 1.9249276, 1.6100428, 1.29061, 0.83985287, 3.0827985,
       0.43503317, 0.5155389, 0.3269445, 7.618048, -14.419675, 0],
    d=[0.40088242, 1.8856316, 1.4915457, 1.947229, 1.4717816, 1.9147849, 1.6389303, 1.2934641, 0.8703124, 0.68460804,
       0.44262582, 0.32832766, 0.13907616, -0.26217145, 0.23736191, -0.14830568],
    T=[0.05946945, 1.6541206, 1.3066754, 1.3267198, 1.1000695, 1.2308974, 1.1188028, 0.9472501, 0.5447531, 1.0236325,
       0.11921431, -0.12855051, -0.44731247, -2.1383545, 1., -4.109145])


def published_fs_mse(vth, reset, out, fn, lo, hi):
    """The original FS neuron (spike when v > Vth[t], v -= h[t], output += d[t]) in plain float64
    PyTorch, on the paper's 10,000 evenly spaced points."""
    x = torch.linspace(lo, hi, 10_000, dtype=torch.float64)
    v, y = x.clone(), torch.zeros_like(x)
    for t in range(len(vth)):
        s = (v > vth[t]).double()
        v, y = v - reset[t] * s, y + out[t] * s
    return float(((y - fn(x)) ** 2).mean())


@pytest.mark.slow
def test_signed_fs_fit_against_the_published_fs_parameters():
    relu = [25 * 2.0 ** -(t + 1) for t in range(10)]
    published_relu = published_fs_mse(relu, relu, relu, torch.relu, -25, 25)
    assert published_relu == pytest.approx(9.9e-5, rel=0.05)
    fitted = fit_neuron(torch.relu, kind="fs", T=10, domain=(-25, 25))
    assert fitted.errors["mse"] <= published_relu
    assert independent_mse(fitted, torch.relu, -25, 25) <= published_relu
    published_swish = published_fs_mse(PUBLISHED_SWISH["T"], PUBLISHED_SWISH["h"], PUBLISHED_SWISH["d"], F.silu, -8, 12)
    assert published_swish == pytest.approx(3.44e-3, rel=0.01)
    swish = fit_neuron(F.silu, kind="fs", T=16, domain=(-8, 12))
    assert swish.errors["mse"] <= published_swish  # measured 5.4e-4
    assert independent_mse(swish, F.silu, -8, 12) <= published_swish


def test_fs_fit_is_deterministic_and_its_indicator_starts_count():
    """The same seed gives identical FS parameters; on a target with a bend (SiLU at K=8) the
    search, which may start from indicator steps at the curvature's quantiles, beats the best plain
    binary expansion of any sub-interval on a fine grid (measured independently of the fit)."""
    kw = dict(kind="fs", T=8, domain=(-8, 12), samples=2000, budget=1500)
    first, again = fit_neuron(F.silu, **kw), fit_neuron(F.silu, **kw)
    assert first.params == again.params
    x = torch.linspace(-8, 12, 2000, dtype=torch.float64)
    best_binary = float("inf")
    for a in torch.linspace(-8, 12, 41).tolist():
        for b in torch.linspace(-8, 12, 41).tolist():
            if b > a:
                bits = [(b - a) * 2.0 ** -(t + 1) for t in range(8)]
                v, spikes = x - a, []
                for t in range(8):
                    s = (v >= bits[t]).double()
                    v, spikes = v - bits[t] * s, spikes + [s]
                A = torch.stack(spikes + [torch.ones_like(x)], 1)
                coef = torch.linalg.lstsq(A, F.silu(x)[:, None]).solution
                best_binary = min(best_binary, float(((A @ coef)[:, 0] - F.silu(x)).pow(2).mean()))
    assert independent_mse(first, F.silu, -8, 12, n=2000) < best_binary  # measured 3.7e-3 < 5.6e-3


@pytest.mark.parametrize("span", [0, -1.0, float("inf"), float("nan"), True, "2"])
def test_load_fitted_on_names_a_bad_span(span):
    from spikingjelly_mbe.fitting import load_fitted_on
    with pytest.raises(ValueError, match="span must be a positive finite number"):
        load_fitted_on("tanh", 8, 16, span)


def test_multistart_keeps_the_lowest_mse_layout_and_is_deterministic():
    """``multistart`` runs the same search from each of the kind's starting layouts (the default
    first) and keeps the lowest MSE: never worse than the default fit, measured independently."""
    kw = dict(N=2, T=8, domain=(-8, 8), samples=1000, budget=200)
    plain = fit_neuron("gelu", **kw)
    multi, again = fit_neuron("gelu", multistart=True, **kw), fit_neuron("gelu", multistart=True, **kw)
    assert multi.params == again.params
    assert multi.fit["layouts"] == 6 and 0 <= multi.fit["layout"] < 6  # 2 sign patterns x 3 widths
    assert multi.fit["evaluations"] >= 6 * 200
    assert independent_mse(multi, F.gelu, -8, 8) <= independent_mse(plain, F.gelu, -8, 8)
    fs = fit_neuron("gelu", kind="fs", T=6, domain=(-8, 8), samples=500, budget=150, multistart=True)
    assert fs.fit["layouts"] == 1  # FS has one starting layout
    with pytest.raises(TypeError, match="multistart must be True or False"):
        fit_neuron("gelu", multistart=1)
