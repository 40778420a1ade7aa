"""Any T from 2 to 32: fits made on first use and cached (atomic, verified), and every operator at
T=6 and T=24 against its float op within a derived bound, fast == simulate."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_ops_products import both_modes

from spikingjelly_mbe.fitting import FittedNeuron, fit_neuron, library
from spikingjelly_mbe.ops import SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingSoftmax

torch.set_num_threads(1)


def test_fit_on_first_use_is_cached_verified_and_refitted_when_corrupt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    calls = []

    def fit():
        calls.append(1)
        return fit_neuron("exp2", kind="mbe", N=1, T=3, budget=60)

    expect = {"target": "exp2", "kind": "mbe", "N": 1, "T": 3}
    first = library.cached_fit("exp2-mbe-N1-T3", fit, expect)
    path = tmp_path / "fits" / "exp2-mbe-N1-T3.json"
    assert calls == [1] and path.is_file() and "on first use" in caplog.text
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    again = library.cached_fit("exp2-mbe-N1-T3", fit, expect)
    assert calls == [1] and again.params == first.params  # loaded, not refitted
    assert fit().params == first.params  # deterministic
    data = json.loads(path.read_text())
    data["params"]["gain"] = ["nan"]
    path.write_text(json.dumps(data))
    assert library.cached_fit("exp2-mbe-N1-T3", fit, expect).params == first.params and len(calls) == 3
    assert FittedNeuron.load(path).params == first.params  # the corrupt file was replaced
    with pytest.raises(ValueError, match=r"T must be an integer in \[1, 32\]"):
        library.load_fitted("gelu", "mbe", N=4, T=33)
    with pytest.raises(KeyError, match="registered"):
        library.load_fitted("sinc", "mbe", N=4, T=8)


def modes_agree(op, *inputs):
    """Fast and simulate outputs are equal and so are the statistics; returns the output."""
    fast, stats, simulated, simulated_stats = both_modes(op, *inputs)
    torch.testing.assert_close(fast, simulated, rtol=1e-5, atol=1e-6)
    assert stats == simulated_stats and stats.spikes > 0
    return fast


@pytest.mark.slow  # fits up to four neurons per T on first use (a few seconds each), then reads the cache
@pytest.mark.parametrize("T", [6, 24])
def test_operators_at_unshipped_T_match_float_within_derived_bounds(T):
    g = torch.Generator().manual_seed(T)
    L = 2.0 ** T - 1  # levels of an MBE_Id code: error at most A / (2 L) (Eq. 9)

    a, b = torch.randn(4, 9, generator=g), torch.randn(9, 5, generator=g)
    A1, A2 = float(a.abs().max()), float(b.abs().max())
    d1, d2 = A1 / (2 * L), A2 / (2 * L)
    out = modes_agree(SpikingMatmul(T, ranges=(A1, A2)), a, b)
    bound = a.abs() @ torch.full_like(b, d2) + torch.full_like(a, d1) @ b.abs() + 9 * d1 * d2
    assert torch.all((out - a @ b).abs() <= bound * (1 + 1e-5) + 1e-6)

    gelu = SpikingActivation.gelu(T=T, N=4)
    x = torch.linspace(-8, 8, 2001)
    err = (modes_agree(gelu, x) - F.gelu(x)).abs().max()
    assert float(err) <= gelu.fitted.errors["max_abs"] * 1.05 + 1e-6  # the fit's own dense-grid error

    softmax = SpikingSoftmax(T=T)
    # relative errors of 2^f (neuron, and the input's quantisation to 1/(2L)) and of 1/M (M >= 1)
    eps_e = softmax.exp2.fitted.errors["max_abs"] + math.log(2) / (2 * L)
    recip_min = 1.0 / softmax.reciprocal.fitted.domain[1]
    eps_r = softmax.reciprocal.fitted.errors["max_abs"] / recip_min + 1 / (2 * L)
    d_e, d_r = softmax.e_coder.A / (2 * L), softmax.r_coder.A / (2 * L)  # product codes, scale 2^(1-E) <= 1
    bound = 2 * eps_e + eps_r + d_e * softmax.r_coder.A + d_r * softmax.e_coder.A + d_e * d_r
    s = torch.randn(3, 16, generator=g) * 3
    assert float((modes_agree(softmax, s) - torch.softmax(s, -1)).abs().max()) <= bound * 1.1

    ln = SpikingLayerNorm(16, T=T)
    y = modes_agree(ln, s)
    # z = c 2^-k in (-1, 1) coded to 1/(2L); relative error of the variance from the squares, halved by the
    # square root, plus the rsqrt neuron and its input's and output's codes
    c = s - s.mean(-1, keepdim=True)
    z = c / torch.exp2(torch.frexp(c.abs().amax(-1, keepdim=True))[1].float())
    v = (z ** 2).mean(-1, keepdim=True)
    d_z = 1 / (2 * L)
    eps_v = (2 * d_z + d_z ** 2) / v
    rho_min = 1 / math.sqrt(ln.rsqrt.fitted.domain[1])
    eps_rho = eps_v / 2 + ln.rsqrt.fitted.errors["max_abs"] / rho_min + 3 / (2 * L) + ln.rho_coder.A / (2 * L) / rho_min
    ref = F.layer_norm(s, (16,))
    bound = (d_z / z.abs().clamp_min(d_z) + eps_rho) * ref.abs() * 1.1 + 2 * d_z / v.sqrt()
    assert torch.all((y - ref).abs() <= bound)


def test_a_cached_fit_from_an_older_search_revision_is_refitted(tmp_path, monkeypatch, caplog):
    """FS fits carry their search revision (2: indicator starts); a cached FS fit without one (the
    earlier search) is refitted, an MBE fit without one (revision 1, unchanged) is kept."""
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    calls = []

    def fit(kind):
        calls.append(kind)
        return fit_neuron("exp2", kind=kind, N=1, T=3, samples=500, budget=60)

    for kind, key in (("fs", "exp2-fs-T3"), ("mbe", "exp2-mbe-N1-T3")):
        expect = {"target": "exp2", "kind": kind, "T": 3}
        first = library.cached_fit(key, lambda: fit(kind), expect)
        assert first.fit.get("revision", 1) == (2 if kind == "fs" else 1)
        path = tmp_path / "fits" / f"{key}.json"
        data = json.loads(path.read_text())
        data["fit"].pop("revision", None)
        data["params"]["bias"] += 1.0  # marks the old file
        path.write_text(json.dumps(data))
        again = library.cached_fit(key, lambda: fit(kind), expect)
        if kind == "fs":
            assert again.params == first.params and "revision 1 of the fs search, now 2" in caplog.text
        else:
            assert again.params["bias"] == first.params["bias"] + 1.0  # kept
    assert calls == ["fs", "fs", "mbe"]
