"""Bias-corrected rounding: a weight layer's expected rounding shift ``W E[x_hat - x]``, measured on the
calibration batches, is subtracted from its bias; the corrected layer's mean output error on those batches
is zero, in both modes and on every backend, and the correction travels in the ``state_dict``."""
import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert, kernels
from spikingjelly_mbe.conversion.calibration import Calibration, calibrate
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.ops import SpikingWeightInput


def skewed_batches(shape, channels, dim, seed=0, count=3):
    """Positive, skewed channels (squares of Gaussians) around offsets, spreads over 30x: most values of
    a quiet channel sit below one step of a 4-digit code, so its rounding error has a large mean."""
    g = torch.Generator().manual_seed(seed)
    view = [1] * len(shape)
    view[dim] = channels
    spread = torch.logspace(-1.0, 0.5, channels).view(view)
    offset = torch.linspace(-1.0, 1.0, channels).view(view)
    return [torch.randn(*shape, generator=g).square() * spread + offset for _ in range(count)]


def calibrated(layer, batches, T=4, **options):
    op = SpikingWeightInput(layer, T=T, **options)
    calibrate(op, Calibration(data=batches))
    return op


def plain_code(x, ranges, centers, T):
    """The T-digit sign-magnitude code of Eq. 9 per channel (last dimension), in plain PyTorch:
    ``c + A sign(u) floor((2^T - 1) |u| + 1/2) / (2^T - 1)``, ``u = (x - c) / A``, in float32 as the
    operators compute it (a channel's calibrated peak sits at ``u = 1/2``, a tie of the rounding)."""
    levels = 2.0 ** T - 1
    u = (x - centers) / ranges
    q = torch.floor(levels * u.abs() + 0.5).clamp(max=levels)
    return centers.double() + ranges.double() * u.sign().double() * q.double() / levels


def test_the_correction_is_the_weights_times_the_mean_rounding_error():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    batches = skewed_batches((4, 6, 12), 12, -1)
    op = calibrated(layer, batches, bias_correction=True)
    ranges, centers = op.channel_ranges, op.channel_centers
    errors = torch.cat([(plain_code(x, ranges, centers, 4) - x.double()).reshape(-1, 12) for x in batches])
    expected = errors.mean(0) @ layer.weight.detach().double().T
    assert op.rounding_bias.shape == (5,)
    assert float(expected.abs().max()) > 1e-2  # a real shift to correct
    torch.testing.assert_close(op.rounding_bias.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make, shape, dim", [
    (lambda: nn.Linear(12, 5), (4, 6, 12), -1),
    (lambda: nn.Conv2d(12, 5, 3, padding=1), (2, 12, 5, 5), 1),  # padded: the mean over every output position
])
def test_the_corrected_mean_output_error_on_the_calibration_data_is_zero_in_both_modes(make, shape, dim):
    torch.manual_seed(1)
    layer = make()
    batches = skewed_batches(shape, 12, dim, seed=2)
    plain, corrected = calibrated(layer, batches), calibrated(layer, batches, bias_correction=True)
    assert plain.rounding_bias is None

    def mean_error(op):
        with torch.no_grad():
            errors = [op(x) - layer(x) for x in batches]
        others = [d for d in range(len(shape)) if d != dim % len(shape)]
        return torch.stack([e.double().mean(others) for e in errors]).mean(0)

    before = mean_error(plain)
    assert float(before.abs().max()) > 1e-2
    for mode in ("fast", "simulate"):
        corrected.mode = mode
        assert float(mean_error(corrected).abs().max()) < 1e-4 * float(before.abs().max())
    x = batches[0] * 1.5  # other inputs too, beyond the ranges: simulate == fast
    corrected.mode = "simulate"
    with torch.no_grad():
        simulated = corrected(x)
        corrected.mode = "fast"
        fast = corrected(x)
        with kernels.disabled():
            eager = corrected(x)
    torch.testing.assert_close(fast, simulated, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast, eager)  # the C kernels (when built) and the torch path add the same bias
    with torch.no_grad():
        torch.testing.assert_close(fast - plain(x), -corrected.rounding_bias.view([-1] + [1] * (len(shape) - 2))
                                   .expand_as(fast) if dim == 1 else -corrected.rounding_bias.expand_as(fast))


def test_a_conversion_with_the_correction_restores_it_from_the_state_dict_and_refuses_other_settings():
    family = "llama_lm"

    def converted(seeds, **options):
        return convert(build(family, layers=1), calib_data=[make_batch(family, 2, seed=s) for s in seeds], T=4,
                       **options)

    saved, fresh = converted((1, 2), bias_correction=True), converted((3, 4), bias_correction=True)
    biases = {k: v for k, v in saved.state_dict().items() if k.endswith("rounding_bias")}
    assert biases and all(v is not None and v.abs().max() > 0 for v in biases.values())
    x = make_batch(family, 2, seed=5)
    with torch.no_grad():
        expected = main_output(saved(**x) if isinstance(x, dict) else saved(x))
        result = fresh.load_state_dict(saved.state_dict())
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(main_output(fresh(**x) if isinstance(x, dict) else fresh(x)), expected)
    with pytest.raises(ValueError, match="bias_correction"):
        converted((1, 2)).load_state_dict(saved.state_dict())


def test_bias_correction_must_be_a_bool():
    with pytest.raises(ValueError, match="bias_correction must be True or False"):
        SpikingWeightInput(nn.Linear(3, 2), T=4, bias_correction=1)
