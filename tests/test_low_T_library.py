"""The shipped low-T neurons (T in {3, 4, 5, 6}): what a default conversion loads is shipped (no fit runs),
each fit's error holds when remeasured, stays below its measured bound and below a plain T-digit code of
the same range; the spike-aware objective; the FS library from the signed search."""
import math

import pytest
import torch

from spikingjelly_mbe import fit_neuron, load_fitted
from spikingjelly_mbe.cache import CACHE_ENV
from spikingjelly_mbe.fitting import KINDS, library
from spikingjelly_mbe.fitting.build_library import LOW_T, LOW_T_SPIKE_TOLERANCE, LOW_T_WHOLE, low_t_jobs
from spikingjelly_mbe.fitting.fitted import FittedNeuron, fit_key
from spikingjelly_mbe.fitting.targets import RECTIFIED, TARGETS
from spikingjelly_mbe.mbe import OpSettings

JOBS = low_t_jobs("")
# about 1.5 times the largest MSE measured over T in {3, 4, 5, 6} of each target's shipped fit (build_library --low-T;
# the largest is T=3's: 8.8e-6, 1.24e-5, 2.92e-5, 4.88e-5, 4.8e-6, 5.6e-6, 7.5e-6)
BOUNDS = {"gelu_residual": 1.3e-5, "gelu_tanh_residual": 1.9e-5, "silu_residual": 4.4e-5, "tanh": 7.3e-5,
          "exp2": 7.2e-6, "reciprocal": 8.4e-6, "rsqrt": 1.1e-5}


@pytest.fixture
def no_fitting(monkeypatch, tmp_path):
    """Fitting on first use off and an empty project cache: only shipped fits load."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(library, "_fitter", [None])
    library._load.cache_clear()
    yield
    library._load.cache_clear()


@pytest.mark.parametrize("T", LOW_T)
def test_a_default_conversions_neurons_at_low_T_are_shipped(no_fitting, T):
    settings = OpSettings(T=T)
    for activation in (*RECTIFIED, *LOW_T_WHOLE):
        settings.fitted(activation)
    settings.softmax()
    settings.layer_norm((8,), None, None, 1e-5)
    settings.rms_norm((8,), None, 1e-5)
    with pytest.raises(LookupError, match="fitting on first use is off"):  # the fixture does stop a fit
        load_fitted("gelu", "mbe", N=3, T=T)


def independent_mse(fitted: FittedNeuron, n: int = 10_000) -> float:
    lo, hi = fitted.domain
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    with torch.no_grad():
        return float(((fitted.node().double()(x) - TARGETS[fitted.target].fn(x)) ** 2).mean())


def uniform_code_mse(fitted: FittedNeuron, n: int = 10_000) -> float:
    """The MSE of the exact target on a T-digit uniform code of its input over the fit's domain,
    ``f(lo + step round((x - lo) / step))``, ``step = (hi - lo) / (2^T - 1)``: what T digits of the
    input give a lookup table of the exact function."""
    lo, hi = fitted.domain
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    step = (hi - lo) / (2 ** fitted.T - 1)
    fn = TARGETS[fitted.target].fn
    return float(((fn(lo + step * torch.round((x - lo) / step)) - fn(x)) ** 2).mean())


@pytest.mark.parametrize("job", JOBS, ids=lambda j: fit_key(j[0], j[1], j[2], j[3], j[4]))
def test_a_low_T_fit_holds_its_error_below_its_bound_and_a_uniform_code(no_fitting, job):
    target, kind, N, T, split_bits, _, tolerance = job
    fitted = load_fitted(target, kind, N=N, T=T, split_bits=split_bits)
    assert fitted.fit["spike_tolerance"] == tolerance == LOW_T_SPIKE_TOLERANCE
    mse = independent_mse(fitted)
    assert fitted.errors["mse"] == pytest.approx(mse, rel=1e-3, abs=1e-14)
    assert mse <= BOUNDS[target]
    assert mse < uniform_code_mse(fitted)


def test_the_spike_aware_objective_fires_no_more_spikes_within_its_tolerance():
    """``samples`` below the search's 3000: the search scores every sample, so the bound on the search
    MSE is the bound on the fit's MSE (up to the float32 search against the float64 solve)."""
    options = dict(N=2, T=4, samples=1000, budget=400, restarts=1)
    plain = fit_neuron("silu_residual", **options)
    frugal = fit_neuron("silu_residual", spike_tolerance=0.25, **options)
    assert "spike_tolerance" not in plain.fit and frugal.fit["spike_tolerance"] == 0.25
    assert frugal.errors["mse"] <= 1.25 * plain.errors["mse"] * (1 + 1e-4)
    assert frugal.errors["spikes_per_input"] <= plain.errors["spikes_per_input"]
    with pytest.raises(ValueError, match="spike_tolerance must be a finite number >= 0"):
        fit_neuron("silu_residual", spike_tolerance=-0.1, **options)


def test_the_fs_library_comes_from_the_signed_search(monkeypatch):
    """Every shipped FS file is of the FS search's current revision, and one of them is what a fit with
    the defaults (Fig. 6(a)'s: seed 0, the default budget and restarts, one thread) gives now, to the last
    digits another CPU's vector units round differently (1e-12 relative)."""
    files = sorted(library.LIBRARY_DIR.glob("*-fs-*.json"))
    assert files and all(FittedNeuron.load(p).fit.get("revision", 1) == KINDS["fs"].search_revision for p in files)
    shipped = FittedNeuron.load(library.LIBRARY_DIR / "identity-fs-T8.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the library's and the experiments' setting: the same reductions, the same fit
    try:
        params = fit_neuron("identity", kind="fs", T=8).params
        assert params.keys() == shipped.params.keys()
        for key, value in shipped.params.items():
            assert params[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(shipped.errors["spikes_per_input"])
