"""The spike-aware objective and the FS library from the signed search."""
import math

import pytest
import torch

from spikingjelly_mbe import fit_neuron
from spikingjelly_mbe.fitting import KINDS, library
from spikingjelly_mbe.fitting.fitted import FittedNeuron


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
    the defaults (Fig. 6(a)'s: seed 0, the default budget and restarts, one thread) gives now."""
    files = sorted(library.LIBRARY_DIR.glob("*-fs-*.json"))
    assert files and all(FittedNeuron.load(p).fit.get("revision", 1) == KINDS["fs"].search_revision for p in files)
    shipped = FittedNeuron.load(library.LIBRARY_DIR / "identity-fs-T8.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the library's and the experiments' setting: the same reductions, the same fit
    try:
        assert fit_neuron("identity", kind="fs", T=8).params == shipped.params
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(shipped.errors["spikes_per_input"])
