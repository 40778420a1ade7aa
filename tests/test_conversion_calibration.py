"""Calibration of the product ranges, batch formats, and state reset between forwards."""
import pytest
import torch

from spikingjelly_mbe.conversion import Calibration, convert, set_mode
from spikingjelly_mbe.conversion.calibration import pending
from spikingjelly_mbe.conversion.options import reset_states
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.ops import SpikingMatmul, SpikingProduct

torch.set_num_threads(1)


def products(model):
    return {p: m for p, m in model.named_modules() if isinstance(m, (SpikingProduct, SpikingMatmul))}


def test_no_data_and_no_ranges_is_an_error():
    with pytest.raises(ValueError, match="calib_data"):
        convert(build("vit"))


def test_explicit_ranges_replace_the_observed_ones():
    snn = convert(build("gpt2"), calibration=Calibration(data=[make_batch("gpt2", 2)], ranges={"*": (4.0, 4.0)}))
    assert products(snn) and not pending(snn)
    assert {op.ranges for op in products(snn).values()} == {(4.0, 4.0)}


def test_explicit_ranges_still_need_a_batch_to_see_the_model():
    with pytest.raises(ValueError, match="calib_data"):
        convert(build("gpt2"), calibration=Calibration(ranges={"*": (4.0, 4.0)}))


def test_attention_probabilities_get_range_one():
    snn = convert(build("bert"), calibration=Calibration(data=[make_batch("bert", 4)],
                                                         ranges={"*.layer.0.*.context": (2.0, 3.0)}), budget=None)
    ranges = {p: op.ranges for p, op in products(snn).items()}
    assert ranges["bert.encoder.layer.0.attention.self.spiking_attention.context"] == (2.0, 3.0)
    assert ranges["bert.encoder.layer.1.attention.self.spiking_attention.context"][0] == 1.0
    assert ranges["bert.encoder.layer.1.attention.self.spiking_attention.scores"][0] != 1.0


def test_num_batches_caps_the_data_read():
    seen = []

    def batches():
        for s in range(5):
            seen.append(s)
            yield make_batch("vit", 2, seed=s)

    snn = convert(build("vit"), calibration=Calibration(data=batches(), num_batches=2))
    assert seen == [0, 1] and not pending(snn)


def test_tensor_and_dict_batches_give_the_same_model():
    images = make_batch("vit", 4)
    a = convert(build("vit"), calib_data=[images])
    b = convert(build("vit"), calib_data=[{"x": images}])
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images), rtol=0, atol=0)


def test_a_single_batch_is_not_a_batch_iterable():
    with pytest.raises(TypeError, match="iterable of batches"):
        convert(build("vit"), calibration=make_batch("vit", 2))


def test_percentile_ranges_are_tighter_than_max():
    data = [make_batch("bert", 8, seed=s) for s in range(2)]
    by_max = convert(build("bert"), calib_data=data, budget=None)  # ranges as observed (no budget widening)
    by_pct = convert(build("bert"), calibration=Calibration(data=data, method="percentile", percentile=90.0),
                     budget=None)
    for (path, a), b in zip(products(by_max).items(), products(by_pct).values()):
        assert all(hi <= top for hi, top in zip(b.ranges, a.ranges)), path
    assert any(hi < top for a, b in zip(products(by_max).values(), products(by_pct).values())
               for hi, top in zip(b.ranges, a.ranges))


def test_headroom_scales_the_calibrated_ranges():
    data = [make_batch("gpt2", 4)]
    plain = products(convert(build("gpt2"), calib_data=data, budget=None))
    wide = products(convert(build("gpt2"), calibration=Calibration(data=data, headroom=2.0), budget=None))
    for path, op in plain.items():
        expected = (1.0 if path.endswith("context") else 2 * op.ranges[0], 2 * op.ranges[1])
        assert wide[path].ranges == pytest.approx(expected), path


def test_states_reset_before_every_forward():
    snn = convert(build("bert", hidden=16), calib_data=[make_batch("bert", 2, seq_len=6)])
    assert reset_states in snn._forward_pre_hooks.values()
    set_mode(snn, "simulate")
    a, b = make_batch("bert", 2, seq_len=6, seed=1), make_batch("bert", 2, seq_len=6, seed=2)
    with torch.no_grad():
        first = main_output(snn(**a))
        main_output(snn(**b))
        again = main_output(snn(**a))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
