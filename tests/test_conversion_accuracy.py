"""Converted small random-init models against their ANN: T=16 agreement, error budget, simulate == fast,
and the agreement-vs-T table."""
import pytest
import torch

from spikingjelly_mbe.conversion import Calibration, convert, set_mode
from spikingjelly_mbe.conversion.zoo import agreement, build, main_output, make_batch
from spikingjelly_mbe.fitting import get_target
from spikingjelly_mbe.ops import SpikingActivation

torch.set_num_threads(1)
SAMPLES = {"vit": 128, "bert": 128, "roberta": 128, "gpt2": 8, "llama": 8, "dinov2": 8}  # gpt2: 8 x 16 tokens
FAMILIES = ("vit", "bert", "roberta", "gpt2", "llama", "dinov2")
# Issue 4's bars: cosine >= 0.999 and argmax agreement >= 99 % at T=16. Measured this session with
# the default 8-basis activations: ViT 0.99913 / 100 %, BERT 0.99990 / 99.2 %, RoBERTa 0.99981 / 100 %,
# GPT-2 0.99997 / 100 %. With the paper's N=4 activations they were 0.9968 / 97.7 %, 0.9989 / 97.7 %,
# 0.9962 / 98.4 %, 0.99975 / 98.4 % (test_eight_basis_activations_close_the_gap).
COSINE_BAR, ARGMAX_BAR = 0.999, 0.99


def run(model, batch):
    with torch.no_grad():
        return main_output(model(**batch) if isinstance(batch, dict) else model(batch))


def score(family, T=16, headroom=1.0, **options):
    ann = build(family)
    calibration = Calibration(data=[make_batch(family, 16, seed=100 + s) for s in range(4)], headroom=headroom)
    snn = convert(ann, T=T, calibration=calibration, **options)
    batch = make_batch(family, SAMPLES[family], seed=1)
    return agreement(run(ann, batch), run(snn, batch))


@pytest.fixture(scope="module")
def t16():
    return {}


def cached(t16, family):
    if family not in t16:
        t16[family] = score(family)
    return t16[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_t16_cosine(t16, family):
    assert cached(t16, family)["cosine"] >= COSINE_BAR


@pytest.mark.parametrize("family", ("vit", "bert", "roberta", "gpt2"))
def test_t16_argmax(t16, family):
    assert cached(t16, family)["argmax"] >= ARGMAX_BAR


def test_eight_basis_activations_close_the_gap(t16):
    """The paper's N=4 activations (``activation_N=None`` with ``N=4``, one neuron for the whole
    GELU) leave ViT below the bar; eight bases lift it (the error ratio follows the fits' MSE ratio,
    about 13x), and so does the rectified form with four bases."""
    paper = score("vit", activation_N=None, rectified_activations=False)
    assert paper["cosine"] < COSINE_BAR <= cached(t16, "vit")["cosine"]
    assert 1 - cached(t16, "vit")["cosine"] < (1 - paper["cosine"]) / 2
    assert score("vit", activation_N=None)["cosine"] >= COSINE_BAR


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_activation_fits_cost_accuracy(family, monkeypatch):
    """With each activation neuron replaced by its exact target function, the converted model
    (spiking products, softmax and norms, masks, heads, weight layers on input spikes) matches the
    ANN almost exactly at full precision (``budget=None``), and within the default precision
    budget's noise (2^-9 of each operand's RMS) under it. The headroom keeps the products from
    clamping values the 64 calibration samples never reached. The ranges stay as calibrated (no
    ``fisher_ranges``, which moves precision across channels away from the budget's)."""
    monkeypatch.setattr(SpikingActivation, "compute", lambda self, x: get_target(self.fitted.target).fn(x))
    result = score(family, headroom=1.5, budget=None, fisher_ranges=False)
    assert result["cosine"] >= 0.9999 and result["argmax"] >= 0.99, result
    budgeted = score(family, headroom=1.5, fisher_ranges=False)
    assert budgeted["cosine"] >= 0.9995 and budgeted["argmax"] >= 0.98, budgeted


@pytest.mark.parametrize("family", ["vit", "bert", "gpt2"])
def test_simulate_equals_fast(family):
    """Step-by-step spikes and the fast path agree to float64 rounding: every operator computes
    the same sums, and float64 keeps rounding far from the spike thresholds (in float32 a 1e-7
    difference can flip one spike of a discontinuous neuron and move an output by a step)."""
    ann = build(family, hidden=16).double()
    batch = make_batch(family, 2, seq_len=6)
    batch = batch.double() if isinstance(batch, torch.Tensor) else batch
    snn = convert(ann, calib_data=[batch])
    fast = run(snn, batch)
    simulated = run(set_mode(snn, "simulate"), batch)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(simulated, fast, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_agreement_vs_T_table():
    rows = {family: {T: score(family, T) for T in (8, 10, 12, 16)} for family in ("vit", "bert", "gpt2")}
    print("\nfamily   T   min cosine   argmax agreement")
    for family, by_t in rows.items():
        for T, r in by_t.items():
            print(f"{family:6} {T:3d}   {r['cosine']:.6f}     {r['argmax']:.4f}")
    assert all(r["cosine"] >= 0.99 for by_t in rows.values() for r in by_t.values())
