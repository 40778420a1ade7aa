"""Centred codes (issue 30): values whose nonzero magnitudes lie in a known band ``[floor, A]`` coded as a
centre spike plus ``T`` signed digits of the offset (``IdentityCoder(floor=...)``), against their closed
form, the step-by-step simulation and the plain code of ``[0, A]``."""
import pytest
import torch
import torch.nn.functional as F

from spikingjelly_mbe.ops import SpikingLayerNorm, SpikingRMSNorm, SpikingSoftmax
from spikingjelly_mbe.ops.coding import CODES, IdentityCoder
from spikingjelly_mbe.ops.products import product_sops, spike_product


def band_input() -> torch.Tensor:
    """Signed values on a fine grid of the band [1/2, 1], below it and exact zeros (float64)."""
    band = torch.linspace(0.5, 1.0, 4001, dtype=torch.float64)
    below = torch.linspace(0.0, 0.5, 401, dtype=torch.float64)[1:-1]
    return torch.cat([band, -band, below, -below, torch.zeros(3, dtype=torch.float64)])


@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("T", [2, 4, 6])
def test_a_centred_code_is_its_centre_plus_half_a_step_of_signed_digits(code, T):
    """On ``[1/2, 1]``: ``value = sign(x) (3/4 + q 1/(4L) sign(|x| - 3/4))``, ``q = floor(|(|x| - 3/4)| 4L + 1/2)``
    (``L`` the code's levels), within ``1/(8L)`` of ``x`` and unbiased: a quarter of the plain code's error
    bound ``1/(2L)``, which it reaches there. Below ``1/4`` it codes 0 and fires nothing, on ``[1/4, 1/2)``
    the band's bottom (error below 1/4); every nonzero code fires the centre once beside its digits."""
    x = band_input()
    coder, plain = IdentityCoder(T, 1.0, code, floor=0.5), IdentityCoder(T, 1.0, code)
    (centred, _), (uniform, _) = coder.encode(x, False, (-1.0, 1.0)), plain.encode(x, False, (-1.0, 1.0))
    levels = CODES[code].levels(T)
    offset = x.abs() - 0.75
    q = torch.floor(offset.abs() * 4 * levels + 0.5)
    in_band = x.abs() >= 0.5
    expected = torch.sign(x) * (0.75 + torch.sign(offset) * q / (4 * levels))
    torch.testing.assert_close(centred.value[in_band], expected[in_band], rtol=0, atol=1e-7)
    error = (centred.value - x)[in_band]
    assert float(error.abs().max()) <= 1 / (8 * levels) + 2.0 ** -22  # the float32 step's rounding
    assert abs(float(error.mean())) <= 1e-3 / levels
    assert float((uniform.value - x)[in_band].abs().max()) >= 0.9 / (2 * levels)
    torch.testing.assert_close(centred.counts[in_band], CODES[code].count(q[in_band], T) + 1, rtol=0, atol=0)
    tiny, bottom = x.abs() < 0.25, ~in_band & (x.abs() >= 0.25)
    assert torch.all(centred.value[tiny] == 0) and torch.all(centred.counts[tiny] == 0)
    torch.testing.assert_close(centred.value[bottom], 0.5 * torch.sign(x[bottom]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("code", list(CODES))
def test_a_centred_code_simulated_fires_its_centre_as_a_spike_slot_of_the_product(code):
    """Simulate mode: the centre is one more spike slot of weight ``c``, so the spikes decode to fast mode's
    value, count its spikes, and ``D = d d^T`` of the product holds it: the simulated product and its
    coincidences equal fast mode's (a float32 ``A`` off the band: the e code's ``[1/2, 1.0015]``)."""
    x = band_input()[::7] * 1.0015
    coder = IdentityCoder(4, 1.0015, code, floor=0.5)
    (fast, _), (sim, clamped) = coder.encode(x, False), coder.encode(x, True)
    assert clamped == 0 and sim.spikes.shape[-1] == 5 and float(sim.weights[0]) == coder.centre
    torch.testing.assert_close(sim.value, fast.value, rtol=0, atol=0)
    torch.testing.assert_close(sim.spikes @ sim.weights, fast.value, rtol=0, atol=1e-12)
    assert torch.equal(sim.counts, fast.counts) and torch.equal((sim.spikes != 0).sum(-1).to(sim.counts), sim.counts)
    other = IdentityCoder(4, 1.0, code, floor=0.5).encode(x.flip(0), True)[0]
    torch.testing.assert_close(spike_product(sim, other, True), fast.value * other.value, rtol=1e-12, atol=1e-12)
    coincidences = torch.einsum("...i,...j->", (sim.spikes != 0).double(), (other.spikes != 0).double())
    assert float(product_sops(sim, other)) == float(coincidences)
    with pytest.raises(ValueError, match=r"floor must be a number in \[0, A=1.0\)"):
        IdentityCoder(4, 1.0, code, floor=1.0)
    with pytest.raises(ValueError, match="0 with shift_overflow"):
        IdentityCoder(4, 1.0, code, shift_overflow=True, floor=0.5)
    with pytest.raises(ValueError, match=r"range A=0.5 \(rounded to float32\) must lie above its floor=0.5"):
        IdentityCoder(4, 0.500000001, code, floor=0.5)  # above the floor, not once rounded
    with pytest.raises(ValueError, match=r"range A=0.4.* must lie above its floor=0.5"):
        IdentityCoder(4, 1.0, code, floor=0.5).set_range(0.4)


@pytest.mark.parametrize("code", ["signed", "ternary"])
def test_centred_codes_cut_the_error_of_softmax_and_the_norms_at_T4(code):
    """At T=4, rows of 197 logits of SD 2.5 and rows with two outlier channels: the centred codes of ``e``,
    ``1/M``, the norms' mantissas and ``1/sqrt(M)`` lower the RMS error (measured: Softmax 0.54x signed,
    0.52x ternary; LayerNorm 0.53x, 0.61x; RMSNorm 0.59x, 0.53x) for one spike more per element and, in
    Softmax, the codes of the tail its exponents now reach (``2^-3T`` to ``2^-2T``: 1.24 spikes in all)."""
    g = torch.Generator().manual_seed(30)
    x, h = 2.5 * torch.randn(32, 197, generator=g), torch.randn(16, 128, generator=g)
    h[:, [3, 17]] = h[:, [3, 17]] * 40 + 25
    cases = ((lambda c: SpikingSoftmax(T=4, code=code, centered_codes=c), x, torch.softmax(x, -1)),
             (lambda c: SpikingLayerNorm(128, T=4, code=code, centered_codes=c), h, F.layer_norm(h, (128,))),
             (lambda c: SpikingRMSNorm(128, T=4, code=code, centered_codes=c), h, F.rms_norm(h, (128,))))
    for make, inputs, reference in cases:
        errors, spikes = [], []
        for centered in (True, False):
            op = make(centered)
            with torch.no_grad():
                errors.append(float((op(inputs) - reference).square().mean().sqrt()))
            spikes.append(op.op_stats().spikes / inputs.numel())
        assert errors[0] <= 0.75 * errors[1], (errors, type(op).__name__)
        assert spikes[0] <= spikes[1] + 1.3


def test_a_centred_code_is_not_coded_by_the_digits_kernel_alone():
    """``fused`` codes the ``T`` digits of ``[-A, A]`` in one compiled pass; a centred coder's code is its
    centre plus the digits of the offset (:meth:`IdentityCoder.encode`), so ``fused`` refuses it by name
    rather than return the digits of ``x`` itself (0.25 for 0.6 at ``floor=0.5``)."""
    coder = IdentityCoder(4, 1.0, "signed", floor=0.5)
    with pytest.raises(ValueError, match=r"floor=0.5.*call encode\(\)"):
        coder.fused(torch.tensor([0.6, -0.9]))
